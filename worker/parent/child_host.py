"""One child as the loop sees it: its process handle, control channel, output pump and
selector keys, in one object.

A host turns what happens to its child into events (events.Message, events.Exited) and
carries out the actions addressed to it (send, signal); it never calls into the core and
holds no decision. The loop makes one when the core's Spawn starts a child and drops it
when the child's exit has been reported.
"""
from __future__ import annotations

import selectors
from typing import Callable

from . import events as E
from .channel import Channel
from .launcher import ChildProcess
from .output import OutputPump, Sink


class ChildHost:
    def __init__(self, slot: int, cid: int, proc: ChildProcess,
                 sel: selectors.BaseSelector, log_ids: Callable[[], tuple], sink: Sink):
        self.slot = slot
        self.cid = cid
        self.proc = proc
        self.channel = Channel(proc.fd)
        self.pump = OutputPump({proc.stdout_fd: "stdout", proc.stderr_fd: "stderr"},
                               log_ids, sink)
        self._sel = sel
        self._watching_writes = False
        self.pump.start()
        sel.register(proc.fd, selectors.EVENT_READ, (self, "ctrl"))
        try:
            sel.register(proc.sentinel, selectors.EVENT_READ, (self, "exit"))
        except BaseException:
            sel.unregister(proc.fd)           # the caller releases the process
            raise

    def send(self, data) -> None:
        self.channel.send(data)
        self._watch_writes()

    def flush(self) -> None:
        """The channel's socket can take more of what waits in its outbox."""
        self.channel.flush()
        self._watch_writes()

    def signal(self, sig: int, group: bool) -> None:
        if group:
            self.proc.signal_group(sig)
        else:
            self.proc.signal(sig)

    def read(self) -> list:
        """The messages its channel holds now, as events."""
        channel = self.channel
        events = [E.Message(self.slot, self.cid, msg) for msg in channel.read()]
        if channel.eof and self._sel.get_map().get(channel.fd) is not None:
            self._sel.unregister(channel.fd)    # else a closed end reads ready for ever
        return events

    def exited(self) -> E.Exited:
        """Its exit, with the messages it wrote before it (results still count) and its
        last lines of output. The host is done after this."""
        messages = tuple(event.msg for event in self.read())
        if self._sel.get_map().get(self.proc.fd) is not None:
            self._sel.unregister(self.proc.fd)
        self._sel.unregister(self.proc.sentinel)
        code = self.proc.exitcode()
        self.proc.close()                 # SIGKILLs leftovers in its group
        self.pump.finish()
        return E.Exited(self.slot, self.cid, code, list(self.pump.tail), messages)

    def close(self) -> None:
        """The loop is ending without seeing its exit: kill its group, release it."""
        self.proc.close()

    def _watch_writes(self) -> None:
        """Watch for writable only while the channel holds unsent bytes."""
        channel = self.channel
        if channel.eof:
            return                 # no longer in the selector; the exit comes next
        if channel.waiting != self._watching_writes:
            self._watching_writes = channel.waiting
            mask = selectors.EVENT_READ | (selectors.EVENT_WRITE if channel.waiting else 0)
            self._sel.modify(channel.fd, mask, (self, "ctrl"))
