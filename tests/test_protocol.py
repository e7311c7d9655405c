"""The parent-child framing: messages survive any split of the byte stream."""
import pytest

from worker import protocol as P


def test_roundtrip_every_split():
    msgs = [P.Run({"id": "j1", "input": {"x": "é" * 10}}), P.Cancel("j1"), P.Stop("why"),
            P.Done("j1", "COMPLETED", "completed", {"output": [1, None]}, False, 2),
            P.Heartbeat(123, None), P.Progress("j1", {"p": 1}), P.Chunk("j1", "c")]
    data = b"".join(m.encode() for m in msgs)
    for step in (1, 2, 3, 7, 64, len(data)):
        reader = P.FrameReader()
        got = []
        for i in range(0, len(data), step):
            got.extend(P.decode(f) for f in reader.feed(data[i:i + step]))
        assert got == msgs


def test_non_json_values_fail_to_encode():
    with pytest.raises(TypeError):
        P.Done("j", "COMPLETED", "completed", {"output": {1, 2}}, False, 1).encode()


def test_garbage_is_a_protocol_error():
    with pytest.raises(P.ProtocolError):
        P.decode(b'["no_such_kind", 1]')
    with pytest.raises(P.ProtocolError):
        P.decode(b"{not json")
