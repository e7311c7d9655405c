"""The guard's second half: what a fault while handling an event fails, and what it
leaves as it was (core.recover calls it; dispatch.py holds the guard).

The job the event named fails; the children it may have left half-handled (its own, or
every child when the fault came after the event's own part) are replaced with their jobs
failed; a job the fault left in neither the queue nor a child fails; dropped actions the
core waits on are undone; a Stop is never lost; final reports made before the fault still
go out.
"""
from __future__ import annotations

import signal

from ..jobs import JobState, Reason
from . import events as E
from .actions import Ended, ReadMemory, Settle, Signal, Spawn, WarmOff
from .jobbook import TrackedJob, some_id
from .lifecycle import ChildState, StopCause


def recover(core, event: E.Event, text: str, now: float) -> None:
    """Handling `event` raised (a bug, or input nothing anticipated). The job it named
    fails; the children it may have left half-handled (its own, or every child when
    the fault came after the event's own part) are replaced with their jobs failed;
    a job the fault left in neither the queue nor a child fails; the rest goes on.
    Final reports made before the fault still go out."""
    phase, core._phase = core._phase, None
    dropped = [a for a in core._actions if type(a) is not Ended]
    core._actions[:] = [a for a in core._actions if type(a) is Ended]
    _undo(core, dropped)
    slot_index, cid, job_id, run = E.what_it_concerns(event)
    named = _named(core, event, slot_index, cid, job_id, run)
    scope = core.slots
    if phase == "event" and not event.every_child:     # only what the event reached
        scope = [s for s in core.slots if s.index == slot_index
                 or (named is not None and s.in_flight.get(named.run) is named)]
    if type(event) is E.Exited:         # that child is gone, whatever else failed
        for slot in core.slots:
            if slot.holds(cid):
                slot.child = None
            elif (other := slot.spares.owns(cid)) is not None:
                slot.spares.exited(other, "exit status unknown", now)
    for slot in scope:
        for tracked in slot.let_go():
            core.jobs.end(tracked, JobState.FAILED, Reason.WORKER_LOST,
                          f"the worker failed while this job ran: {text}"[:1000], now,
                          "WorkerError")
        if slot.child is not None and slot.child.state is not ChildState.STOPPING:
            slot.stop_child(StopCause.INTERNAL_ERROR, "internal error", now, interrupt=True)
    for slot in core.slots:
        if cid is not None and cid in (slot.starting, slot.spares.starting):
            if slot.starting == cid:
                slot.starting = None    # its start begins again; a process made for it goes
            else:
                slot.spares.starting = None
            core._actions.append(Signal(signal.SIGKILL, cid, group=True))
    if type(event) is E.Submit and event.tracked is None:
        named = TrackedJob({"id": some_id(event.job)}, event.listener, event.submitted)
    held = {id(t) for t in core.pending}
    held.update(id(t) for s in core.slots for t in s.in_flight.values())
    for tracked in [named, *core.jobs.active.values()]:
        if tracked is not None and not tracked.finished and (
                tracked is named or id(tracked) not in held):
            core.jobs.unqueue(tracked)
            core.jobs.end(tracked, JobState.FAILED, Reason.WORKER_LOST if tracked.started
                          else Reason.REFUSED,
                          f"the worker failed on this job: {text}"[:1000], now, "WorkerError")
    if type(event) is E.Stop and core.shutdown_at is None:
        core.shutdown_at = now           # a stop is never lost, even to a fault

def _undo(core, dropped: list) -> None:
    """What the core counted on from actions it will not send: a start it waits for
    begins again, a memory reading it holds dispatch for is not waited for, a WarmOff
    it believes said is said again by the next child that refuses."""
    for action in dropped:
        kind = type(action)
        if kind is Settle or kind is Spawn:
            for slot in core.slots:
                if slot.starting == action.cid:
                    slot.starting = None
                if slot.spares.starting == action.cid:
                    slot.spares.starting = None
        elif kind is ReadMemory and core.slots[action.slot].holds(action.cid):
            core.slots[action.slot].child.checking_memory = False
        elif kind is WarmOff:
            core.warm_off = False

def _named(core, event: E.Event, slot: int | None, cid: int | None,
       job_id: str | None, run: int | None) -> TrackedJob | None:
    """The job an event concerns, as the core holds it."""
    if type(event) is E.Submit:
        return event.tracked
    if job_id is not None:
        return core.jobs.active.get(job_id)
    if run is not None and slot is not None and core.slots[slot].holds(cid):
        return core.slots[slot].in_flight.get(run)
    return None
