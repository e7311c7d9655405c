"""A job-take answer, read job by job: a job that cannot be read fails alone.

The answer is one job (an object) or a batch (an array). The whole is read with the strict
reader first (the common case, one fast parse). When that refuses it, the array is split
at its top-level commas without parsing (jsonlimits.split_array) and each element is read
on its own: the good jobs run, and an element that cannot be read is refused under the id
found in it. An element that breaks the quoting itself (a string never closed) swallows
the rest of the answer: the jobs in that rest cannot be told apart, so every id found in
it is refused (jsonlimits.loose_ids) rather than left to vanish. An element with no id
that can be found cannot be reported anywhere: it is said in the log. Who may report a refusal is the source's rule (runpod.py `_refuse`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..jsonlimits import JSONRefused, job_ids, loads, loose_ids, split_array


@dataclass
class Batch:
    jobs: list = field(default_factory=list)       # the elements that were read, in order
    refused: list = field(default_factory=list)    # (job id, why) for those that were not
    unnamed: list = field(default_factory=list)    # why, for elements with no id found


def read(body: bytes) -> Batch:
    """The jobs in a take answer's body. ValueError: it is JSON but not a job or a list."""
    try:
        data = loads(body, "the job-take answer")
    except JSONRefused as whole:
        return _by_element(body, str(whole))
    if isinstance(data, dict):
        return Batch([data])
    if isinstance(data, list):
        return Batch(data)
    raise ValueError(f"job take answered {type(data).__name__}, not a job")


def _by_element(body: bytes, why: str) -> Batch:
    split = split_array(body)
    if split is None:                        # one job (or nothing we can split)
        return _refused(body, why, Batch())
    elements, closed = split
    batch = Batch()
    for i, element in enumerate(elements):
        try:
            batch.jobs.append(loads(element, "this job"))
        except JSONRefused as exc:
            if closed or i < len(elements) - 1:
                _refused(element, str(exc), batch)
                continue
            ids = loose_ids(element)     # the rest of a broken answer: all of it refused
            batch.refused.extend((job_id, f"the job-take answer breaks off in or before "
                                          f"this job ({exc})") for job_id in ids)
            if not ids:
                batch.unnamed.append(str(exc))
    return batch


def _refused(data: bytes, why: str, batch: Batch) -> Batch:
    ids = job_ids(data)
    if ids:
        batch.refused.append((ids[0], why))
    else:
        batch.unnamed.append(why)
    return batch
