"""The scheduler's side of a worker crash, in one process with real socket pairs: the
dead worker's batch goes back to the frontend (`WorkerLost`), requests whose deadline
passes while no worker is ready are dropped, and a restarted worker (`AttachWorker` and
a descriptor on the pipe) gets no batch before its `WorkerReady`."""

from __future__ import annotations

import gc
import multiprocessing
import select
import threading
import time
from multiprocessing.reduction import send_handle

import pytest

from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.protocol import messages as msgs
from orloj_rt.runtime.channel import Channel
from orloj_rt.runtime.proc import InstanceConfig
from orloj_rt.runtime.scheduler import Scheduler

TIMEOUT_S = 10.0


def _next(ch: Channel, kind, timeout_s: float = TIMEOUT_S, skip=(msgs.SchedulerStats,)):
    """The next message of type `kind` on `ch` (messages of the types in `skip` are
    passed over; anything else fails the test)."""
    deadline = time.monotonic() + timeout_s
    while True:
        for parts in ch.recv():
            msg = msgs.decode(parts[0])
            if isinstance(msg, kind):
                return msg
            assert isinstance(msg, skip), f"expected {kind.__name__}, got {msg}"
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind.__name__} within {timeout_s} s")
        select.select([ch.fileno()], [], [], min(left, 0.05))


def _nothing(ch: Channel, kind, wait_s: float) -> bool:
    """True if no message of type `kind` arrives on `ch` within wait_s."""
    try:
        _next(ch, kind, wait_s)
    except AssertionError as exc:
        return "no " in str(exc)
    return False


def _parent_msg(conn, kind, timeout_s: float = TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while conn.poll(max(0.0, deadline - time.monotonic())):
        msg = msgs.decode(conn.recv_bytes())
        if isinstance(msg, kind):
            return msg
    raise AssertionError(f"no {kind.__name__} from the scheduler")


@pytest.fixture
def scheduler():
    entry = BUILTIN_MODELS["sleep"]
    config = InstanceConfig(instance="test-1", models=(entry,), ring_names=("unused",),
                            ring_layouts=(None,), client_endpoint="", devices=("cpu",))  # fmt: skip
    parent, child = multiprocessing.Pipe(duplex=True)
    fe_a, fe_b = Channel.pair()
    w_a, w_b = Channel.pair()
    thresholds = gc.get_threshold()
    sched = Scheduler(config, child, fe_b, [w_a])
    thread = threading.Thread(target=sched.run, daemon=True)
    thread.start()
    try:
        yield parent, Channel(fe_a, "frontend"), Channel(w_b, "worker 0"), entry.spec
    finally:
        parent.send_bytes(msgs.encode(msgs.Shutdown()))
        thread.join(5)
        gc.unfreeze()  # Scheduler.run froze the test process's objects (settle_memory)
        gc.set_threshold(*thresholds)
        assert not thread.is_alive()


def _submit(fe: Channel, tokens, deadline_s: float = 10.0) -> None:
    now = time.monotonic()
    fe.send([msgs.encode(msgs.Submit(
        [(t, 0, "default", now, now + deadline_s, None, t % 8, t) for t in tokens]))])  # fmt: skip


def test_a_dead_workers_batch_returns_and_its_restart_waits_for_ready(scheduler):
    parent, fe, worker, spec = scheduler
    assert _parent_msg(parent, msgs.ChildReady).role == "scheduler"
    profile = msgs.ModelProfile([0.01] * 8, [1.0] * spec.max_batch_size, None)
    worker.send([msgs.encode(msgs.WorkerReady(0, 1111, "cpu", [list(profile)]))])
    ready = _parent_msg(parent, msgs.ChildReady)
    assert (ready.role, ready.index, ready.pid) == ("worker", 0, 1111)

    _submit(fe, [1, 2, 3])
    run = _next(worker, msgs.RunBatch)
    assert set(run.tokens) <= {1, 2, 3} and run.tokens
    worker.close()  # the worker dies in the middle of the batch
    lost = _next(fe, msgs.WorkerLost)
    assert (lost.worker, lost.pid, sorted(lost.tokens)) == (0, 1111, sorted(run.tokens))

    # no worker is ready: a request whose deadline passes is dropped all the same
    _submit(fe, [10], deadline_s=0.1)
    discard = _next(fe, msgs.Discard, timeout_s=2.0)
    assert discard.dropped == [10]

    # the restart: its channel arrives over the pipe; no batch before its WorkerReady
    new_a, new_b = Channel.pair()
    parent.send_bytes(msgs.encode(msgs.AttachWorker(0, 2222, 1)))
    send_handle(parent, new_a.fileno(), 0)
    new_a.close()
    restarted = Channel(new_b, "worker 0 (restart)")
    _submit(fe, [*lost.tokens, 4, 5])  # what the frontend re-queues, and new requests
    assert _nothing(restarted, msgs.RunBatch, 0.5), "a batch went to a worker not ready"
    restarted.send([msgs.encode(msgs.WorkerReady(0, 2222, "cpu", []))])  # no profile
    ready = _parent_msg(parent, msgs.ChildReady)
    assert (ready.role, ready.index, ready.pid) == ("worker", 0, 2222)
    run = _next(restarted, msgs.RunBatch)
    assert set(run.tokens) <= {*lost.tokens, 4, 5}
    restarted.send([msgs.encode(msgs.BatchDone(0, run.batch_id, 0, True, 0.01, None))])
    restarted.close()
