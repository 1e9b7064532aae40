"""bench/gpu_check.py where there is no CUDA (this project's CI): it says so and exits 0;
`--gpus all` is a clear start-up error there. Where CUDA is available the check itself
is the test: run it by hand (docs/results.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.runtime.helpers import run_cli

pytestmark = pytest.mark.once  # engine-independent (tests/conftest.py)

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


@pytest.fixture(scope="module")
def no_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: run bench/gpu_check.py itself")


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_without_cuda_it_says_so_and_exits_0(no_cuda):
    r = run_script()
    assert r.returncode == 0, r.stderr
    assert "CUDA is not available here" in r.stdout and "nothing to check" in r.stdout
    r = run_script("--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["cuda"] is False and out["failures"] == [] and "CUDA" in out["message"]


def test_gpus_all_without_cuda_exits_2_and_suggests_cpu_workers(no_cuda):
    r = run_cli("start", "--gpus", "all")
    assert r.returncode == 2
    assert "--gpus all: CUDA is not available" in r.stderr and "--cpu-workers" in r.stderr
    assert "Traceback" not in r.stderr


def test_dry_run_on_the_cpu_checks_the_harness():
    """`--device cpu` runs both steps for a small model: outputs compared per bucket, a
    live server loaded, every reply accounted for."""
    r = run_script("--device", "cpu", "--models", "tiny_mlp", "--requests", "100",
                   "--seconds", "5", "--reps", "2", "--json")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    res = out["models"]["tiny_mlp"]
    assert out["failures"] == [] and res["ok"]
    buckets = res["in_process"]["buckets"]
    assert buckets and all(row["same"] for row in buckets.values())
    server = res["server"]
    assert server["counts"]["lost"] == 0 and server["counts"]["error"] == 0
    assert sum(row["replies"] for row in server["latency_by_bucket"].values()) == \
        server["counts"]["ok"] > 0


def test_an_unknown_model_is_a_clear_error():
    r = run_script("--device", "cpu", "--models", "no_such_model")
    assert r.returncode == 2 and "no_such_model: no such built-in model" in r.stderr
