"""bench/finish_rate.py on a tiny sweep: its files, and its summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_writes_table_csv_plots_and_summary(tmp_path):
    out = tmp_path / "fr"
    cmd = [sys.executable, str(ROOT / "bench/finish_rate.py"), "--out", str(out),
           "--workloads", "static,lognormal", "--slos", "2,5", "--loads", "2",
           "--requests", "150", "--jobs", "2", "--hint-cv", "0.3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("results.csv", "results.md", "summary.md", "results.json",
                 "finish_rate.png", "finish_rate_lognormal.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "results.json").read_text())
    assert len(result["cells"]) == 4
    lognormal = result["summary"]["lognormal"]
    assert set(lognormal["orloj"]) == {"geomean_vs_best", "min_vs_best", "geomean_vs_oracle",
                                       "geomean_vs_sjf", "min_vs_sjf"}
    assert "orloj+hint" in lognormal and "sjf-hint" in lognormal  # with --hint-cv
    assert lognormal["orloj+hint"]["geomean_vs_sjf"] > 0
    assert "geomean" in done.stdout and "NOTE" in done.stdout  # too few requests for targets
    assert "orloj+hint / sjf-hint geomean >= 1.15" in done.stdout  # issue 15's targets
    # the bound on policies that know the hints, in every summary cell (all four here)
    assert all(0 < c["hint_bound"] <= 1 for c in result["cells"])
    assert lognormal["hint_bound_vs_best"] > 0
    assert lognormal["orloj+hint"]["geomean_vs_hint_bound"] > 0
    assert "geomean_vs_hint_bound" not in lognormal["orloj"]  # orloj has no hints
    assert "the hint bound allows" in done.stdout
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 8  # orloj, orloj+hint, sjf-hint, 4 baselines, oracle


def test_with_hints_the_encoder_workload_joins_the_sweep(tmp_path):
    out = tmp_path / "fr_enc"
    cmd = [sys.executable, str(ROOT / "bench/finish_rate.py"), "--out", str(out),
           "--slos", "3", "--loads", "2", "--requests", "150", "--jobs", "2",
           "--hint-cv", "0.6", "--no-multi-app"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "results.json").read_text())
    assert [c["workload"] for c in result["cells"]] == ["static", "bimodal", "lognormal",
                                                        "azure-conv", "encoder"]
    assert "encoder" in result["summary"]
    # the hint bound needs the hint's noise law: not for the encoder's exact length
    assert [c["hint_bound"] is None for c in result["cells"]] == [False] * 4 + [True]
    assert "hint_bound_vs_best" not in result["summary"]["encoder"]


def test_step_section(tmp_path):
    out = tmp_path / "fr_step"
    cmd = [sys.executable, str(ROOT / "bench/finish_rate.py"), "--out", str(out),
           "--batching", "step", "--workloads", "lognormal", "--slos", "2,5",
           "--loads", "2,8", "--requests", "150", "--jobs", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in ("results.csv", "results.md", "summary.md", "results.json",
                 "finish_rate.png", "finish_rate_lognormal.png"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "results.json").read_text())
    assert len(result["cells"]) == 4
    row = result["summary"]["lognormal"]
    assert {"geomean_vs_best", "min_vs_best", "cells_below_oracle"} <= set(row["orloj-step"])
    assert {"geomean_vs_fcfs", "min_vs_fcfs", "cells_below_fcfs"} <= set(row["overload"])
    assert "orloj-step / best whole-batch baseline" in done.stdout
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 10  # orloj, 4 baselines, oracle, 3 step policies, oracle-step
