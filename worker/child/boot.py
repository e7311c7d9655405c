"""The function the forkserver runs in each new child: the parent's only reference into the
child's code. It imports nothing, so the parent does not load the child's machinery
(asyncio, the runtime, the handler kinds) just to name it; the forkserver has imported
worker.child.entry already, so a child pays nothing for the indirection."""


def child_main(spec) -> None:
    from .entry import child_main as main
    main(spec)
