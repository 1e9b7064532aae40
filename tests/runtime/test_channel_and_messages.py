"""Inter-process channels (socket pairs) and the message structs that cross them."""

from __future__ import annotations

import select

import numpy as np
import pytest

from orloj_rt.protocol import messages as msgs
from orloj_rt.runtime.channel import Channel, ChannelClosed


@pytest.fixture
def pair():
    a, b = Channel.pair()
    ca, cb = Channel(a, "a"), Channel(b, "b")
    yield ca, cb
    ca.close()
    cb.close()


def drain(sender: Channel, receiver: Channel, want: int, rounds: int = 10000) -> list:
    got = []
    for _ in range(rounds):
        if sender.wants_write:
            sender.flush()
        select.select([receiver.fileno()], [], [], 0.01)
        got += receiver.recv()
        if len(got) >= want:
            return got
    raise AssertionError(f"received {len(got)} of {want} messages")


def test_multi_part_messages_arrive_whole_and_in_order(pair):
    a, b = pair
    arr = np.arange(1000, dtype=np.float32)
    a.send([b"first", memoryview(arr).cast("B")])
    a.send([b"", b"x" * 3])
    got = drain(a, b, 2)
    assert bytes(got[0][0]) == b"first"
    assert np.frombuffer(got[0][1], np.float32).tolist() == arr.tolist()
    assert [bytes(p) for p in got[1]] == [b"", b"xxx"]


def test_sends_never_block_and_large_backlogs_flush(pair):
    a, b = pair
    big = b"y" * (3 << 20)  # more than the socket buffers hold
    for i in range(4):
        a.send([bytes([i]), big])
    assert a.wants_write  # the rest waits in the outbox; send returned at once
    got = drain(a, b, 4)
    assert [bytes(m[0]) for m in got] == [b"\0", b"\1", b"\2", b"\3"]
    assert all(len(m[1]) == len(big) for m in got)


def test_many_parts(pair):
    a, b = pair
    parts = [bytes([i % 256]) * 3 for i in range(2500)]  # above IOV_MAX
    a.send(parts)
    (msg,) = drain(a, b, 1)
    assert [bytes(p) for p in msg] == parts


def test_eof_is_reported(pair):
    a, b = pair
    a.send([b"last"])
    a.close()
    assert [bytes(p) for p in drain(a, b, 1)[0]] == [b"last"]
    with pytest.raises(ChannelClosed):
        for _ in range(100):
            select.select([b.fileno()], [], [], 0.01)
            b.recv()


def test_every_message_round_trips():
    samples = [
        msgs.Submit([[1, 0, "app", 1.0, 2.0, None, 3, 4]]),
        msgs.Discard([1], [2], [[3, "text"]], "why"),
        msgs.SchedulerStats({"m": {"queued": 1}}),
        msgs.RunBatch(1, 0, [5, 6], [1, 2], [7, 8]),
        msgs.WorkerReady(0, 123, "cpu", [[[0.1], [1.0], None]]),
        msgs.BatchDone(0, 1, 0, True, 0.5, [1, 2]),
        msgs.Results(0, [5], 1.0, 10, [[[10], []]], None),
        msgs.Shutdown(1.0, "bye"),
        msgs.ClusterState("ok", 1, 1, {"supervisor": 1}),
        msgs.ChildReady("frontend", 0, 9, {"endpoint": "tcp://x"}),
        msgs.ChildFailed("worker", 1, 9, "boom"),
    ]
    tags = {type(m).TAG for m in samples}
    assert len(tags) == len(samples) and all(len(t) == 1 for t in tags)
    for m in samples:
        back = msgs.decode(msgs.encode(m))
        assert type(back) is type(m) and back == m


def test_unknown_tags_and_newer_fields():
    with pytest.raises(msgs.UnknownMessage):
        msgs.decode(b"?\x90")
    with pytest.raises(msgs.UnknownMessage):
        msgs.decode(b"")
    import msgpack

    newer = b"X" + msgpack.packb([2.0, "why", "a field from the future"])
    assert msgs.decode(newer) == msgs.Shutdown(2.0, "why")
