"""The simulator's variants, tiers and fairness (issue 17): the serving core's variant
plumbing, the JSON's utility fields, and the flags' errors."""

from __future__ import annotations

import json

import pytest

from orloj_rt.cli.sim import parse_priorities_flag, parse_variants_flag
from orloj_rt.sim.experiment import SimConfig, run_policy
from orloj_rt.sim.simulator import SimModel, warmup_profile
from orloj_rt.sim.workloads import WorkloadSpec, generate

VARIANTS = (("full", 1.0, 1.0), ("half", 0.5, 0.93), ("quarter", 0.25, 0.85))


def test_the_core_names_the_variant_and_teaches_it():
    from orloj_rt.policies.utility import VariantSpec
    from orloj_rt.serving import ServingCore

    variants = tuple(VariantSpec(n, a, c) for n, c, a in VARIANTS)
    core = ServingCore([SimModel("m", 8, None, variants)], "orloj", None, 1,
                       timer=lambda: 0.0)  # fmt: skip
    core.worker_ready(0, [warmup_profile([1.0] * 50, [1 + 0.15 * b for b in range(8)])])
    core.submit([(i, 0, "a", 0.0, 1.5, None, 0, 0) for i in range(40)])
    (run,) = core.dispatch(0.0)
    assert run.variant in ("half", "quarter")  # a tight SLO, a long queue
    assert core.variant_of(0) == run.variant
    k = [v.name for v in variants].index(run.variant)
    core.batch_done(0, 0, True, 0.3, [0.3] * len(run.tokens))
    mq = core.models[0]
    assert mq.variant_batches[k] == 1
    assert mq.variant_apps[("a", k)].samples == len(run.tokens)
    assert mq.stats()["variant_batches"][run.variant] == 1


def test_a_cell_reports_accuracy_utility_and_tiers():
    spec = WorkloadSpec(solo="bimodal", slo=5.0, load=3.0, requests=600)
    config = SimConfig(spec, policies=("orloj", "orloj+variants", "fifo"), variants=VARIANTS,
                       priorities=((1, 0.2, 10.0),))  # fmt: skip
    req = generate(spec)
    out = {name: run_policy(config, name, req) for name in config.policies}
    for m in out.values():
        assert m["answered_in_slo"] == m["finish_rate"]
        assert set(m["tiers"]) == {"0", "1"}
        assert m["tiers"]["1"]["weight"] == 10.0
    plain, var = out["orloj"], out["orloj+variants"]
    assert plain["mean_accuracy"] == 1.0 and "variants" not in plain
    assert sum(var["variants"].values()) == var["completed"]
    assert var["mean_accuracy"] < 1.0  # overloaded: cheaper variants served some
    assert var["answered_in_slo"] > plain["answered_in_slo"]
    # utility = sum of tier weight x accuracy over the requests in time, per request
    assert var["utility"] > var["answered_in_slo"] * 0.85
    assert out["orloj"]["tiers"]["1"]["finish_rate"] > out["orloj"]["tiers"]["0"]["finish_rate"]


def test_the_cli_prints_the_utility_columns(capsys):
    from orloj_rt.cli import main

    rc = main(["sim", "--workload", "bimodal", "--slo-mult", "5", "--load", "3",
               "--requests", "300", "--policies", "orloj+variants,loki-threshold",
               "--variants", "full:1.0:1.0,half:0.5:0.93,quarter:0.25:0.85", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["config"]["variants"][1] == {"name": "half", "cost_scale": 0.5,
                                            "accuracy": 0.93}  # fmt: skip
    for m in res["policies"].values():
        assert 0.85 <= m["mean_accuracy"] <= 1.0 and m["utility"] <= m["answered_in_slo"]


@pytest.mark.parametrize("text, field", [
    ("full:1.0", "accuracy missing"),
    ("full:1.0:1.0,half:0.5", "accuracy missing"),
    ("full:1.0:1.0,ha lf:0.5:0.9", "name 'ha lf'"),
    ("full:1.0:1.0,half:x:0.9", "cost scale 'x'"),
    ("full:1.0:1.0,half:0.5:1.2", "accuracy 1.2"),
    ("full:1.0:1.0,full:0.5:0.9", "given twice"),
    ("full:1.0:1.0", "at least one cheaper variant"),
])
def test_bad_variants_name_the_field(text, field):
    with pytest.raises(ValueError, match="--variants") as err:
        parse_variants_flag(text)
    assert field in str(err.value)


@pytest.mark.parametrize("text, field", [
    ("9:0.2", "priority 9 is out of range"),
    ("0:0.2", "priority 0 is out of range"),
    ("x:0.2", "the priority 'x'"),
    ("1:1.5", "share"),
    ("1:0.6,2:0.6", "more than 1"),
])
def test_bad_priorities_name_the_field(text, field):
    with pytest.raises(ValueError, match="--priorities") as err:
        parse_priorities_flag(text)
    assert field in str(err.value)


def test_variants_policies_need_variants(capsys):
    from orloj_rt.cli import main

    rc = main(["sim", "--workload", "bimodal", "--slo-mult", "5", "--load", "3",
               "--policies", "orloj+variants"])
    assert rc == 2
    assert "--variants" in capsys.readouterr().err


def test_bench_utility_writes_its_rows_and_checks_the_targets(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "u"
    cmd = [sys.executable, str(root / "bench/utility.py"), "--out", str(out), "--loads", "3",
           "--requests", "200", "--jobs", "2", "--bound-samples", "2000", "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    res = json.loads(done.stdout)
    assert {(r["workload"], r["policy"]) for r in res["rows"]} == {
        (w, p) for w in ("bimodal", "lognormal")
        for p in ("orloj", "orloj+variants", "loki-threshold",
                  "orloj+variants min_accuracy=0.9")}
    for r in res["rows"]:
        assert set(r) >= {"workload", "load", "policy", "answered_in_slo", "mean_accuracy",
                          "utility"}
    # per workload: in SLO with and without the floor, utility, and whether 1.2x
    # loki-threshold's utility is within reach; 2 priorities, 1 fairness, the note
    assert len(res["targets"]) == 2 * 4 + 2 + 1 + 1, res["targets"]
    reach = [t for t in res["targets"] if t.startswith(("unreachable:", "reachable:"))]
    assert len(reach) == 2 and all("1.2x loki-threshold's utility" in t for t in reach)
    prio = [t for t in res["targets"] if ": priorities " in t]
    assert len(prio) == 2 and all("never stops a batch: at most" in t for t in prio)
    assert all(0 < c["top_bound"]["bound"] <= 1 for c in res["priorities"])
    for name in ("results.csv", "results.md", "results.json", "utility.png"):
        assert (out / name).stat().st_size > 0, name
