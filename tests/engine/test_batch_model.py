"""Batch latency: P(T_B <= t) = prod F(t / c(b)) and E[T_B], against Monte Carlo."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def mc_batch_times(dists, c, n, seed):
    """Exact draws from each member's model: T = c * max of the members' solo times."""
    rng = random.Random(seed)
    return [c * max(d.quantile(rng.random()) for d in dists) for _ in range(n)]


@pytest.mark.parametrize("mix", ["one app", "three apps"])
def test_batch_cdf_and_mean_match_monte_carlo(eng, mix):
    a = eng.Distribution.from_mean_cov(0.010, 1.0)
    b = eng.Distribution.from_mean_cov(0.004, 0.3)
    s = eng.Distribution.from_samples([0.006 + 0.0001 * i for i in range(20)])
    members = [a] * 6 if mix == "one app" else [a, a, b, b, b, s]
    infl = eng.Inflation(32, 0.15)
    c = infl.c(len(members))
    n = 40_000
    draws = mc_batch_times(members, c, n, seed=3)
    for t in (0.01, 0.02, 0.04, 0.08):
        mc = sum(x <= t for x in draws) / n
        se = max((mc * (1 - mc) / n) ** 0.5, 1 / n)
        assert abs(eng.batch_cdf(t, members, infl) - mc) < 5 * se + 1e-3, t
    mean = sum(draws) / n
    se = (sum((x - mean) ** 2 for x in draws) / n) ** 0.5 / n**0.5
    assert abs(eng.batch_mean(members, infl) - mean) < 5 * se


def test_mixed_mean_equals_single_app_formula_when_apps_coincide(eng):
    a = eng.Distribution.from_mean_cov(0.010, 1.0)
    twin = a.copy()  # same numbers, a different object: takes the mixed (quadrature) path
    infl = eng.Inflation(32, 0.15)
    closed = eng.batch_mean([a] * 8, infl)
    quadrature = eng.batch_mean([a] * 4 + [twin] * 4, infl)
    assert quadrature == pytest.approx(closed, rel=1e-9)


def test_inflation(eng):
    infl = eng.Inflation(8, 0.5)
    assert infl.c(1) == 1.0 and infl.c(8) == 4.5
    assert infl.table == [1.0 + 0.5 * i for i in range(8)]
    prof = eng.Inflation.from_table([1.0, 1.2, 1.3])
    assert prof.max_batch == 3 and prof.c(3) == 1.3
    with pytest.raises(ValueError, match="above the model's maximum batch size 8"):
        infl.c(9)
    with pytest.raises(ValueError, match="c\\(2\\)"):
        eng.Inflation.from_table([1.0, float("nan")])
    with pytest.raises(ValueError, match=">= 1"):
        infl.c(0)


def test_batch_above_max_and_empty_batch_raise(eng):
    a = eng.Distribution.from_mean_cov(0.010, 1.0)
    infl = eng.Inflation(4, 0.15)
    with pytest.raises(ValueError, match="above the model's maximum"):
        eng.batch_cdf(0.1, [a] * 5, infl)
    with pytest.raises(ValueError, match="empty batch"):
        eng.batch_cdf(0.1, [], infl)
    with pytest.raises(ValueError, match="empty batch"):
        eng.batch_mean([], infl)
    with pytest.raises(ValueError, match="empty distribution"):
        eng.batch_cdf(0.1, [eng.Distribution()], infl)


@given(
    sizes=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    ts=st.lists(st.floats(0.0, 0.5), min_size=2, max_size=10),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=60, deadline=None)
def test_batch_cdf_is_monotone_and_within_unit_interval(eng, sizes, ts, seed):
    rng = random.Random(seed)
    dists = [eng.Distribution.from_mean_cov(rng.uniform(0.001, 0.05), rng.uniform(0, 2))
             for _ in sizes]
    members = [d for d, n in zip(dists, sizes, strict=True) for _ in range(n)]
    infl = eng.Inflation(32, 0.15)
    values = [eng.batch_cdf(t, members, infl) for t in sorted(ts)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
