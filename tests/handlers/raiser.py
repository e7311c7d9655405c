"""Raises any exception type from any user callback on request, in the mode argv names:
inline (sync), gen (generator), threads (sync + concurrency_modifier), tasks (async +
concurrency_modifier), agen (async generator + concurrency_modifier). Also forks on
request and returns in both processes."""
import asyncio
import os
import sys

import worker

MODE = sys.argv[1] if len(sys.argv) > 1 else "inline"


class Custom(BaseException):
    """A class of the user's that is not an Exception."""


TYPES = {
    "SystemExit": lambda: SystemExit(3), "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit, "CancelledError": asyncio.CancelledError,
    "Custom": Custom, "ValueError": lambda: ValueError("plain"),
    "StopIteration": StopIteration, "StopAsyncIteration": StopAsyncIteration,
    "RecursionError": RecursionError, "MemoryError": MemoryError,
}
PENDING: list = []       # an exception for the concurrency modifier's next call


def boom(name):
    raise TYPES[name]()


def modifier(current):
    if PENDING:
        boom(PENDING.pop())
    return 2


def step(job):
    inp = job["input"]
    if inp.get("modifier"):
        PENDING.append(inp["modifier"])
    if inp.get("raise"):
        boom(inp["raise"])
    if inp.get("fork"):
        forked = os.fork()
        if forked == 0:
            return {"in": "fork", "pid": os.getpid()}
        return {"in": "child", "pid": os.getpid(), "fork": forked}
    return {"pid": os.getpid()}


def handler(job):
    return step(job)


def gen_handler(job):
    yield {"first": True}
    yield step(job)


async def async_handler(job):
    await asyncio.sleep(0)
    return step(job)


async def agen_handler(job):
    yield {"first": True}
    await asyncio.sleep(0)
    yield step(job)


HANDLERS = {"inline": handler, "gen": gen_handler, "threads": handler,
            "tasks": async_handler, "agen": agen_handler}
config = {"handler": HANDLERS[MODE]}
if MODE in ("threads", "tasks", "agen"):
    config["concurrency_modifier"] = modifier
worker.start(config)
