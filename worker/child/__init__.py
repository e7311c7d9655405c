"""The child side of the process boundary: everything that runs in the worker process
that imports the handler module. Nothing here imports the parent's modules."""
