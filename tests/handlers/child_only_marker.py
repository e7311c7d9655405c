"""A module only tests/handlers/imports_marker.py imports (in the child, never the
parent): its presence in a process's sys.modules says the handler module ran there."""
