"""Distribution: the histogram model, its CDF, quantile, mean, and bad input."""

from __future__ import annotations

import math
import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

times = st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False)


def test_static_model_stays_sharp(eng):
    # a 2% spread must not be smeared over a whole 29%-wide bin
    rng = random.Random(1)
    d = eng.Distribution.from_samples([rng.gauss(1.0, 0.02) for _ in range(20000)], window=0)
    assert d.cdf(0.97) == pytest.approx(0.0668, abs=0.01)  # Phi(-1.5)
    assert d.cdf(1.0) == pytest.approx(0.5, abs=0.02)
    assert d.cdf(1.03) == pytest.approx(0.9332, abs=0.01)
    assert d.mean() == pytest.approx(1.0, rel=1e-3)


def test_lognormal_prior_has_its_mean_and_cov(eng):
    d = eng.Distribution.from_mean_cov(0.010, 1.0)
    assert d.mean() == pytest.approx(0.010, rel=0.01)
    # the median of a lognormal with CoV 1 is mean / sqrt(2)
    assert d.quantile(0.5) == pytest.approx(0.010 / math.sqrt(2), rel=0.03)


def test_point_mass(eng):
    d = eng.Distribution.from_mean_cov(0.5, 0.0)
    assert d.cdf(0.4999) == 0.0
    assert d.cdf(0.5) == 1.0
    assert d.quantile(0.3) == 0.5
    assert d.mean() == 0.5
    assert d.expected_max(10) == pytest.approx(0.5)


def test_quantile_inverts_cdf(eng):
    d = eng.Distribution.from_mean_cov(0.02, 0.8)
    for p in (0.01, 0.1, 0.5, 0.9, 0.99):
        assert d.cdf(d.quantile(p)) == pytest.approx(p, abs=1e-9)


def test_under_and_overflow_bins(eng):
    d = eng.Distribution.from_samples([1e-7, 2e-7, 100.0, 200.0], window=0)
    assert d.cdf(1e-6) == pytest.approx(0.5)
    assert d.cdf(150.0) == pytest.approx(0.75)
    assert d.cdf(1e9) == 1.0
    assert d.quantile(1.0) == pytest.approx(200.0)


def test_expected_max_matches_monte_carlo(eng):
    d = eng.Distribution.from_mean_cov(0.01, 1.0)
    rng = random.Random(7)
    draws = [d.quantile(rng.random()) for _ in range(200_000)]  # exact draws from the model
    for n in (1, 4, 16):
        rows = [max(draws[i : i + n]) for i in range(0, len(draws) - n, n)]
        mc = sum(rows) / len(rows)
        se = (sum((r - mc) ** 2 for r in rows) / len(rows)) ** 0.5 / len(rows) ** 0.5
        assert abs(d.expected_max(n) - mc) < 5 * se, (n, d.expected_max(n), mc, se)
    assert d.expected_max(1) == pytest.approx(d.mean(), rel=1e-12)


def test_exponential_forgetting_follows_a_shift(eng):
    d = eng.Distribution(window=200)
    for _ in range(2000):
        d.add(0.010)
    for _ in range(2000):
        d.add(0.030)
    # after ten windows the old mode has weight e^-10
    assert d.cdf(0.02) < 1e-3
    assert d.count == pytest.approx(200, rel=0.01)


def test_no_forgetting_with_window_zero(eng):
    d = eng.Distribution(window=0)
    for x in (0.01,) * 100 + (0.03,) * 100:
        d.add(x)
    assert d.cdf(0.02) == pytest.approx(0.5)
    assert d.count == 200


def test_add_many_is_one_observation(eng):
    d = eng.Distribution(window=10)
    d.add_many([0.01] * 1000)
    assert d.samples_added == 1000
    d.add(0.03)  # one later sample weighs what each prior sample weighs
    assert d.cdf(0.02) == pytest.approx(1000 / 1001)


def test_state_round_trip_and_pickle(eng):
    d = eng.Distribution.from_mean_cov(0.01, 0.5)
    d.add(0.02)
    for clone in (eng.Distribution.from_state(d.to_state()), pickle.loads(pickle.dumps(d))):
        for t in (0.001, 0.01, 0.05):
            assert clone.cdf(t) == d.cdf(t)
        assert clone.samples_added == d.samples_added


def test_copy_is_independent(eng):
    d = eng.Distribution.from_mean_cov(0.01, 0.5)
    c = d.copy()
    c.add(50.0)
    assert d.cdf(1.0) == 1.0
    assert c.cdf(1.0) < 1.0
    assert c.version != d.version


@given(samples=st.lists(times, min_size=1, max_size=60), probes=st.lists(times, max_size=20))
@settings(max_examples=200, deadline=None)
def test_cdf_is_monotone_and_within_unit_interval(eng, samples, probes):
    d = eng.Distribution.from_samples(samples)
    xs = sorted(probes + samples + [0.0, 1e-6, 1e3])
    values = [d.cdf(x) for x in xs]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert d.cdf(max(samples)) == 1.0


@given(samples=st.lists(times, min_size=1, max_size=60), p=st.floats(0.0, 1.0))
@settings(max_examples=200, deadline=None)
def test_quantile_is_a_generalised_inverse(eng, samples, p):
    d = eng.Distribution.from_samples(samples)
    q = d.quantile(p)
    lo, hi = d.support()
    assert lo <= q <= hi
    assert d.cdf(q) >= p - 1e-9


@pytest.mark.parametrize("bad", [float("nan"), -1.0, -1e-12, float("inf")])
def test_bad_samples_raise(eng, bad):
    d = eng.Distribution()
    with pytest.raises(ValueError, match="NaN|negative|infinite"):
        d.add(bad)
    with pytest.raises(ValueError, match="NaN|negative|infinite"):
        d.add_many([0.1, bad])
    assert d.samples_added == 0


def test_empty_distribution_raises(eng):
    d = eng.Distribution()
    for call in (lambda: d.cdf(1.0), lambda: d.quantile(0.5), d.mean, lambda: d.expected_max(2)):
        with pytest.raises(ValueError, match="empty distribution"):
            call()


def test_bad_arguments_raise(eng):
    d = eng.Distribution.from_mean_cov(0.01, 0.5)
    with pytest.raises(ValueError, match="NaN"):
        d.cdf(float("nan"))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        d.quantile(1.5)
    with pytest.raises(ValueError, match="bins"):
        eng.Distribution(bins=3)
    with pytest.raises(ValueError, match="lo < hi"):
        eng.Distribution(lo=1.0, hi=0.5)
    with pytest.raises(ValueError, match="window"):
        eng.Distribution(window=-1)
    with pytest.raises(ValueError, match="mean"):
        eng.Distribution.from_mean_cov(-1.0, 0.5)
