"""The guard's second half: what a fault while handling an event fails, and what it
leaves as it was (core.recover calls it after dropping the actions it had not sent;
dispatch.py holds the guard).

The job the event named fails; the children it may have left half-handled (its own, or
every child when the fault came after the event's own part) are replaced with their jobs
failed; a child whose exit was being handled is let go of; a start the event was about
begins again; a job the fault left in neither the queue nor a child fails; a Stop is
never lost. Everything here goes through the public methods of the core, its slots and
their children.
"""
from __future__ import annotations

import signal

from ..jobs import JobState, Reason
from . import events as E
from .actions import Signal
from .causes import StopCause
from .jobbook import TrackedJob, some_id


def recover(core, event: E.Event, text: str, now: float, in_event: bool) -> None:
    """`in_event`: the fault came in the event's own part (not the step after it)."""
    slot_index, cid, job_id, run = E.what_it_concerns(event)
    named = _named(core, event, slot_index, cid, job_id, run)
    ran = f"the worker failed while this job ran: {text}"[:1000]
    if type(event) is E.Exited:         # that child is gone, whatever else failed
        for slot in core.slots:
            child = slot.owns(cid)
            if child is not None:
                for tracked in child.let_go():
                    core.jobs.end(tracked, JobState.FAILED, Reason.WORKER_LOST, ran, now,
                                  "WorkerError")
                slot.drop(cid, now, exited=True)
    scope = core.slots
    if in_event and not event.every_child:      # only what the event reached
        scope = [s for s in core.slots if s.index == slot_index
                 or (named is not None and s.in_flight.get(named.run) is named)]
    for slot in scope:
        for tracked in slot.let_go():
            core.jobs.end(tracked, JobState.FAILED, Reason.WORKER_LOST, ran, now,
                          "WorkerError")
        if slot.child is not None and not slot.child.stopping:
            core.send(slot.stop_child(StopCause.INTERNAL_ERROR, "internal error", now,
                                      interrupt=True))
    for slot in core.slots:             # its start begins again; a process made for it goes
        child = slot.owns(cid) if cid is not None else None
        if child is not None and child.unborn:
            slot.drop(cid, now)
            core.send([Signal(signal.SIGKILL, cid, group=True)])
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
    if type(event) is E.Stop:
        core.stop_now(now)


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
