"""The non-clairvoyant bound holds for orloj and the baselines, and not for the oracle."""

from __future__ import annotations

import pytest

from orloj_rt.engine.pure.batch_model import Inflation
from orloj_rt.sim import SimConfig, WorkloadSpec, generate, run
from orloj_rt.sim.bounds import finish_rate_bound


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
