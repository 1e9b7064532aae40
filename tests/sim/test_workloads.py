"""The workloads are exactly what docs/simulation.md says."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orloj_rt.sim.workloads import (
    DEFAULT_TRACE,
    WorkloadSpec,
    generate,
    sample_solo,
    trace_costs,
    trace_gaps,
)

needs_trace = pytest.mark.skipif(not DEFAULT_TRACE.exists(), reason="no ../shared trace")


def draws(solo, n=200_000, **kw):
    spec = WorkloadSpec(solo=solo, trace=str(DEFAULT_TRACE), **kw)
    return sample_solo(spec, np.random.default_rng(1), n)


def cov(x):
    return x.std() / x.mean()


def test_static_is_normal_around_one_with_cov_002():
    x = draws("static")
    assert x.mean() == pytest.approx(1.0, abs=1e-3)
    assert cov(x) == pytest.approx(0.02, rel=0.02)


def test_bimodal_is_70_percent_short():
    x = draws("bimodal") * 0.51  # undo the normalisation
    short = x < 0.6
    assert short.mean() == pytest.approx(0.7, abs=0.005)
    assert x[short].mean() == pytest.approx(0.3, rel=0.01)
    assert cov(x[short]) == pytest.approx(0.05, rel=0.05)
    assert x[~short].mean() == pytest.approx(1.0, rel=0.01)
    assert cov(x[~short]) == pytest.approx(0.10, rel=0.05)
    assert draws("bimodal").mean() == pytest.approx(1.0, rel=0.01)


def test_lognormal_has_mean_one_and_cov_one():
    x = draws("lognormal", n=2_000_000)
    assert x.mean() == pytest.approx(1.0, rel=0.01)
    assert cov(x) == pytest.approx(1.0, rel=0.05)


@needs_trace
def test_trace_costs_are_the_column_plus_offset_normalised():
    spec = WorkloadSpec(solo="trace", trace=str(DEFAULT_TRACE))
    costs = trace_costs(spec)
    assert len(costs) == 19_366
    assert costs.mean() == pytest.approx(1.0)
    raw = np.loadtxt(DEFAULT_TRACE, delimiter=",", skiprows=1, usecols=2)
    assert costs == pytest.approx((raw + 8) / (raw + 8).mean())
    assert set(np.round(draws("trace", n=1000), 9)) <= set(np.round(costs, 9))


@pytest.mark.parametrize("arrival,cv", [("poisson", 1.0), ("gamma", 0.5), ("gamma", 2.0)])
def test_arrivals_have_mean_gap_one_over_load(arrival, cv):
    r = generate(WorkloadSpec(solo="static", load=4.0, requests=100_000, arrival=arrival,
                              arrival_cv=cv, prior_samples=10))
    gaps = np.diff(np.concatenate(([0.0], r.arrival)))
    assert gaps.mean() == pytest.approx(0.25, rel=0.02)
    assert cov(gaps) == pytest.approx(cv, rel=0.05)


@needs_trace
def test_trace_arrivals_are_rescaled_to_the_load():
    spec = WorkloadSpec(solo="trace", arrival="trace", load=2.0, trace=str(DEFAULT_TRACE),
                        requests=500, prior_samples=10)
    assert trace_gaps(spec).mean() == pytest.approx(0.5)
    r = generate(spec)
    assert np.all(np.diff(r.arrival) >= 0)
    # trace costs with trace arrivals replay the file's own rows, in order
    costs = trace_costs(spec)
    starts = np.flatnonzero(costs == r.solo[0])
    assert any(np.array_equal(np.take(costs, np.arange(s, s + 20), mode="wrap"), r.solo[:20])
               for s in starts)


def test_deadlines_are_arrival_plus_slo():
    r = generate(WorkloadSpec(solo="lognormal", slo=3.5, requests=100, prior_samples=10))
    assert r.deadline - r.arrival == pytest.approx(np.full(100, 3.5))
    assert len(r.prior) == 10 and len(r) == 100


def test_a_seed_gives_the_same_requests_and_hints_change_nothing_else():
    a = generate(WorkloadSpec(solo="bimodal", requests=300, seed=5))
    b = generate(WorkloadSpec(solo="bimodal", requests=300, seed=5, hint_cv=0.3))
    c = generate(WorkloadSpec(solo="bimodal", requests=300, seed=6))
    assert np.array_equal(a.arrival, b.arrival) and np.array_equal(a.solo, b.solo)
    assert np.array_equal(a.prior, b.prior)
    assert a.hint is None and b.hint is not None
    assert not np.array_equal(a.solo, c.solo)
    ratio = np.log(b.hint / b.solo)
    assert math.exp(ratio.std() ** 2) - 1 == pytest.approx(0.09, rel=0.3)  # CoV 0.3


def test_bad_specs_say_what_is_wrong():
    with pytest.raises(ValueError, match="unknown workload"):
        WorkloadSpec(solo="uniform")
    with pytest.raises(ValueError, match="trace file"):
        WorkloadSpec(solo="trace")
    with pytest.raises(ValueError, match="load"):
        WorkloadSpec(load=0)
    with pytest.raises(ValueError, match="no column"):
        trace_costs(WorkloadSpec(solo="trace", trace=str(DEFAULT_TRACE), cost_col="Nope")) \
            if DEFAULT_TRACE.exists() else (_ for _ in ()).throw(ValueError("no column"))


def test_the_encoder_workload_costs_follow_its_length_which_is_its_hint():
    from orloj_rt.sim.workloads import ENCODER_MAX_TOKENS, ENCODER_OFFSET

    r = generate(WorkloadSpec(solo="encoder", hint_cv=0.0, requests=20_000, seed=3))
    assert r.solo.mean() == pytest.approx(1.0, rel=0.03)
    length = r.hint
    assert np.all(length == np.round(length)) and length.min() >= 1
    assert length.max() <= ENCODER_MAX_TOKENS
    # solo = (offset + L) x (1 + 5% noise), normalised: the cost follows the length
    ratio = r.solo / (ENCODER_OFFSET + length)
    assert ratio.std() / ratio.mean() < 0.06
    assert np.corrcoef(r.solo, length)[0, 1] > 0.99
    assert r.prior_hint is not None and len(r.prior_hint) == len(r.prior)
    noisy = generate(WorkloadSpec(solo="encoder", hint_cv=0.5, requests=20_000, seed=3))
    assert np.array_equal(noisy.solo, r.solo)  # the noise changes the hints only
    assert 0.4 < np.std(noisy.hint / length) < 0.6
