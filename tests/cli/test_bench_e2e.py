"""bench/e2e_finish_rate.py without servers: the same load for every policy, and the
verdicts it prints against the issue's targets. (The sweep itself runs for minutes; its
figures are in docs/results.md.)"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from ..bench_module import BENCH, bench_module

pytestmark = pytest.mark.once  # engine-independent (tests/conftest.py)

SCRIPT = BENCH / "e2e_finish_rate.py"


@pytest.fixture(scope="module")
def e2e():
    yield from bench_module("e2e_finish_rate.py", "e2e_finish_rate")


def test_every_policy_gets_the_same_seeded_load(e2e):
    trace = {"GeneratedTokens": np.array([8.0, 80.0, 400.0, 1000.0])}
    a = e2e.workload("generate", 50, 40.0, 200.0, 0, trace)
    b = e2e.workload("generate", 50, 40.0, 200.0, 0, trace)
    assert a[1] == b[1] and a[2] == b[2]
    assert all((x["inputs"]["prompt"] == y["inputs"]["prompt"]).all()
               for x, y in zip(a[0], b[0], strict=True))  # fmt: skip
    assert set(a[2]) <= {1, 10, 50, 125}  # lengths from the trace column, / 8
    c = e2e.workload("generate", 50, 60.0, 200.0, 0, trace)
    assert c[1] != a[1]  # another cell, another draw
    ee = e2e.workload("early_exit", 2000, 300.0, 25.0, 0, None)
    assert set(ee[2]) == {2, 12}
    assert all(r["slo_ms"] == 25.0 and r["app"] == e2e.APP for r in ee[0])


def test_verdicts(e2e):
    def rows(cell, **rates):
        return [{"model": "m", "slo_ms": cell, "rate": 1.0, "policy": p, "finish_rate": f,
                 "scheduler_cpu": 0.05} for p, f in rates.items()]  # fmt: skip

    data = (rows(10, orloj=0.6, fifo=0.35, edf=0.5, nexus=0.6, clockwork=0.1)  # met
            + rows(20, orloj=0.6, fifo=0.45, edf=0.5, nexus=0.3, clockwork=0.1)  # < 1.5x
            + rows(30, orloj=0.6, fifo=0.3, edf=0.65, nexus=0.3, clockwork=0.1)  # < edf
            + rows(40, orloj=0.9, fifo=0.8, edf=0.5, nexus=0.3, clockwork=0.1))  # out of band
    lines, verdicts = e2e.cell_table(data, list(e2e.POLICIES))
    assert [v["met"] for v in verdicts] == [True, False, False, None]
    assert [v["in_fifo_band"] for v in verdicts] == [True, True, True, False]
    assert len(lines) == 2 + 4 and "**met**" in lines[2] and "**missed**" in lines[3]
    assert e2e.cpu_verdict(data) == {"m": {"rate": 1.0, "max_scheduler_cpu": 0.05, "met": True}}


def test_model_check_simulates_the_sweep_from_measured_models(tmp_path):
    """bench/e2e_model_check.py for real: profiles early_exit here, times requests solo,
    and simulates the sweep's cells with what it measured."""
    import json
    import subprocess

    script = SCRIPT.parent / "e2e_model_check.py"
    r = subprocess.run([sys.executable, str(script), "--models", "early_exit", "--samples",
                        "30", "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    m = out["models"]["early_exit"]
    assert m["inflation"][0] == 1.0 and m["inflation"][-1] > 1.0 and m["mean_solo_ms"] > 0
    rows = out["rows"]
    assert len(rows) == 9  # 3 loads x 3 SLO multiples
    for row in rows:
        assert all(0.0 <= row[p] <= 1.0 for p in ("orloj", "fifo", "oracle", "bound"))
    overloaded = [row for row in rows if row["load"] == 1.5]
    # fifo serves the late first and collapses; nothing that cannot see solo times beats
    # the bound by more than one run's noise
    assert all(row["orloj"] > 2 * row["fifo"] for row in overloaded)
    assert all(row["orloj"] <= row["bound"] + 0.05 for row in overloaded)


def test_model_check_simulates_the_hinted_cells(tmp_path):
    """bench/e2e_model_check.py --hints for real: seq_encoder profiled and timed here, its
    derived (exact length) hints given to orloj and sjf-hint, every hinted cell simulated;
    under the heaviest load the hints pay (orloj with them finishes more than without)."""
    import json
    import subprocess

    script = SCRIPT.parent / "e2e_model_check.py"
    r = subprocess.run([sys.executable, str(script), "--hints", "--models", "seq_encoder",
                        "--samples", "40", "--json"], capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert len(rows) == 9 and {row["hints"] for row in rows} == {"derived"}
    for row in rows:
        assert all(0.0 <= row[p] <= 1.0 for p in ("orloj", "orloj-nohint", "sjf-hint",
                                                   "fifo", "nexus", "clockwork", "oracle"))
        assert row["orloj_vs_sjf"] == pytest.approx(row["orloj"] / row["sjf-hint"])
        assert row["target"] in ("**met**", "**missed**", "fifo outside 20-60%")
    heavy = next(row for row in rows if row["load"] == 1.5 and row["slo_mult"] == 3.0)
    assert heavy["orloj"] > heavy["orloj-nohint"]
    bad = subprocess.run([sys.executable, str(script), "--hints", "--models", "early_exit"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "seq_encoder, generate" in bad.stderr  # no hints there
    for wrong, says in ((["--loads", "2"], "--loads is for --hints"),
                        (["--hints", "--loads", "2,x"], "comma-separated numbers"),
                        (["--hints", "--loads", "0"], "must be > 0")):
        bad = subprocess.run([sys.executable, str(script), *wrong], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert bad.returncode == 2 and says in bad.stderr, wrong


def test_hint_workloads_are_seeded_and_noisy_as_stated(e2e):
    """--hints: generate's client hints are the true length x LogNormal(mean 1, CoV 0.6)
    noise from a stream of their own (the same for every policy); seq_encoder and
    early_exit requests carry none (the server derives seq_encoder's)."""
    trace = {"GeneratedTokens": np.array([8.0, 80.0, 400.0, 1000.0]),
             "ContextTokens": np.array([16.0, 400.0, 1600.0, 5000.0])}  # fmt: skip
    a = e2e.workload("generate", 200, 40.0, 200.0, 0, trace, "client")
    b = e2e.workload("generate", 200, 40.0, 200.0, 0, trace, "client")
    plain = e2e.workload("generate", 200, 40.0, 200.0, 0, trace)
    hints = np.array([r["hint"] for r in a[0]])
    assert hints.tolist() == [r["hint"] for r in b[0]]
    assert a[1] == plain[1] and a[2] == plain[2]  # the noise leaves the load as it was
    assert "hint" not in plain[0][0]
    noise = hints / np.array(a[2])
    assert len(set(noise.round(9))) == 200  # one independent factor per request
    big = e2e.hint_noise(200_000, [0, 1, 2])
    assert abs(big.mean() - 1) < 0.01 and abs(big.std() / big.mean() - 0.6) < 0.02
    seq = e2e.workload("seq_encoder", 300, 300.0, 10.0, 0, trace, "derived")
    assert all("hint" not in r for r in seq[0])
    assert set(seq[2]) <= {1, 25, 100, 256}  # ContextTokens / 16, clipped to 256
    assert len(set(seq[2])) == 4
    ee = e2e.workload("early_exit", 50, 300.0, 25.0, 0, None, None)
    assert all("hint" not in r for r in ee[0])


def test_hint_verdicts(e2e):
    def rows(model, cell, hints, **rates):
        return [{"model": model, "slo_ms": cell, "rate": 1.0, "policy": p, "finish_rate": f,
                 "scheduler_cpu": 0.05, "load": 1.0, "slo_mult": cell / 10,
                 "mean_solo_ms": 10.0, "hints": hints,
                 "counts": {"ok": 400, "dropped": 600}} for p, f in rates.items()]  # fmt: skip

    base = {"orloj-nohint": 0.4, "nexus": 0.3, "clockwork": 0.2}
    data = (rows("generate", 30, "client", orloj=0.8, sjf_hint=0.7, fifo=0.4, **base)  # met
            + rows("generate", 40, "client", orloj=0.8, sjf_hint=0.75, fifo=0.4, **base)
            + rows("generate", 50, "client", orloj=0.9, sjf_hint=0.7, fifo=0.7, **base)
            + rows("early_exit", 30, "none", orloj=0.58, fifo=0.3, sjf_hint=0.5, **base)
            + rows("early_exit", 40, "none", orloj=0.30, fifo=0.3, sjf_hint=0.5, **base))
    for r in data:
        r["policy"] = r["policy"].replace("_", "-")
    lines, verdicts = e2e.hint_table(data, list(e2e.HINT_POLICIES))
    assert [v["target"] for v in verdicts] == ["hints", "hints", None, "control", "control"]
    assert [v["met"] for v in verdicts] == [True, False, None, True, False]
    assert verdicts[1]["checks"] == {"vs_fifo": True, "vs_nexus_clockwork": True,
                                     "vs_sjf_hint": False}  # 0.8 < 1.1 x 0.75
    assert verdicts[3]["tolerance"] == pytest.approx(2 * np.sqrt(0.58 * 0.42 / 1000
                                                                 + 0.4 * 0.6 / 1000))
    assert sum("### generate" in x or "### early_exit" in x for x in lines) == 2
    text = "\n".join(e2e.hint_verdict_lines(verdicts))
    assert "in 1 of them" in text and "in 1 of 2 cells" in text
    assert [v.get("verdict") for v in verdicts[:2]] == ["met", "missed"]


def test_a_hint_check_that_asks_for_more_than_every_request_is_unreachable(e2e, tmp_path):
    """1.1 x sjf-hint's 0.95 is 1.045: no policy finishes more than every request, so a
    cell that asks for it is out of reach, whatever else it misses (its target is all
    three checks); one that misses only checks in reach is missed. --render-from writes
    the verdicts again from a run's results.json."""
    def rows(cell, orloj, sjf):
        rates = {"orloj": orloj, "sjf-hint": sjf, "fifo": 0.4, "nexus": 0.5,
                 "clockwork": 0.5, "orloj-nohint": 0.5}  # fmt: skip
        return [{"model": "generate", "slo_ms": cell, "rate": 1.0, "policy": p,
                 "finish_rate": f, "scheduler_cpu": 0.05, "load": 1.0, "slo_mult": 3.0,
                 "mean_solo_ms": 10.0, "hints": "client",
                 "counts": {"ok": 400, "dropped": 600}} for p, f in rates.items()]  # fmt: skip

    data = rows(30, 0.96, 0.95) + rows(40, 0.70, 0.95) + rows(50, 0.70, 0.80)
    _, verdicts = e2e.hint_table(data, list(e2e.HINT_POLICIES))
    assert [v["verdict"] for v in verdicts] == ["unreachable", "unreachable", "missed"]
    assert verdicts[0]["unreachable"] == ["vs_sjf_hint"]
    assert verdicts[0]["needs"]["vs_sjf_hint"] == pytest.approx(1.045)
    saved = tmp_path / "results.json"
    saved.write_text(json.dumps({"mode": "hints", "details": data, "cells": [],
                                 "command": "python bench/e2e_finish_rate.py --hints",
                                 "elapsed_s": 1.0}))  # fmt: skip
    assert e2e.render_from(saved) == 0
    assert json.loads(saved.read_text())["cells"][0]["verdict"] == "unreachable"
    md = (tmp_path / "results.md").read_text()
    assert "| **unreachable**: vs_sjf_hint needs 1.04 > 1 |" in md
    assert ("**unreachable**: vs_sjf_hint needs 1.04 > 1; missed in reach: vs_fifo, "
            "vs_nexus_clockwork |") in md
    assert "| **missed**; missed in reach: vs_fifo, vs_nexus_clockwork, vs_sjf_hint |" in md


def test_a_cells_reach_counts_the_requests_whose_floor_is_within_the_slo(e2e):
    floors = [(1, 0.0), (128, 2.0), (129, 9.0), (256, 9.5)]  # as probe_floors gives them
    # work 100 has the floor of work 1 (the largest probed at or below it), 200 that of 129
    assert e2e.reach_of(floors, [1, 100, 129, 200, 256], 5.0) == pytest.approx(2 / 5)
    assert e2e.reach_of(floors, [1, 100, 129, 200, 256], 9.5) == 1.0
    assert e2e.reach_of(None, [1, 2], 5.0) is None


def test_a_hint_check_that_asks_for_more_than_the_cells_reach_is_unreachable(e2e):
    """1.1 x sjf-hint's 0.78 is 0.858: more than the 0.85 of the cell's requests whose
    latency floor is within the SLO, so no policy can meet it; 2x fifo (0.8) is in reach
    and met."""
    rates = {"orloj": 0.80, "sjf-hint": 0.78, "fifo": 0.4, "nexus": 0.5, "clockwork": 0.5,
             "orloj-nohint": 0.5}  # fmt: skip
    data = [{"model": "seq_encoder", "slo_ms": 30, "rate": 1.0, "policy": p,
             "finish_rate": f, "scheduler_cpu": 0.05, "load": 1.0, "slo_mult": 3.0,
             "mean_solo_ms": 10.0, "hints": "derived", "reach": 0.85,
             "counts": {"ok": 400, "dropped": 600}} for p, f in rates.items()]  # fmt: skip
    lines, verdicts = e2e.hint_table(data, list(e2e.HINT_POLICIES))
    (v,) = verdicts
    assert v["reach"] == 0.85 and v["unreachable"] == ["vs_sjf_hint"]
    assert v["checks"]["vs_fifo"] and v["verdict"] == "unreachable"
    assert "**unreachable**: vs_sjf_hint needs 0.86 > 0.85 |" in "\n".join(lines)
    assert "needs 0.858 > 0.850" in "\n".join(e2e.hint_verdict_lines(verdicts))


def test_hints_run_end_to_end(tmp_path):
    """`--hints` for real on one tiny generate cell: client hints reach orloj's scheduler,
    which fits hint classes and learns each one's mean solo time; orloj-nohint has none."""
    import json
    import subprocess

    r = subprocess.run([sys.executable, str(SCRIPT), "--hints", "--models", "generate",
                        "--policies", "orloj,orloj-nohint,fifo", "--requests", "30",
                        "--warmup", "70", "--slos", "400", "--rates", "15", "--json",
                        "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["mode"] == "hints"
    assert out == json.loads((tmp_path / "results.json").read_text())
    assert "### generate" in (tmp_path / "results.md").read_text()
    assert {row["policy"] for row in out["rows"]} == {"orloj", "orloj-nohint", "fifo"}
    assert all(0.0 <= row["finish_rate"] <= 1.0 for row in out["rows"])
    (cell,) = out["cells"]
    assert cell["hints"] == "client"
    assert set(cell["finish_rates"]) == {"orloj", "orloj-nohint", "fifo"}
    # the fifo server was probed alone after the warm-up: floors in increasing work, the
    # smallest work's 0, and the cell's reach a share of its requests at least every
    # policy's finish rate
    floors = out["details"][0]["latency_floors_ms"]
    works = [w for w, _ in floors]
    assert works == sorted(works) and len(works) >= 2 and floors[0][1] == 0.0
    assert [f for _, f in floors] == sorted(f for _, f in floors)
    assert max(cell["finish_rates"].values()) <= cell["reach"] <= 1.0
    own, none = cell["hint_stats"]["orloj"], cell["hint_stats"]["orloj-nohint"]
    assert own["hints_seen"] == 100 and own["fits"] >= 1  # the warm-up's 70 + the cell's 30
    assert 2 <= own["classes"] <= 8 and len(own["edges"]) == own["classes"] - 1
    assert own["class_mean_solo_ms"] and all(v > 0 for v in own["class_mean_solo_ms"].values())
    assert none["hints_seen"] == 0 and none["classes"] == 0
