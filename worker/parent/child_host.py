"""One child as the loop sees it: its process handle, control channel, output pump and
selector keys, in one object.

A host turns what happens to its child into events (events.Message, events.Exited) and
carries out the actions addressed to it (send, signal); it never calls into the core and
holds no decision. The loop makes one when a start the core asked for succeeds and drops
it when the child's exit has been reported.

Its exit is learned from the child: the selector watches its pidfd (or, without one, the
host asks /proc every POLL_S) and its launcher's report. A child that is gone while the
report has not come (a stopped or dead launcher) is reported with its code unknown after
REPORT_WAIT_S. A report fd closed while the child lives means the launcher died: the host
says so (`launcher_lost`) and keeps watching the child.
"""
from __future__ import annotations

import collections
import logging
import selectors
from typing import Callable

from . import events as E, reaper
from .channel import Channel
from .launcher import ALIVE, EXITED, ChildProcess, readable
from .output import OutputPump, Sink

POLL_S = 0.5            # no pidfd: how often /proc is read
KNOWN_JOBS = 64         # job ids a child's output lines may name (the ones it was sent)
REPORT_WAIT_S = 2.0     # gone: how long its launcher may take to report its code
PENDING_POLL_S = 0.05   # meanwhile, how often the kernel is asked (an adopted child)

log = logging.getLogger("worker")


class ChildHost:
    def __init__(self, slot: int, cid: int, proc: ChildProcess,
                 sel: selectors.BaseSelector, log_ids: Callable[[], tuple], sink: Sink):
        self.slot = slot
        self.cid = cid
        self.proc = proc
        self.channel = Channel(proc.fd)
        # Job ids sent to this child (the last KNOWN_JOBS): a tagged output line is the
        # job's only if its child was sent it; recorded before the Run is written.
        self.sent_jobs: collections.OrderedDict = collections.OrderedDict()
        self.pump = OutputPump({proc.stdout_fd: "stdout", proc.stderr_fd: "stderr"},
                               log_ids, sink, self.sent_jobs.__contains__)
        self._sel = sel
        self._watching_writes = False
        self._watched: set = set()
        self._gone_since: float | None = None
        self.launcher_lost = False        # set when its launcher died; the loop clears it
        # When to ask whether it is gone without a wake-up (None: its fds will say).
        self.check_at: float | None = None if proc.exit_fd is not None else 0.0
        self.pump.start()
        try:
            self._watch(proc.fd, "ctrl")
            for fd in (proc.exit_fd, proc.report_fd):
                if fd is not None:
                    self._watch(fd, "exit")
        except BaseException:
            self._unwatch_all()               # the caller releases the process
            raise

    def _watch(self, fd: int, what: str) -> None:
        self._sel.register(fd, selectors.EVENT_READ, (self, what))
        self._watched.add(fd)

    def _unwatch(self, fd: int | None) -> None:
        if fd in self._watched:
            self._watched.discard(fd)
            self._sel.unregister(fd)

    def _unwatch_all(self) -> None:
        for fd in list(self._watched):
            self._unwatch(fd)

    def look_later(self, now: float) -> None:
        """It could not tell now: poll (its exit fds may be readable for ever)."""
        self._unwatch(self.proc.exit_fd)
        self.check_at = now + POLL_S

    def gone(self, now: float) -> bool:
        """Has its child exited, with its code known or given up on? Asked when one of its
        exit fds is readable or its check time has come."""
        proc = self.proc
        state, _ = proc.poll_exit()
        if state is EXITED:
            return True
        if state is ALIVE:
            report = proc.report_fd
            if report in self._watched and readable(report):
                self.launcher_lost = proc.report_closed()
                self._unwatch(report)         # EOF for ever: nothing more comes from it
            self.check_at = None if proc.exit_fd in self._watched else now + POLL_S
            return False
        if self._gone_since is None:          # gone, its code not reported yet
            self._gone_since = now
            self._unwatch(proc.exit_fd)       # readable for ever now
        if now - self._gone_since >= REPORT_WAIT_S:
            proc.give_up_code()
            return True
        if proc.report_fd in self._watched and readable(proc.report_fd):
            if proc.poll_exit()[0] is EXITED:     # the report came just now
                return True
            self._unwatch(proc.report_fd)     # EOF: the launcher died before reporting
        self.check_at = now + PENDING_POLL_S      # a report still to come wakes it sooner
        return False

    def send(self, data, job_id: str | None = None) -> None:
        if job_id is not None:
            self.sent_jobs[job_id] = None
            self.sent_jobs.move_to_end(job_id)
            while len(self.sent_jobs) > KNOWN_JOBS:
                self.sent_jobs.popitem(last=False)
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
        if channel.eof:
            self._unwatch(channel.fd)           # else a closed end reads ready for ever
        return events

    def exited(self) -> E.Exited:
        """Its exit, with the messages it wrote before it (results still count) and its
        last lines of output. The host is done after this."""
        messages = tuple(event.msg for event in self.read())
        self._unwatch_all()
        code = self.proc.poll_exit()[1]
        self.proc.close()                 # SIGKILLs leftovers in its group
        reaper.wake()                     # and the ones outside it, adopted now, end
        self.pump.finish()
        return E.Exited(self.slot, self.cid, code, list(self.pump.tail), messages)

    def close(self) -> None:
        """The loop is ending without seeing its exit: kill its group, release it."""
        self._unwatch_all()
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


def exited_hosts(woken: list, hosts, now: float) -> tuple:
    """(the hosts whose child has exited, in order; whether a launcher died), of those
    whose exit fds woke the loop and those whose time to look has come. A host that cannot
    tell now looks again later (a child stuck that way is lost after SIGKILL's wait)."""
    candidates = dict.fromkeys(woken)
    candidates.update(dict.fromkeys(h for h in hosts
                                    if h.check_at is not None and h.check_at <= now))
    gone, launcher_lost = {}, False
    for host in candidates:
        try:
            if host.gone(now):
                gone[host] = True
        except Exception:     # noqa: BLE001 - /proc or the kernel refused for a moment
            log.exception("could not learn whether child %d exited", host.proc.pid)
            host.look_later(now)
        if host.launcher_lost:
            host.launcher_lost, launcher_lost = False, True
    return gone, launcher_lost
