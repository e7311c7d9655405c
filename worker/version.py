"""Our version, and the runpod-python version whose protocol we speak."""
__version__ = "0.1.0"

# The runpod-python release whose worker protocol we speak: the platform reads
# `runpod_version` as the SDK's version, so it gets this; ours goes in the User-Agent.
RUNPOD_PROTOCOL_VERSION = "1.12.0"
