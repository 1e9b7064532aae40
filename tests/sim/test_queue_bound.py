"""The waiting bound (orloj_rt/sim/queue_bound.py): a known answer, its shape, and the
simulated policies that do not know solo times staying under it while the oracle does not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from orloj_rt.engine.pure.batch_model import Inflation
from orloj_rt.sim import SimConfig, WorkloadSpec, run
from orloj_rt.sim.queue_bound import waiting_finish_rate_bound
from orloj_rt.sim.workloads import sample_solo


@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_known_answer(rate):
    """Solo time 1, SLO 1.1, batches of one: a request finishes only if it starts within
    0.1 of arriving. Of a batch's group (Poisson(rate) arrivals during its 1 unit) at most
    one can, and only if one arrived in its last 0.1: V = 1 - exp(-0.1 rate). So the
    damage of each batch is h = rate - 1 + exp(-0.1 rate), and the bound 1 / (1 + h)."""
    bound, se = waiting_finish_rate_bound([1.0] * 10, 1.1, rate, [1.0], samples=100_000)
    exact = 1.0 / (rate + math.exp(-0.1 * rate))
    assert abs(bound - exact) < 4 * se + 1e-3, (bound, se, exact)


def test_it_is_a_rate_that_falls_with_load_and_looking_further_ahead():
    rng = np.random.default_rng(1)
    law = rng.lognormal(-math.log(2) / 2, math.sqrt(math.log(2)), 20_000)
    table = Inflation(8, 0.15).table
    f_slo = float(np.mean(law <= 3.0))
    light, _ = waiting_finish_rate_bound(law, 3.0, 0.2, table, samples=10_000, depth=1)
    heavy, _ = waiting_finish_rate_bound(law, 3.0, 0.8, table, samples=10_000, depth=1)
    deeper, se = waiting_finish_rate_bound(law, 3.0, 0.8, table, samples=10_000, depth=2)
    assert heavy < light < f_slo
    assert deeper < heavy + 3 * se  # V_2 <= V_1 on the same groups, noise allowed
    assert waiting_finish_rate_bound(law, 0.001, 0.5, table, samples=1000)[0] == 0.0
    with pytest.raises(ValueError, match="depth"):
        waiting_finish_rate_bound(law, 3.0, 0.5, table, depth=4)
    with pytest.raises(ValueError, match="rate > 0"):
        waiting_finish_rate_bound(law, 3.0, 0.0, table)


def test_policies_that_do_not_know_solo_times_stay_under_it():
    """Light load, where the other bounds say almost nothing (F(S) = 0.99): orloj, edf and
    fifo finish less than the bound, the clairvoyant oracle more."""
    spec = WorkloadSpec(solo="lognormal", slo=5.0, load=0.6, requests=6000, seed=3)
    result = run(SimConfig(spec, policies=("orloj", "edf", "fifo", "oracle")))
    law = sample_solo(spec, np.random.default_rng(7), 50_000)
    bound, se = waiting_finish_rate_bound(law, 5.0, 0.6, Inflation(32, 0.15).table,
                                          samples=20_000, depth=2)  # fmt: skip
    assert bound < float(np.mean(law <= 5.0)) - 0.02
    noise = 3 * math.sqrt(bound * (1 - bound) / spec.requests) + 3 * se
    for name in ("orloj", "edf", "fifo"):
        assert result["policies"][name]["finish_rate"] <= bound + noise, name
    assert result["policies"]["oracle"]["finish_rate"] > bound


def test_the_check_bench_runs_and_finds_no_cell_over_the_bound():
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, str(root / "bench/queue_bound_check.py"), "--workloads",
           "lognormal", "--slos", "3", "--rates", "0.8", "--requests", "3000",
           "--samples", "5000", "--depth", "1", "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["over"] == 0 and len(out["rows"]) == 1
    assert out["rows"][0]["best_rate"] < out["rows"][0]["bound"] < 1.0
