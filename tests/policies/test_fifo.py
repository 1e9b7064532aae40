"""fifo: Triton's dynamic batcher, with the queue timeout = SLO rejecting."""

from __future__ import annotations

from orloj_rt.policies import make_policy


def test_oldest_first_up_to_the_maximum_batch():
    # no queue delay: the lone third request goes at once (with the default delay, a
    # tenth of its SLO, it would wait for a partner: test_baselines_faithful.py)
    p = make_policy("fifo", max_batch=2, max_queue_delay=0.0)
    # arrival order, not deadline order
    p.enqueue(1, "default", 0.0, 9.0)
    p.enqueue(2, "default", 1.0, 2.0)
    p.enqueue(3, "default", 2.0, 5.0)
    assert p.decide(2.0).batch == [1, 2]
    assert p.decide(2.0).batch == [3]


def test_rejects_after_the_queue_timeout():
    p = make_policy("fifo", max_batch=4)
    p.enqueue(1, "default", 0.0, 1.0)  # SLO 1: times out once it has waited > 1
    p.enqueue(2, "default", 0.5, 3.5)
    at_deadline = p.decide(1.0)  # waited exactly its timeout: not yet longer
    assert at_deadline.batch == [1, 2] and at_deadline.rejected == []
    p.enqueue(3, "default", 2.0, 3.0)
    p.enqueue(4, "default", 2.0, 9.0)
    late = p.decide(3.5)
    assert late.rejected == [3]
    assert late.batch == [4]
    assert late.dropped == []


def test_a_fixed_queue_timeout():
    p = make_policy("fifo", max_batch=4, queue_timeout=0.5)
    p.enqueue(1, "default", 0.0, 100.0)
    assert p.decide(0.6).rejected == [1]


def test_max_queue_delay_holds_a_partial_batch():
    # without preferred sizes only a full batch (3) goes before the delay; with the
    # default preferred sizes (2) a batch of 2 would: test_baselines_faithful.py
    p = make_policy("fifo", max_batch=3, max_queue_delay=0.25, preferred_batch_sizes=())
    p.enqueue(1, "default", 0.0, 10.0)
    held = p.decide(0.1)
    assert held.batch == [] and len(p) == 1
    assert p.next_wakeup(0.1) == 0.25
    p.enqueue(2, "default", 0.15, 10.0)
    p.enqueue(3, "default", 0.2, 10.0)
    assert p.decide(0.2).batch == [1, 2, 3]  # full: no need to wait
    p.enqueue(4, "default", 1.0, 10.0)
    assert p.decide(1.25).batch == [4]  # the delay ran out
    assert p.next_wakeup(1.25) is None
