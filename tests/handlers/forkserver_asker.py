"""Asks the worker's forkserver for a process of its own, as a hostile handler would.

It finds the forkserver's socket (the address multiprocess left in its memory, else any
`listener-` socket in /proc/net/unix), connects, and sends what multiprocess's client
sends: the fds of two pipes, then a pickle whose loading would copy the worker's
/proc/<pid>/environ to a file. Mode "plain" sends at once; mode "handshake" first answers
a CPython 3.14-style challenge, with the key it finds in its own memory (multiprocess's
authkey), if the server sends one. Reports, per try, whether a process was forked (a pid
came back) and whether the file appeared."""
import os

import worker
from forkserver_ask import addresses, ask


def handler(job):
    out = []
    for mode in ("plain", "handshake"):
        for i, address in enumerate(addresses()):
            marker = os.path.join(job["input"]["dir"], f"{mode}-{i}")
            out.append(ask(address, mode, marker))
    return {"tries": out, "addresses": len(addresses())}


worker.start({"handler": handler})
