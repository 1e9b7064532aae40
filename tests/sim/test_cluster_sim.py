"""The simulator across nodes (orloj_rt/sim/cluster.py, `orloj-rt sim --nodes`): small
cells, a few hundred requests each."""

from __future__ import annotations

import json

import pytest

from orloj_rt.cli import main as cli_main
from orloj_rt.engine.pure.batch_model import Inflation
from orloj_rt.sim.cluster import (
    ClusterConfig,
    cluster_requests,
    parse_speeds,
    run_cluster,
    run_router,
)
from orloj_rt.sim.simulator import simulate_serving
from orloj_rt.sim.workloads import WorkloadSpec

from ..bench_module import bench_module


def spec(**kw) -> WorkloadSpec:
    base = dict(solo="lognormal", slo=2.0, load=0.6, requests=600, seed=3)
    base.update(kw)
    return WorkloadSpec(**base)


def test_one_node_is_the_single_node_simulator():
    """nodes=1: the router has one choice, and the core gets exactly simulate_serving's
    calls: the same outcome, request by request."""
    cfg = ClusterConfig(spec(load=1.5), nodes=1, routers=("orloj",))
    rq = cluster_requests(cfg)
    one = run_router(cfg, "orloj", rq)
    table = Inflation(cfg.max_batch, cfg.batch_alpha).table
    ref = simulate_serving("orloj", rq.arrival, rq.deadline, rq.solo, rq.app, table,
                           rq.prior).summary(rq.arrival, rq.deadline)  # fmt: skip
    for k, v in ref.items():
        assert one[k] == v, k


def test_orloj_routing_beats_random_on_unequal_speeds():
    cfg = ClusterConfig(spec(), nodes=8, speeds="unequal", routers=("random", "p2c", "orloj"))
    res = run_cluster(cfg)["routers"]
    n = cfg.workload.requests
    for m in res.values():  # every request ends once
        assert m["completed"] + m["dropped"] + m["rejected"] == n
    assert res["orloj"]["finish_rate"] > 1.2 * res["random"]["finish_rate"]
    assert res["orloj"]["finish_rate"] > res["p2c"]["finish_rate"]
    # it knows the slow nodes (measured there, 2x slower): most requests go to fast ones
    assert res["orloj"]["by_speed"]["1"]["share"] > 0.7
    assert res["random"]["by_speed"]["1"]["share"] == pytest.approx(0.5, abs=0.07)


def test_state_age_and_staleness():
    """State age 0: the router never falls back. A state older than stale_after (10 units
    in the simulator): every choice after the first stale_after units falls back (the
    nodes' load is ignored, docs/cluster-routing.md), and routing is then worse."""
    base = dict(nodes=8, speeds="unequal", routers=("orloj",))
    rq = cluster_requests(ClusterConfig(spec(), **base))
    fresh = run_router(ClusterConfig(spec(), **base), "orloj", rq)
    old = run_router(ClusterConfig(spec(), state_age=50.0, **base), "orloj", rq)
    assert fresh["fallbacks"] == 0
    late = int((rq.arrival > 10.0 + 0.1).sum())
    assert late > 100 and old["fallbacks"] >= late
    assert old["finish_rate"] < fresh["finish_rate"]


def test_parse_speeds():
    assert parse_speeds("equal", 3) == (1.0, 1.0, 1.0)
    assert parse_speeds("unequal", 4) == (1.0, 0.5, 1.0, 0.5)
    assert parse_speeds("1, 0.25", 2) == (1.0, 0.25)
    for bad, msg in (("fast", "comma-separated numbers"), ("1,2,3", "3 given for 2 nodes"),
                     ("1,-1", "> 0")):  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            parse_speeds(bad, 2)


def run_cli(capsys, *argv):
    rc = cli_main(["sim", "--workload", "lognormal", "--slo-mult", "2", "--load", "0.6",
                   "--requests", "200", *argv])  # fmt: skip
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_json(capsys):
    rc, out, _ = run_cli(capsys, "--nodes", "4", "--router", "p2c,orloj", "--node-speeds",
                         "unequal", "--state-age", "2", "--json")  # fmt: skip
    assert rc == 0
    res = json.loads(out)
    assert set(res["routers"]) == {"p2c", "orloj"}
    assert res["config"]["nodes"] == 4 and res["config"]["state_age"] == 2.0


def test_cluster_routing_targets_say_when_the_bound_puts_them_out_of_reach():
    """A missed target whose cell's bound over p2c is under what it asks is unreachable;
    one with room under the bound is missed; the verdicts are plain JSON."""
    loaded = bench_module("cluster_routing.py", "cluster_routing_targets")
    cr = next(loaded)
    cells = [(64, "trace", "unequal", 0.0), (64, "trace", "unequal", 2.0)]
    results = {(*cells[0], "p2c"): 0.75, (*cells[0], "orloj"): 0.90,
               (*cells[1], "p2c"): 0.70, (*cells[1], "orloj"): 0.75}  # fmt: skip
    bounds = {(64, "trace", "unequal"): {"law": 0.96, "own": 0.97}}
    t = cr.check_targets(results, cells, bounds)
    assert [x["met"] for x in t] == [False, False, True]
    assert t[0]["reachable"] is False and t[0]["bound_over_p2c"] == pytest.approx(0.97 / 0.75)
    assert t[1]["reachable"] is True  # 1.1 x 0.70 = 0.77 <= 0.97
    lines = cr.format_targets(t)
    assert lines[0].startswith("- UNREACHABLE") and lines[1].startswith("- MISSED")
    json.dumps(t)
    loaded.close()


@pytest.mark.parametrize(("argv", "msg"), [
    (["--nodes", "4", "--router", "p3c"], "unknown router 'p3c'"),
    (["--nodes", "4", "--node-speeds", "1,2"], "2 given for 4 nodes"),
    (["--nodes", "4", "--workers", "2"], "--workers-per-node"),
    (["--nodes", "4", "--policies", "orloj,fifo"], "the one whole-batch policy"),
    (["--nodes", "4", "--router-param", "orloj:colour=2"], "its parameters"),
    (["--nodes", "4", "--router-param", "p2c:x"], "KEY=VALUE"),
    (["--nodes", "4", "--state-age", "-1"], "--state-age must be >= 0"),
    (["--router", "p2c"], "give --nodes N too"),
    (["--state-age", "2"], "give --nodes N too"),
])  # fmt: skip
def test_cli_bad_flags(capsys, argv, msg):
    rc, _, err = run_cli(capsys, *argv)
    assert rc == 2 and msg in err, err


@pytest.mark.once
def test_bench_cluster_routing_harness(tmp_path):
    """bench/cluster_routing.py on a tiny sweep: its files, its JSON's rows, its targets
    (not run at these sizes, and said so)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "cr"
    cmd = [sys.executable, str(root / "bench/cluster_routing.py"), "--nodes", "2,4",
           "--arrivals", "poisson", "--state-ages", "0,2", "--routers", "p2c,orloj",
           "--requests", "150", "--jobs", "1", "--out", str(out), "--json"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    obj = json.loads(done.stdout)
    assert len(obj["rows"]) == 2 * 2 * 2 * 2  # nodes x speeds x ages x routers
    assert set(obj["rows"][0]) == {"nodes", "arrival", "speeds", "state_age", "router",
                                   "finish_rate"}  # fmt: skip
    assert {r["arrival"] for r in obj["rows"]} == {"poisson"}
    assert [t["met"] for t in obj["targets"]][:2] == [None, None]  # 64 nodes: not run
    # each cell's bound on policies without solo times: at most P(X <= S), above what
    # the routers finished
    assert len(obj["bounds"]) == 2 * 2  # nodes x speeds
    fr = {(r["nodes"], r["speeds"], r["router"]): r["finish_rate"] for r in obj["rows"]}
    for b in obj["bounds"]:
        assert 0 < b["law"] <= 1 and 0 < b["own"] <= 1
        assert max(fr[(b["nodes"], b["speeds"], r)] for r in ("p2c", "orloj")) <= b["law"] + 0.05
    for ext in ("md", "csv", "json", "png"):
        assert Path(f"{out}.{ext}").stat().st_size > 0, ext
    assert "[16/16" in done.stderr  # progress
    bad = subprocess.run(cmd[:2] + ["--speeds", "fast"], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "--speeds" in bad.stderr
