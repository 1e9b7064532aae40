"""clockwork: the maximum of the last 10 measured batch times as the estimate."""

from __future__ import annotations

import pytest

from orloj_rt.policies import make_policy


def test_seed_estimate_is_a_high_quantile(spread):
    p = make_policy("clockwork", max_batch=2, inflation=[1.0, 1.2])
    p.set_default_distribution(spread)
    assert p.estimate(1) == pytest.approx(spread.quantile(0.95))
    assert p.estimate(2) == pytest.approx(1.2 * spread.quantile(0.95**0.5))


def test_drops_when_its_estimate_cannot_meet_the_deadline(point_mass):
    p = make_policy("clockwork", max_batch=4)
    p.set_default_distribution(point_mass)
    p.observe_batch(["default"], 3.0)  # one slow run: the max of the window is now 3
    assert p.estimate(1) == pytest.approx(3.0)
    p.enqueue(1, "default", 0.0, 2.5)  # would finish by the profile, not by the estimate
    p.enqueue(2, "default", 0.0, 3.5)
    decision = p.decide(0.0)
    assert decision.dropped == [1]
    assert decision.batch == [2]


def test_the_window_forgets_after_ten_runs(point_mass):
    p = make_policy("clockwork", max_batch=2)
    p.set_default_distribution(point_mass)
    p.observe_batch(["default"], 3.0)
    for _ in range(10):
        p.observe_batch(["default"], 1.0)
    assert p.estimate(1) == pytest.approx(1.0)


def test_largest_batch_whose_estimate_fits(point_mass):
    p = make_policy("clockwork", max_batch=3, inflation=[1.0, 1.5, 2.0])
    p.set_default_distribution(point_mass)
    for rid in range(5):
        p.enqueue(rid, "default", 0.0, 1.7 + rid)
    # earliest slack 1.7: estimate(2) = 1.5 fits, estimate(3) = 2.0 does not
    assert p.decide(0.0).batch == [0, 1]
