"""sjf-hint: shortest predicted first, on hand-made queues with known answers.

Every distribution here is a point mass, so each prediction (the mean) is exact.
"""

from __future__ import annotations

import math

import pytest

from orloj_rt.engine import IMPLEMENTATIONS, Distribution
from orloj_rt.policies import BASELINES, HINTED, POLICIES, make_policy
from orloj_rt.policies.sjf_hint import SjfHintPolicy


def point(x: float, engine=None):
    """A distribution whose every solo time is `x` (mean exactly `x`)."""
    dist = Distribution if engine is None else engine.Distribution
    return dist.from_samples([x] * 100)


def policy(table=(1.0, 1.5, 2.0, 2.5), default=1.0, **kw) -> SjfHintPolicy:
    """c(b) = 1 + 0.5 (b - 1) up to 4 unless told."""
    p = SjfHintPolicy(max_batch=len(table), inflation=list(table), **kw)
    if default is not None:
        p.set_default_distribution(point(default))
    return p


def test_classes_with_different_means_go_shortest_first():
    p = policy(table=[1.0] * 8)  # batching is free: every request joins, in order
    p.set_distribution("a#h0", point(3.0))
    p.set_distribution("a#h1", point(1.0))
    p.set_distribution("a#h2", point(2.0))
    assert p.prediction("a#h1") == pytest.approx(1.0)
    p.enqueue(1, "a#h0", 0.0, 50.0, 30.0)
    p.enqueue(2, "a#h2", 0.0, 40.0, 20.0)
    p.enqueue(3, "a#h1", 0.0, 60.0, 10.0)
    p.enqueue(4, "a#h1", 0.0, 30.0, None)  # no hint: after the hinted of its class
    p.enqueue(5, "a#h1", 0.0, 70.0, 9.0)  # a smaller hint first, whatever its deadline
    p.enqueue(6, "b", 0.0, 20.0)  # no class of its own: the default's mean, 1.0
    p.enqueue(7, "a#h1", 0.0, 25.0, None)  # two without a hint: by deadline
    d = p.decide(0.0)
    # prediction 1.0 (a#h1 and b merged: hint, None last, then deadline), then 2.0, 3.0
    assert d.batch == [5, 3, 6, 7, 4, 2, 1]
    assert d.dropped == [] and d.rejected == [] and len(p) == 0


def test_a_nan_hint_counts_as_no_hint():
    p = policy(table=[1.0] * 4)
    p.enqueue(1, "a", 0.0, 5.0, math.nan)
    p.enqueue(2, "a", 0.0, 9.0, 4.0)
    assert p.decide(0.0).batch == [2, 1]


def test_a_request_that_cannot_make_it_alone_is_dropped():
    p = policy()
    p.set_distribution("long", point(2.0))
    p.enqueue(1, "long", 0.0, 2.9)  # now 1.0 + 2.0 > 2.9: hopeless by its prediction
    p.enqueue(2, "long", 0.0, 3.0)  # exactly on time alone: kept
    p.enqueue(3, "short", 0.0, 1.5)  # 1.0 + 1.0 > 1.5
    p.enqueue(4, "short", 0.0, 9.0)
    d = p.decide(1.0)
    assert sorted(d.dropped) == [1, 3]
    assert d.batch == [4]  # with 2 it would take 1.5 x 2.0: past 2's deadline 3.0
    assert p.decide(1.0).batch == [2]
    assert len(p) == 0


def test_everything_hopeless_is_dropped_and_nothing_runs():
    p = policy()
    p.enqueue(1, "a", 0.0, 0.5)
    p.enqueue(2, "a", 0.0, 0.9)
    d = p.decide(0.0)
    assert d.batch == [] and sorted(d.dropped) == [1, 2] and len(p) == 0
    assert p.decide(0.0)[:3] == ([], [], [])  # an empty queue: nothing to do


def test_the_greedy_batch_skips_a_member_whose_deadline_the_bigger_batch_misses():
    p = policy()
    p.set_distribution("s", point(1.0))
    p.set_distribution("m", point(2.0))
    p.enqueue(1, "s", 0.0, 10.0)
    p.enqueue(2, "m", 0.0, 2.5)  # alone 2.0 <= 2.5; with 1: c(2) x 2.0 = 3.0 > 2.5
    p.enqueue(3, "m", 0.0, 3.5)  # with 1: 3.0 <= 3.5
    p.enqueue(4, "m", 0.0, 20.0)  # with 1 and 3: c(3) x 2.0 = 4.0 > 3's deadline 3.5
    d = p.decide(0.0)
    assert d.batch == [1, 3]
    assert d.dropped == [] and len(p) == 2
    assert p.decide(0.0).batch == [2]  # then the skipped ones, still on time
    assert p.decide(0.0).batch == [4]


def test_the_batch_stops_at_the_maximum():
    p = policy(table=[1.0, 1.0])
    for i in range(5):
        p.enqueue(i, "a", 0.0, 10.0)
    assert p.decide(0.0).batch == [0, 1]
    assert len(p) == 3


def test_the_scan_is_bounded():
    # 1 fits with 9 only; 2..8 (prediction 2) cannot join 1 and 9 comes 9th
    def queue(scan):
        p = policy(table=[1.0, 1.5], scan=scan)
        p.set_distribution("s", point(1.0))
        p.set_distribution("m", point(2.0))
        p.set_distribution("l", point(3.0))
        p.enqueue(1, "s", 0.0, 10.0)
        for i in range(2, 9):
            p.enqueue(i, "m", 0.0, 2.5)
        p.enqueue(9, "l", 0.0, 100.0)
        return p

    assert queue(None).scan == 8  # 4 x the maximum batch
    assert queue(None).decide(0.0).batch == [1]
    assert queue(9).decide(0.0).batch == [1, 9]


def test_learning_a_class_distribution_reorders_the_queue():
    p = policy(table=[1.0])  # batches of one: each decision shows the queue's head
    p.set_distribution("a#h0", point(1.0))
    p.set_distribution("a#h1", point(2.0))
    for rid, app in ((1, "a#h1"), (2, "a#h0"), (3, "a#h1"), (4, "a#h0")):
        p.enqueue(rid, app, 0.0, 100.0)
    assert p.decide(0.0).batch == [2]
    p.set_distribution("a#h1", point(0.5))  # the class turned out short
    assert p.decide(0.0).batch == [1]
    assert p.decide(0.0).batch == [3]
    assert p.decide(0.0).batch == [4]


def test_learning_solo_times_reorders_the_queue():
    p = policy(table=[1.0, 1.0])
    p.set_distribution("x", point(0.8))
    p.enqueue(1, "x", 0.0, 100.0)
    p.enqueue(2, "y", 0.0, 100.0)  # the default's 1.0: after x
    for _ in range(500):
        p.observe_batch(["y"], 0.1)  # a batch of one: a solo time of y (c(1) = 1)
    assert p.prediction("y") < 0.8 < p.prediction("z") == pytest.approx(1.0)
    p.observe_batch(["x", "y"], 9.0)  # a bigger batch teaches nothing
    assert p.prediction("x") == pytest.approx(0.8)
    assert p.decide(0.0).batch == [2, 1]


def test_observe_solo_starts_from_the_default():
    p = policy(default=2.0)
    p.observe_solo("y", 1.0)  # one sample next to the prior's hundred
    assert 1.9 < p.prediction("y") < 2.0
    p.observe_solo("z", 0.5)
    assert p.prediction("z") < p.prediction("y")


def test_forget_app():
    p = policy()
    p.set_distribution("a", point(3.0))
    p.enqueue(1, "a", 0.0, 10.0)
    assert p.forget_app("a") is False  # queued: kept
    assert p.prediction("a") == pytest.approx(3.0)
    p.remove(1)
    assert p.knows("a")
    assert p.forget_app("a") is True
    assert not p.knows("a")
    assert p.prediction("a") == pytest.approx(1.0)  # back to the default
    assert p.forget_app("a") is False
    p.enqueue(2, "b", 0.0, 10.0)
    p.decide(0.0)
    assert not p.knows("b")  # an app with nothing of its own keeps no state


def test_validation():
    p = policy(default=None)
    with pytest.raises(ValueError, match="no execution-time distribution"):
        p.enqueue(1, "a", 0.0, 5.0)
    p.set_distribution("a", point(1.0))
    p.enqueue(1, "a", 0.0, 5.0)
    with pytest.raises(ValueError, match="already queued"):
        p.enqueue(1, "a", 0.0, 5.0)
    with pytest.raises(ValueError, match="in the past"):
        p.enqueue(2, "a", 3.0, 1.0)
    with pytest.raises(ValueError, match="finite"):
        p.enqueue(3, "a", 0.0, math.inf)
    with pytest.raises(KeyError):
        p.remove(9)
    with pytest.raises(ValueError, match="empty distribution"):
        p.set_default_distribution(Distribution())
    with pytest.raises(ValueError, match="scan"):
        SjfHintPolicy(max_batch=4, scan=0)
    assert len(p) == 1


@pytest.mark.parametrize("impl", sorted(IMPLEMENTATIONS))
def test_either_engines_distributions(impl):
    """The prediction is each engine's own mean: the same on the compiled and the pure
    distributions (the suite also runs whole under ORLOJ_RT_PURE=1)."""
    engine = IMPLEMENTATIONS[impl]
    spread = engine.Distribution.from_samples([0.5 + i / 999 for i in range(1000)])
    p = SjfHintPolicy(max_batch=2, inflation=[1.0, 1.5])
    p.set_default_distribution(spread)
    p.set_distribution("short", point(0.4, engine))
    assert p.prediction("other") == pytest.approx(1.0, rel=1e-3)
    assert p.prediction("short") == pytest.approx(0.4)
    p.enqueue(1, "other", 0.0, 10.0)
    p.enqueue(2, "short", 0.0, 10.0)
    assert p.decide(0.0).batch == [2, 1]


def test_the_registry_builds_it():
    assert POLICIES["sjf-hint"] is SjfHintPolicy
    assert "sjf-hint" in HINTED and "orloj" in HINTED and "orloj-step" in HINTED
    assert "sjf-hint" not in BASELINES
    p = make_policy("sjf-hint", max_batch=3, inflation=[1.0, 1.2, 1.4])
    assert isinstance(p, SjfHintPolicy) and p.name == "sjf-hint" and p.max_batch == 3
    p.set_default_distribution(point(1.0))
    p.enqueue(1, "a", 0.0, 1.2)
    p.enqueue(2, "a", 0.0, 1.3)  # a pair takes 1.2: both make it
    assert p.decide(0.0).batch == [1, 2]
