import os
import sys

print("loading the model...", file=sys.stderr, flush=True)
os._exit(3)
