"""A module that binds a fixed port at import (a metrics or health server of its own):
a second copy of it cannot set up beside the first. The port is in ./port.txt."""
import os
import socket

import worker

with open("port.txt") as f:
    PORT = int(f.read())
SERVER = socket.socket()
SERVER.bind(("127.0.0.1", PORT))          # a spare fails here: the active child holds it
SERVER.listen()


def handler(job):
    return {"pid": os.getpid()}


worker.start({"handler": handler})
