"""The parent-child framing: messages survive any split of the byte stream."""
import pytest

from worker import protocol as P
from worker.jobs import JobState, Reason


def test_roundtrip_every_split():
    msgs = [P.Run(7, {"id": "j1", "input": {"x": "é" * 10}}), P.Cancel(7), P.Stop("why"),
            P.Done(7, JobState.COMPLETED, Reason.COMPLETED, {"output": [1, None]}, False, 2),
            P.Heartbeat(123, None), P.Progress(7, {"p": 1}), P.Chunk(7, "c")]
    data = b"".join(m.encode() for m in msgs)
    for step in (1, 2, 3, 7, 64, len(data)):
        reader = P.FrameReader()
        got = []
        for i in range(0, len(data), step):
            got.extend(P.decode(f) for f in reader.feed(data[i:i + step]))
        assert got == msgs


def test_non_json_values_fail_to_encode():
    with pytest.raises(TypeError):
        P.Done(1, JobState.COMPLETED, Reason.COMPLETED, {"output": {1, 2}}, False, 1).encode()


def test_a_raw_job_is_forwarded_with_its_run_token():
    raw = b'{"id":"j","input":[1]}'
    assert P.decode(P.Run(42, {}, raw).encode()[4:]) == P.Run(42, {"id": "j", "input": [1]})


@pytest.mark.parametrize("payload, tag, run", [
    (b'["no_such_kind", 1]', "no_such_kind", 1),
    (b"{not json", None, None),
    (b'["done",12,' + b"[" * 5000 + b"]" * 5000 + b"]", "done", 12),   # too deep to decode
    (b'["chunk", 3, "\xff\xfe"]', "chunk", 3),
    (b'["run",5,{"id":"x"', "run", 5),
    (b'["done","x",1]', "done", None),
    (b"", None, None),
])
def test_any_undecodable_frame_is_garbled_with_the_run_it_names(payload, tag, run):
    msg = P.decode(payload)
    assert isinstance(msg, P.Garbled) and (msg.tag, msg.run) == (tag, run) and msg.error
