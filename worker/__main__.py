"""`python -m worker`: the command line (parent/cli.py)."""
import sys

from .parent.cli import main

if __name__ == "__main__":
    sys.exit(main())
