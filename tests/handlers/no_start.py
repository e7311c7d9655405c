"""Defines a handler but never calls start(): served anyway, with a note."""


def handler(job):
    return "served without start()"
