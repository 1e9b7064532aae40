"""The bounds hold for the policies they bound (orloj, the baselines, those given hints),
and not for the clairvoyant oracle."""

from __future__ import annotations

import numpy as np
import pytest

from orloj_rt.engine.pure.batch_model import Inflation
from orloj_rt.sim import SimConfig, WorkloadSpec, generate, run
from orloj_rt.sim.bounds import (
    finish_rate_bound,
    hinted_finish_rate_bound,
    windowed_finish_rate_bound,
)


@pytest.mark.parametrize("solo,slo", [("lognormal", 3.0), ("bimodal", 2.0)])
def test_policies_without_the_true_times_stay_under_it(solo, slo):
    spec = WorkloadSpec(solo=solo, slo=slo, load=4.0, requests=1500, prior_samples=20_000)
    requests = generate(spec)
    span = requests.arrival[-1] + slo
    bound = finish_rate_bound(requests.prior, slo, span / 1500, Inflation(32, 0.15).table)
    result = run(SimConfig(spec, policies=("orloj", "nexus", "clockwork", "oracle")))
    for name in ("orloj", "nexus", "clockwork"):
        assert result["policies"][name]["finish_rate"] <= bound * 1.03, name  # noise
    assert result["policies"]["oracle"]["finish_rate"] > bound  # clairvoyance beats it


def test_it_is_a_rate_and_falls_with_load():
    sample = [0.5, 1.0, 1.5, 2.0]
    table = Inflation(8, 0.15).table
    values = [finish_rate_bound(sample, 3.0, 1 / load, table) for load in (0.5, 2, 4, 8)]
    assert values[0] == 1.0
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert finish_rate_bound(sample, 0.4, 1.0, table) == 0.0  # nothing fits the SLO


def test_windowed_bound_known_answer():
    """Ten requests at once, solo time 1, SLO 1.5, one worker: a member of a batch of 2 is
    charged min(1.15, 1.5) / 2 = 0.575 of the 0 + 2 x 1.5 worker time the window has, so
    at most 3 / 0.575 = 5.22 of the 10 can finish; on a worker 2x slower none can (alone
    it takes 2 > 1.5)."""
    table = [1.0, 1.15]
    fast = windowed_finish_rate_bound([1.0] * 8, 1.5, [0.0] * 10, [1.0], table)
    assert fast == pytest.approx(3 / 0.575 / 10, rel=1e-9)
    assert windowed_finish_rate_bound([1.0] * 8, 1.5, [0.0] * 10, [0.5], table) == 0.0
    # two such workers have twice the time; at most every request, once
    two = windowed_finish_rate_bound([1.0] * 8, 1.5, [0.0] * 10, [1.0, 1.0], table)
    assert two == pytest.approx(1.0)


def test_windowed_bound_sees_bursts_and_slow_workers():
    """The same arrivals, as many, on the same workers: bunched into bursts the bound is
    lower than spread evenly, and workers 2x slower lower it further. Never above the
    single-window bound's cap, P(X <= S)."""
    rng = np.random.default_rng(0)
    sample = rng.lognormal(-0.3, 0.77, 5000)
    even = np.arange(2000) / 8.0  # 8 arrivals a unit
    burst = np.sort(np.concatenate([np.arange(1000) / 16.0, 125 + np.arange(1000) / 4.0]))
    table = Inflation(32, 0.15).table
    workers = [1.0] * 8
    b_even = windowed_finish_rate_bound(sample, 3.0, even, workers, table)
    b_burst = windowed_finish_rate_bound(sample, 3.0, burst, workers, table)
    b_slow = windowed_finish_rate_bound(sample, 3.0, burst, [1.0] * 4 + [0.5] * 4, table)
    cap = float(np.mean(sample <= 3.0))
    assert b_slow < b_burst < b_even <= cap + 1e-12


def test_windowed_bound_holds_for_the_routers():
    """A bursty, overloaded cell on unequal nodes: no router, with orloj on the nodes,
    finishes more than the bound (noise allowed), and the bound is below P(X <= S)."""
    from orloj_rt.sim.cluster import ClusterConfig, cluster_requests, parse_speeds, run_router
    from orloj_rt.sim.workloads import DEFAULT_TRACE, WorkloadSpec, trace_costs

    spec = WorkloadSpec(solo="trace", trace=str(DEFAULT_TRACE), slo=3.0, load=1.1,
                        requests=3000, seed=0, arrival="trace")  # fmt: skip
    cfg = ClusterConfig(spec, nodes=8, speeds="unequal", routers=("p2c", "orloj"))
    rq = cluster_requests(cfg)
    law = trace_costs(spec)
    bound = windowed_finish_rate_bound(law, 3.0, rq.arrival, parse_speeds("unequal", 8),
                                       Inflation(cfg.max_batch, cfg.batch_alpha).table)
    assert bound < float(np.mean(law <= 3.0)) - 0.02  # the cell is over what it can finish
    for router in ("p2c", "orloj"):
        assert run_router(cfg, router, rq)["finish_rate"] <= bound + 0.02, router


def test_hinted_bound_known_answer():
    """20 short (0.5) and 20 long (2.0) requests at once, SLO 1.5, hints all but exact:
    a long one cannot finish even alone, a short one in a pair takes 1.15 x 0.5 and is
    charged 0.2875 of the 2 x 1.5 worker time, so at most 3 / 0.2875 of the 40 finish.
    Without hints (the windowed bound) far fewer can: a pair of unknown requests finishes
    with probability 1/4. A one-point law makes hints say nothing: the windowed bound."""
    table = [1.0, 1.15]
    law, weights = [0.5, 2.0], [0.5, 0.5]
    hints = [0.5] * 20 + [2.0] * 20
    bound = hinted_finish_rate_bound(law, hints, 0.01, 1.5, [0.0] * 40, table,
                                     law_weights=weights)
    assert bound == pytest.approx(3 / 0.2875 / 40, rel=1e-9)
    assert windowed_finish_rate_bound([0.5, 2.0], 1.5, [0.0] * 40, [1.0], table) < bound / 4
    same = hinted_finish_rate_bound([1.0] * 8, np.linspace(0.5, 2, 10), 0.6, 1.5, [0.0] * 10,
                                    table)
    assert same == pytest.approx(windowed_finish_rate_bound([1.0] * 8, 1.5, [0.0] * 10, [1.0],
                                                            table), rel=1e-9)
    with pytest.raises(ValueError, match="hints must be > 0"):
        hinted_finish_rate_bound(law, [0.0] * 40, 0.6, 1.5, [0.0] * 40, table)
    with pytest.raises(ValueError, match="one hint per arrival"):
        hinted_finish_rate_bound(law, hints[:3], 0.6, 1.5, [0.0] * 40, table)


def test_hinted_bound_holds_for_policies_given_hints():
    """An overloaded cell with hints of CoV 0.6: orloj and sjf-hint given the hints, and
    those without them, stay under the bound (noise allowed); the clairvoyant oracle does
    not, and the hints lift the bound well above the one without them."""
    from orloj_rt.sim.experiment import run_policy

    spec = WorkloadSpec(solo="bimodal", slo=2.0, load=4.0, requests=1500, hint_cv=0.6)
    requests = generate(spec)
    table = Inflation(32, 0.15).table
    bound = hinted_finish_rate_bound(requests.prior, requests.hint, 0.6, 2.0, requests.arrival,
                                     table)
    config = SimConfig(spec, policies=("orloj+hint", "sjf-hint", "orloj", "nexus", "oracle"))
    rates = {p: run_policy(config, p, requests)["finish_rate"] for p in config.policies}
    for name in ("orloj+hint", "sjf-hint", "orloj", "nexus"):
        assert rates[name] <= bound + 0.02, name  # noise
    assert rates["oracle"] > bound
    span = requests.arrival[-1] + 2.0
    assert bound > 2 * finish_rate_bound(requests.prior, 2.0, span / 1500, table)


def test_hinted_bound_terms_match_monte_carlo():
    """Each request's credit F_j(S / c(b))^b and charge E[min(c(b) M_j, S)] / b, against
    draws from its posterior law (prior weights times the hint's likelihood)."""
    from orloj_rt.sim.bounds import _hinted_member_terms

    rng = np.random.default_rng(3)
    law = np.sort(rng.lognormal(-0.35, 0.83, 300))
    table = np.asarray(Inflation(6, 0.3).table)
    cv, slo = 0.6, 2.0
    credit, charge = _hinted_member_terms(law, np.full(300, 1 / 300), np.array([0.4, 2.5]),
                                          cv, slo, table)
    s2 = np.log1p(cv * cv)
    for j, hint in enumerate((0.4, 2.5)):
        post = np.exp(-0.5 * ((np.log(hint) - np.log(law) + s2 / 2) / np.sqrt(s2)) ** 2)
        for i, c in enumerate(table):
            draws = rng.choice(law, size=(100_000, i + 1), p=post / post.sum()).max(axis=1)
            assert credit[j, i] == pytest.approx(np.mean(c * draws <= slo), abs=0.01)
            assert charge[j, i] == pytest.approx(np.mean(np.minimum(c * draws, slo)) / (i + 1),
                                                 abs=0.01)
