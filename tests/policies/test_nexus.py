"""nexus: the duty-cycle batch size from a mean profile, and early drop (more in
test_baselines_faithful.py)."""

from __future__ import annotations

import pytest

from orloj_rt.policies import make_policy


def test_profile_is_inflation_times_expected_max(point_mass):
    p = make_policy("nexus", max_batch=4, inflation=[1.0, 1.5, 2.0, 2.5])
    p.set_default_distribution(point_mass)
    assert [p.profile(b) for b in (1, 2, 3, 4)] == pytest.approx([1.0, 1.5, 2.0, 2.5])


def test_batch_size_from_the_duty_cycle(point_mass):
    p = make_policy("nexus", max_batch=4, inflation=[1.0, 1.5, 2.0, 2.5])
    p.set_default_distribution(point_mass)
    for rid in range(6):
        p.enqueue(rid, "default", 0.0, 4.4 + rid)
    # head SLO 4.4: 2 profile(3) = 4 fits, 2 profile(4) = 5 does not, though
    # profile(4) = 2.5 alone would meet every deadline
    assert p.decide(0.0).batch == [0, 1, 2]


def test_drops_what_cannot_finish_alone(point_mass):
    p = make_policy("nexus", max_batch=4, inflation=[1.0, 1.5, 2.0, 2.5])
    p.set_default_distribution(point_mass)
    p.enqueue(1, "default", 0.0, 0.9)  # 0.9 < profile(1) = 1
    p.enqueue(2, "default", 0.0, 1.2)
    decision = p.decide(0.0)
    assert decision.dropped == [1]
    assert decision.batch == [2]


def test_needs_a_profile():
    p = make_policy("nexus", max_batch=4)
    p.enqueue(1, "default", 0.0, 1.0)
    with pytest.raises(ValueError, match="set_default_distribution"):
        p.decide(0.0)
