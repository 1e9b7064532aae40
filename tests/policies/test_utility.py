"""Priorities, variants and fairness (issue 17): known answers of orloj's utility policy,
fifo's tiers, and the errors for bad input."""

from __future__ import annotations

import pytest

from orloj_rt.engine import Distribution
from orloj_rt.policies import make_policy
from orloj_rt.policies.utility import UtilityPolicy, checked_variants

VARIANTS = (("full", 1.0, 1.0), ("half", 0.5, 0.93), ("quarter", 0.25, 0.85))


def with_variants(**kw) -> UtilityPolicy:
    p = make_policy("orloj", max_batch=8, variants=VARIANTS, **kw)
    assert isinstance(p, UtilityPolicy)
    p.set_default_distribution(Distribution.from_mean_cov(1.0, 0.1))
    return p


def test_a_tight_slo_and_a_long_queue_choose_a_cheaper_variant():
    p = with_variants()
    for i in range(50):
        p.enqueue(i, "a", 0.0, 1.5)
    d = p.decide(0.0)
    assert d.batch and d.variant in (1, 2), d
    assert p.variants[d.variant].name in ("half", "quarter")


def test_a_loose_slo_keeps_the_full_model():
    p = with_variants()
    for i in range(3):
        p.enqueue(i, "a", 0.0, 100.0)
    d = p.decide(0.0)
    assert sorted(d.batch) == [0, 1, 2] and d.variant == 0


def test_the_chosen_batch_leaves_every_variant_queue():
    p = with_variants()
    for i in range(20):
        p.enqueue(i, "a", 0.0, 2.0)
    d = p.decide(0.0)
    assert len(p) == 20 - len(d.batch) - len(d.dropped)
    for rid in d.batch:
        with pytest.raises(KeyError):
            p.remove(rid)


def test_a_top_tier_request_is_served_before_an_older_low_tier_one():
    def first(priority):
        p = make_policy("orloj", max_batch=1, priorities=True)
        p.set_default_distribution(Distribution.from_mean_cov(1.0, 0.05))
        p.enqueue(1, "a", 0.0, 1.2)  # older, more urgent, tier 0
        p.enqueue(2, "a", 0.1, 1.25, None, priority)
        return p.decide(0.1).batch

    assert first(0) == [1]  # one tier: the most urgent
    assert first(1) == [2]  # only one can finish: the top tier's


def test_with_fairness_a_starved_apps_weight_rises():
    p = make_policy("orloj", max_batch=4, fairness=1.0)
    p.set_default_distribution(Distribution.from_mean_cov(1.0, 0.1))
    p.enqueue(1, "fed", 0.0, 10.0)
    p.enqueue(2, "starved", 0.0, 10.0)
    for _ in range(200):
        p.observe_outcome("fed", True)
        p.observe_outcome("starved", False)
    assert p.multiplier("starved") > 1.0 > p.multiplier("fed")
    assert p.app_weight("starved") > p.app_weight("fed")


def test_fairness_off_changes_no_weight():
    p = make_policy("orloj", max_batch=4, priorities=True)
    p.set_default_distribution(Distribution.from_mean_cov(1.0, 0.1))
    for _ in range(200):
        p.observe_outcome("starved", False)
    assert p.multiplier("starved") == 1.0


def test_fifo_serves_a_higher_tier_first():
    p = make_policy("fifo", max_batch=2, max_queue_delay=0.0)
    p.set_default_distribution(Distribution.from_mean_cov(1.0, 0.1))
    p.enqueue(1, "a", 0.0, 10.0)
    p.enqueue(2, "a", 0.1, 10.0)
    p.enqueue(3, "a", 0.2, 10.0, None, 2)
    p.enqueue(4, "a", 0.3, 10.0, None, 1)
    assert p.decide(0.3).batch == [3, 4]
    assert p.decide(0.3).batch == [1, 2]


@pytest.mark.parametrize("name", ["orloj", "fifo"])
def test_a_priority_out_of_range_names_the_field(name):
    p = make_policy(name, max_batch=4, **({"priorities": True} if name == "orloj" else {}))
    p.set_default_distribution(Distribution.from_mean_cov(1.0, 0.1))
    with pytest.raises(ValueError, match="priority 9 is out of range"):
        p.enqueue(1, "a", 0.0, 10.0, None, 9)
    with pytest.raises(ValueError, match="priority"):
        p.enqueue(1, "a", 0.0, 10.0, None, -1)
    assert len(p) == 0


def test_tier_weights_bound_the_tiers():
    p = make_policy("orloj", max_batch=4, tier_weights=[1, 5])
    p.set_default_distribution(Distribution.from_mean_cov(1.0, 0.1))
    p.enqueue(1, "a", 0.0, 10.0, None, 1)
    with pytest.raises(ValueError, match=r"priority 2 is out of range.*0\.\.1"):
        p.enqueue(2, "a", 0.0, 10.0, None, 2)


def test_a_variant_without_an_accuracy_names_the_field():
    with pytest.raises(ValueError, match=r"variants\[1\] \('half'\)\.accuracy: missing"):
        checked_variants([("full", 1.0, 1.0), ("half", 0.5, None)])
    with pytest.raises(ValueError, match=r"accuracy: 1\.5 is not in \[0, 1\]"):
        checked_variants([("full", 1.0, 1.5)])


def test_orloj_step_admits_a_top_tier_request_first():
    def joined(priority):
        p = make_policy("orloj-step", max_batch=1, inflation=[1.0], step=0.1)
        p.set_default_distribution(Distribution.from_mean_cov(1.0, 0.1))
        p.enqueue(1, "a", 0.0, 10.0)
        p.enqueue(2, "a", 0.0, 5.0, None, priority)
        return p.step_boundary(0.0, []).joined

    assert joined(0) == [1]  # equal chances: the most slack first
    assert joined(1) == [2]  # the top tier's chance weighs 10
    p = make_policy("orloj-step", max_batch=1, inflation=[1.0], step=0.1, tier_weights=[1, 2])
    with pytest.raises(ValueError, match="priority 2 is out of range"):
        p.enqueue(1, "a", 0.0, 10.0, None, 2)


def test_without_tiers_orloj_decides_as_the_engine_then_honours_a_late_tier():
    # the serving core's orloj (priorities=True) takes the engine's own path until a
    # request of a tier > 0 arrives; then tiers count again
    from orloj_rt.engine import OrlojPolicy

    p = make_policy("orloj", max_batch=4, priorities=True)
    plain = OrlojPolicy(max_batch=4)
    for q in (p, plain):
        q.set_default_distribution(Distribution.from_mean_cov(1.0, 0.3))
        for i in range(12):
            q.enqueue(i, "ab"[i % 2], 0.0, 1.5 + 0.4 * i)
    for now in (0.0, 0.5, 1.0):
        assert p.decide(now) == plain.decide(now)
    assert "decide" in vars(p)  # the engine's own method, no wrapper frame

    late = make_policy("orloj", max_batch=1, priorities=True)
    late.set_default_distribution(Distribution.from_mean_cov(1.0, 0.05))
    late.enqueue(0, "a", 0.0, 50.0)
    assert late.decide(0.0).batch == [0]  # the plain path
    late.enqueue(1, "a", 0.0, 1.2)  # older, more urgent, tier 0
    late.enqueue(2, "a", 0.1, 1.25, None, 1)
    assert "decide" not in vars(late)  # tiers count from the first tiered request on
    assert late.decide(0.1).batch == [2]  # only one can finish: the top tier's
