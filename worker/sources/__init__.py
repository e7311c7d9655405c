"""Where jobs come from. A source turns its world into jobs for the Supervisor and takes
back progress, stream chunks and the one final result of each."""
