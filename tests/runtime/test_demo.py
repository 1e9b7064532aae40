"""`orloj-rt demo`, shortened: it serves, drives load, prints the table, shuts down."""

from __future__ import annotations

from .helpers import run_cli


def test_demo_runs_and_prints_the_table():
    r = run_cli("demo", "--requests", "150", "--rate", "150", "--policy", "orloj", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    header = next(line for line in lines if line.startswith("policy"))
    for col in ("finish rate", "ok", "dropped", "rejected", "error", "p50 ms", "p99 ms"):
        assert col in header
    row = next(line for line in lines if line.startswith("orloj "))
    fields = row.split()
    assert fields[1].endswith("%") and int(fields[2]) + int(fields[3]) + int(fields[4]) == 150
    assert "every server shut down cleanly" in r.stdout


def test_demo_rejects_an_unknown_policy():
    r = run_cli("demo", "--policy", "nope", timeout=60)
    assert r.returncode == 2 and "unknown policy nope" in r.stderr
