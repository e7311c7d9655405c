"""Which job a crash is blamed on, and how the jobs under suspicion run again.

Pure rules, used by the core. A job alone in a child that crashes is its cause: it counts a
crash, and fails for good at WORKER_JOB_MAX_CRASHES. With several jobs in the child, any of
them may be the cause: each is a suspect and runs again alone on a fresh child, with no
crash counted, so innocent jobs are never failed for a neighbour's crash. A suspect that
finishes is cleared.
"""
from __future__ import annotations

from typing import Iterable

from .jobbook import TrackedJob


def after_crash(in_flight: list[TrackedJob], max_crashes: int,
                shutting_down: bool) -> tuple[list[TrackedJob], list[TrackedJob]]:
    """(to run again, in queue order; to fail) for the jobs of a child that crashed."""
    again: list[TrackedJob] = []
    failed: list[TrackedJob] = []
    alone = len(in_flight) == 1
    for tracked in sorted(in_flight, key=lambda t: t.run):
        if shutting_down:
            failed.append(tracked)
            continue
        if alone:
            tracked.crashes += 1
            if tracked.crashes >= max_crashes:
                failed.append(tracked)
                continue
        tracked.suspect = True
        again.append(tracked)
    return again, failed


def next_runnable(pending: Iterable[TrackedJob], in_flight: Iterable[TrackedJob],
                  held_ids) -> int | None:
    """The index in `pending` of the job that may start now, or None. A job whose id an
    abandoned run still holds waits for it; a suspect runs alone (nothing starts beside
    it, and it waits for the child to empty)."""
    running = list(in_flight)
    if any(t.suspect for t in running):
        return None
    for i, tracked in enumerate(pending):
        if tracked.id in held_ids:
            continue
        if tracked.suspect and running:
            return None
        return i
    return None
