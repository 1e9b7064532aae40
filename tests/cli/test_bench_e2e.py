"""bench/e2e_finish_rate.py without servers: the same load for every policy, and the
verdicts it prints against the issue's targets. (The sweep itself runs for minutes; its
figures are in docs/results.md.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "e2e_finish_rate.py"


@pytest.fixture(scope="module")
def e2e():
    spec = importlib.util.spec_from_file_location("e2e_finish_rate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


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
