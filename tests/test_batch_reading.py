"""A take answer is read job by job (sources/runpod_batch.py), and only a job's owner
reports it (RunPodSource._refuse): a job that cannot be read fails alone under its id, the
good jobs beside it run, and a copy of a job the worker holds is never reported for it.
Through a real worker and the stand-in queue; Hypothesis throws mixed batches."""
import json

from hypothesis import HealthCheck, given, note, settings, strategies as st

from tests.fake_runpod import Batch
from worker.jsonlimits import MAX_DEPTH, split_array
from worker.sources import runpod_batch


def deep(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


# Elements that cannot be read, each with an id that can still be found.
BAD = {
    "nan": lambda i: b'{"id": "%s", "input": {"x": NaN}}' % i.encode(),
    "deep": lambda i: b'{"id": "%s", "input": %s}' % (i.encode(), deep(MAX_DEPTH + 5)),
    "long-number": lambda i: b'{"id": "%s", "input": {"x": 1%s}}' % (i.encode(), b"0" * 5000),
    "surrogate": lambda i: b'{"id": "%s", "input": {"x": "\\ud800"}}' % i.encode(),
    "bad-escape": lambda i: b'{"id": "%s", "input": {"x": "\\u12"}}' % i.encode(),
    "not-utf8": lambda i: b'{"id": "%s", "input": {"x": "\xff"}}' % i.encode(),
}


def test_a_batch_is_split_without_reading_its_jobs_and_each_is_read_alone():
    body = Batch([{"id": "a", "input": {"s": "],{\"\\"}}, BAD["nan"]("b"),
                  {"id": "c", "input": {}}, BAD["deep"]("d"), b'{"input": NaN}']).encode()
    assert len(split_array(body)[0]) == 5 and split_array(body)[1]
    batch = runpod_batch.read(body)
    assert [j["id"] for j in batch.jobs] == ["a", "c"]
    assert [i for i, _ in batch.refused] == ["b", "d"]
    assert "NaN" in batch.refused[0][1] and "levels deep" in batch.refused[1][1]
    assert len(batch.unnamed) == 1
    assert runpod_batch.read(b'{"id": "x", "input": {}}').jobs == [{"id": "x", "input": {}}]
    assert runpod_batch.read(BAD["nan"]("y")).refused[0][0] == "y"


def test_a_job_that_breaks_the_quoting_takes_the_rest_down_reported_not_lost():
    """A string never closed: what follows cannot be told apart from it, so every id in the
    rest is refused (and reported); the jobs before it run."""
    body = Batch([{"id": "a", "input": {}}, b'{"id": "b", "input": {"x": "open}}',
                  {"id": "c", "input": {}}, {"id": "d", "input": {}}]).encode()
    elements, closed = split_array(body)
    assert not closed
    batch = runpod_batch.read(body)
    assert [j["id"] for j in batch.jobs] == ["a"]
    assert [i for i, _ in batch.refused] == ["b", "c", "d"]
    assert "breaks off" in batch.refused[1][1]


def test_the_good_jobs_of_a_batch_run_and_each_bad_one_fails_alone(fake, start):
    w = start("edges.py", args=("threads",))
    fake.add_jobs([Batch([{"id": "good-1", "input": {"do": "echo", "echo": 1}},
                          *[BAD[k](f"bad-{k}") for k in BAD],
                          {"id": "good-3", "input": {"do": "echo", "echo": 3}}])])
    ids = ["good-1", "good-3", *[f"bad-{k}" for k in BAD]]
    finals = fake.wait_final(ids, 60)
    assert finals["good-1"]["output"]["echo"] == 1 and finals["good-3"]["output"]["echo"] == 3
    for k in BAD:
        info = json.loads(finals[f"bad-{k}"]["error"])
        assert info["error_type"] == "JobRefused", (k, info)
    assert all(len(fake.finals[j]) == 1 for j in ids)
    assert w.stop() == 0


def test_an_unreadable_copy_of_a_job_reported_already_is_not_reported_again(fake, start):
    """A fast run ends before the queue's next answer brings a copy that cannot be read:
    the job has had its one final report (a second would be a FAILED after COMPLETED)."""
    w = start("edges.py", args=("threads",))
    fake.add_jobs([{"id": "fast", "input": {"do": "echo", "echo": 1}}])
    assert fake.wait_final(["fast"], 60)["fast"]["output"]["echo"] == 1
    fake.add_jobs([Batch([BAD["nan"]("fast"), {"id": "next", "input": {"do": "echo"}}])])
    fake.wait_final(["next"], 60)
    assert len(fake.finals["fast"]) == 1, fake.finals["fast"]
    assert w.stop() == 0


def test_an_unreadable_copy_of_a_running_job_is_not_reported_for_it(fake, start):
    w = start("edges.py", args=("threads",))
    fake.add_jobs([{"id": "held", "input": {"do": "sleep", "seconds": 2}}])
    assert fake.wait_for(lambda f: any("held" in (p.get("job_id") or [""])[0]
                                       for p in f.pings), 60)
    fake.add_jobs([Batch([BAD["nan"]("held"), {"id": "beside", "input": {"do": "echo"}}])])
    fake.wait_final(["beside"], 60)
    pings = len(fake.pings)
    assert fake.wait_for(lambda f: len(f.pings) > pings + 1, 30)
    assert not fake.finals["held"]                     # still running: nothing posted
    assert "held" in (fake.pings[-1].get("job_id") or [""])[0]     # still in the heartbeat
    assert fake.wait_final(["held"], 60)["held"]["output"]["slept"] == 2
    assert len(fake.finals["held"]) == 1 and len(fake.finals["beside"]) == 1
    assert w.stop() == 0


ELEMENT = st.one_of(
    st.tuples(st.just("good"), st.integers(0, 5)),
    st.tuples(st.just("bad"), st.sampled_from(sorted(BAD)), st.integers(0, 5)),
    st.tuples(st.just("held"), st.booleans()),          # a copy of the running job
    st.tuples(st.just("unnamed")),
)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(ELEMENT, min_size=1, max_size=6), min_size=1, max_size=3))
def test_mixed_batches_every_id_ends_once_and_the_good_jobs_run(fake, start, batches):
    if not hasattr(fake, "hyp_worker"):
        fake.hyp_worker = start("edges.py", args=("threads",), RUNPOD_PING_INTERVAL="300")
        fake.add_jobs([{"id": "held", "input": {"do": "sleep", "seconds": 600}}])
        assert fake.wait_for(lambda f: any("held" in (p.get("job_id") or [""])[0]
                                           for p in f.pings), 60)
        fake.example = 0
    fake.example += 1
    n = fake.example

    def job_id(el):
        return f"e{n}-{el[-1]}" if el[0] in ("good", "bad") else None

    first: dict = {}                 # job id -> the first answer that holds it
    for b in batches:
        elements = []
        for el in b:
            if el[0] == "good":
                elements.append({"id": job_id(el), "input": {"do": "echo", "echo": job_id(el)}})
            elif el[0] == "bad":
                elements.append(BAD[el[1]](job_id(el)))
            elif el[0] == "held":
                elements.append(BAD["nan"]("held") if el[1] else
                                {"id": "held", "input": {"do": "echo"}})
            else:
                elements.append(b'{"input": NaN}')
            if job_id(el) is not None:
                first.setdefault(job_id(el), b)
        fake.add_jobs([Batch(elements)])
    note(f"example {n}: {batches}")
    finals = fake.wait_final(list(first), 30)
    for jid, answer in first.items():
        # In the first answer that holds it, a readable copy runs (an unreadable copy
        # beside it is not reported); with none, the job is refused under its id.
        readable = any(el[0] == "good" and job_id(el) == jid for el in answer)
        assert ("error" not in finals[jid]) == readable, (jid, finals[jid])
        if readable:
            assert finals[jid]["output"]["echo"] == jid
    assert not fake.finals["held"], "a copy of the running job was reported for it"
    for jid in first:               # once per answer that holds it at most
        answers = sum(1 for b in batches if any(job_id(el) == jid for el in b))
        assert 1 <= len(fake.finals[jid]) <= answers, (jid, fake.finals[jid])
