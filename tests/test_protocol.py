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
    assert P.decode(b"".join(P.Run(42, {}, raw).encode())[4:]) == P.Run(42, {"id": "j", "input": [1]})


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


# --- the socket path: reusable buffers, large frames, parts sent with writev -------------

def _frames_through_a_socket(frames: list, chunk_reads: bool = False) -> list:
    """Send encoded frames (bytes or tuples of parts) through a real non-blocking
    socketpair with the parent's Channel, read them with a FrameReader on the other end,
    and return the decoded messages."""
    import selectors
    import socket

    from worker.parent.channel import Channel
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    channel = Channel(a.fileno())
    reader = P.FrameReader()
    for frame in frames:
        channel.send(frame)
    got = []
    sel = selectors.DefaultSelector()
    sel.register(b.fileno(), selectors.EVENT_READ)
    while len(got) < len(frames):
        if channel.waiting:
            channel.flush()
        if not sel.select(5):
            if not channel.waiting:
                break
            continue
        try:
            out = reader.read_from(b.fileno())
        except BlockingIOError:
            continue
        assert out is not None
        got.extend(P.decode(f) for f in out)      # a frame is valid until the next read
    a.close()
    b.close()
    return got


def test_large_and_small_frames_cross_a_socket_intact_in_order():
    big = "x" * (3 * P.FrameReader.CHUNK + 17)        # larger than one read, and the socket
    msgs = [P.Run(1, {"id": "a", "input": big}), P.Cancel(1),
            P.Run(2, {"id": "b", "input": "é" * (P.FrameReader.CHUNK // 2)}),
            P.Run(3, {"id": "c", "input": big + "y"}), P.Stop("end")]
    assert _frames_through_a_socket([m.encode() for m in msgs]) == msgs


def test_a_body_forwarded_in_parts_arrives_as_one_job():
    body = b'{"input": {"data": "' + b"z" * (2 * P.FrameReader.CHUNK) + b'"}}'
    parts = (b'{"id":"j9",', memoryview(body)[1:])
    got = _frames_through_a_socket([P.Run(9, {}, parts).encode(), P.Run(10, {}, b'{"id":"k"}')
                                    .encode()])
    assert got == [P.Run(9, {"id": "j9", "input": {"data": "z" * (2 * P.FrameReader.CHUNK)}}),
                   P.Run(10, {"id": "k"})]


def test_frames_split_anywhere_across_reads_of_a_socket():
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=40, deadline=None)
    @given(st.lists(st.integers(0, 3 * P.FrameReader.CHUNK), min_size=1, max_size=5))
    def check(sizes):
        msgs = [P.Progress(i, "p" * n) for i, n in enumerate(sizes)]
        assert _frames_through_a_socket([m.encode() for m in msgs]) == msgs
    check()
