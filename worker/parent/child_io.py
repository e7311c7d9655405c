"""The loop's side of its children: starting one in a slot, its channel, its output, its
exit. A mixin of Supervisor (supervisor.py), which owns the selector and feeds the core;
every child is registered there under its slot, so an event names the child it is about.
"""
from __future__ import annotations

import logging
import selectors
import threading

from . import actions as A
from . import device_settle
from .channel import Channel
from .output import OutputPump
from .spawner import ChildProcess

log = logging.getLogger("worker")


class ChildIO:
    """One live child as the loop sees it."""

    def __init__(self, proc: ChildProcess, pump: OutputPump):
        self.proc = proc
        self.channel = Channel(proc.fd)
        self.pump = pump
        self.watching_writes = False


class ChildWiring:
    def _spawn(self, action: A.Spawn) -> None:
        """Start a child once the one before it in the slot has given its device memory
        back (device_settle.py); the wait, when there is one, runs off the loop. A slot's
        baseline is its own GPUs' memory in use."""
        index = action.slot
        previous, self._previous_baseline[index] = self._previous_baseline[index], None
        used = self._device_used(index)
        # A GPU shared with another child moves with that child's work: no baseline to
        # wait for (the VRAM limit counts such a child's own reservation only).
        if device_settle.settled(used, previous) or self.core.slots[index].shared:
            self._start_child(action, used)
            return

        def wait():
            used = device_settle.wait(lambda: self._device_used(index), previous,
                                      self._probe_stop,
                                      lambda: self.core.shutdown_at is not None)
            self._command(self._settled, action, used)
        threading.Thread(target=wait, daemon=True, name="gpu-worker-settle").start()

    def _settled(self, action: A.Spawn, used: float, now: float) -> list:
        if self.core.shutdown_at is not None:
            return self.core.spawn_skipped(action.slot, now)
        self._start_child(action, used)
        return []

    def _start_child(self, action: A.Spawn, baseline: float) -> None:
        index = action.slot
        try:
            proc = self.spawner.spawn(self.target, self.core.settings, checks=action.checks,
                                      env=action.env)
        except Exception as exc:
            log.exception("could not start the worker process")
            self._guarded(self.core.spawn_failed, index, f"{type(exc).__name__}: {exc}")
            return
        pump = OutputPump({proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr"},
                          lambda: self.status.children[index].log_ids, self.output_sink)
        self._io[index] = ChildIO(proc, pump)
        pump.start()
        self._sel.register(proc.fd, selectors.EVENT_READ, ("ctrl", index))
        self._sel.register(proc.sentinel, selectors.EVENT_READ, ("exit", index))
        log.debug("child %d starting (%s)", proc.pid, self.spawner.method)
        self._guarded(self.core.spawned, index, proc.pid, baseline)

    def _send(self, action: A.Send) -> None:
        io = self._io[action.slot]
        if io is not None:
            io.channel.send(action.data)
            self._watch_writes(action.slot)

    def _signal(self, action: A.Signal) -> None:
        io = self._io[action.slot]
        if io is None:
            return
        if action.group:
            io.proc.signal_group(action.sig)
        else:
            io.proc.signal(action.sig)

    def _read_memory(self, action: A.ReadMemory) -> None:
        try:
            reading = _only(self.probe.read(action.pid), self.core.slots[action.slot].devices)
        except Exception as exc:
            log.warning("memory probe failed: %s", exc)
            reading = None
        self._guarded(self.core.memory, action.slot, reading)

    def _watch_writes(self, index: int) -> None:
        """Watch for writable only while the channel holds unsent bytes."""
        io = self._io[index]
        channel = io.channel
        if channel.eof:
            return                 # no longer in the selector; the exit comes next
        if channel.waiting != io.watching_writes:
            io.watching_writes = channel.waiting
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if channel.waiting else 0)
            self._sel.modify(channel.fd, events, ("ctrl", index))

    def _read(self, index: int) -> None:
        channel = self._io[index].channel
        for msg in channel.read():
            self._guarded(self.core.message, index, msg)
        if channel.eof and self._sel.get_map().get(channel.fd) is not None:
            self._sel.unregister(channel.fd)    # else a closed end reads ready for ever

    def _child_exited(self, index: int) -> None:
        io = self._io[index]
        proc = io.proc
        child = self.core.slots[index].child
        if child is not None:
            self._previous_baseline[index] = child.baseline_mb
        self._read(index)                 # results written before the exit still count
        if self._sel.get_map().get(proc.fd) is not None:
            self._sel.unregister(proc.fd)
        self._sel.unregister(proc.sentinel)
        code = proc.exitcode()
        proc.close()                      # SIGKILLs leftovers in its group
        io.pump.finish()
        tail = list(io.pump.tail)
        self._io[index] = None
        self._guarded(self.core.exited, index, code, tail)

    def _device_used(self, index: int) -> float:
        try:
            return _only(self.probe.read(None), self.core.slots[index].devices).device_used_mb
        except Exception:
            return 0.0


def _only(reading, devices: tuple):
    """A probe's reading of one child's GPUs (any probe: a one-child worker asks for all)."""
    return reading.only(devices) if devices else reading
