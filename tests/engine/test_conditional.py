"""Distribution.conditional_cdf: P(X <= w + t | X > w), the law a step scheduler uses for a
request that has done w seconds of solo work without finishing."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.engine.test_twins import dist_specs, make_dist


@pytest.mark.parametrize("w", [0.0, 0.005, 0.01, 0.02, 0.04])
def test_matches_a_monte_carlo_estimate(eng, w):
    d = eng.Distribution.from_mean_cov(0.01, 1.0)
    rng = random.Random(3)
    draws = [d.quantile(rng.random()) for _ in range(200_000)]  # exact draws from the model
    survivors = [x for x in draws if x > w]
    n = len(survivors)
    for t in (0.001, 0.005, 0.01, 0.03):
        mc = sum(x <= w + t for x in survivors) / n
        se = max((mc * (1 - mc) / n) ** 0.5, 1 / n)
        assert abs(d.conditional_cdf(w, t) - mc) < 5 * se, (w, t, d.conditional_cdf(w, t), mc)


def test_is_the_ratio_of_cdfs(eng):
    d = eng.Distribution.from_mean_cov(1.0, 0.8)
    for w, t in [(0.0, 0.5), (0.3, 0.2), (1.0, 1.0), (2.5, 0.1)]:
        fw = d.cdf(w)
        assert d.conditional_cdf(w, t) == pytest.approx((d.cdf(w + t) - fw) / (1 - fw))
    assert d.conditional_cdf(0.0, 0.7) == pytest.approx(d.cdf(0.7))


def test_edges(eng):
    d = eng.Distribution.from_samples([1.0, 2.0, 3.0], window=0)
    assert d.conditional_cdf(1.5, 0.0) == 0.0  # no more work, no finish
    assert d.conditional_cdf(1.5, -1.0) == 0.0
    assert d.conditional_cdf(1.5, float("inf")) == 1.0
    assert d.conditional_cdf(5.0, 1.0) == 0.0  # outlived every sample: no modelled chance
    # a point mass: certain once the work reaches it
    p = eng.Distribution.from_samples([1.0] * 10)
    assert p.conditional_cdf(0.5, 0.49) == 0.0
    assert p.conditional_cdf(0.5, 0.5) == 1.0
    with pytest.raises(ValueError, match="NaN"):
        d.conditional_cdf(float("nan"), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        d.conditional_cdf(1.0, float("nan"))
    with pytest.raises(ValueError, match="empty"):
        eng.Distribution().conditional_cdf(0.0, 1.0)


@given(spec=dist_specs, seed=st.integers(0, 2**20),
       probes=st.lists(st.tuples(st.floats(0, 0.3), st.floats(-0.01, 0.3)), min_size=1,
                       max_size=20))
@settings(max_examples=100, deadline=None)
def test_twins_agree_bit_for_bit(native, pure_engine, spec, seed, probes):
    a = make_dist(native, spec, seed)
    b = make_dist(pure_engine, spec, seed)
    for w, t in probes:
        pa = a.conditional_cdf(w, t)
        assert pa == b.conditional_cdf(w, t)
        assert 0.0 <= pa <= 1.0
