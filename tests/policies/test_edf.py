"""edf: earliest deadline first, the expired dropped."""

from __future__ import annotations

from orloj_rt.policies import make_policy


def test_picks_the_earliest_deadlines():
    p = make_policy("edf", max_batch=3)
    for rid, deadline in [(1, 9.0), (2, 4.0), (3, 7.0), (4, 5.0), (5, 8.0)]:
        p.enqueue(rid, "default", 0.0, deadline)
    assert p.decide(0.0).batch == [2, 4, 3]
    assert p.decide(0.0).batch == [5, 1]


def test_drops_the_expired_only():
    p = make_policy("edf", max_batch=8)
    p.enqueue(1, "default", 0.0, 1.0)
    p.enqueue(2, "default", 0.0, 2.0)  # exactly now: a batch takes time, so it is expired
    p.enqueue(3, "default", 0.0, 2.5)  # hopeless for any model, but edf does not know
    decision = p.decide(2.0)
    assert decision.dropped == [1, 2]
    assert decision.batch == [3]
    assert decision.rejected == []
