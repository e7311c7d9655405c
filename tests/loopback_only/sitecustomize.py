# Imported by every interpreter that has this folder on PYTHONPATH (tests/conftest.py and
# bench/loopback.py put it there): see loopback_guard.py. The virtualenv has no
# sitecustomize of its own for this one to shadow.
import loopback_guard  # noqa: F401
