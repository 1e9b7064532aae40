"""`orloj-rt sim`: the table, the JSON object, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from orloj_rt.cli import main

FIELDS = {"finish_rate", "completed", "late", "dropped", "rejected", "p50_latency",
          "p99_latency"}
ARGS = ["sim", "--workload", "bimodal", "--slo-mult", "3", "--load", "2", "--requests", "200",
        "--prior-samples", "2000", "--seed", "4"]


def test_json_has_every_field(capsys):
    assert main(ARGS + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"config", "policies"}
    assert out["config"]["solo"] == "bimodal" and out["config"]["slo"] == 3.0
    assert list(out["policies"]) == ["orloj", "fifo", "edf", "nexus", "clockwork", "oracle"]
    for m in out["policies"].values():
        assert set(m) >= FIELDS
        assert m["completed"] + m["dropped"] + m["rejected"] == 200


def test_same_seed_same_json(capsys):
    main(ARGS + ["--json", "--policies", "orloj,nexus"])
    first = capsys.readouterr().out
    main(ARGS + ["--json", "--policies", "orloj,nexus"])
    assert capsys.readouterr().out == first


def test_table(capsys):
    assert main(ARGS + ["--policies", "orloj,edf"]) == 0
    out = capsys.readouterr().out
    assert "finish" in out and "\norloj" in out and "\nedf" in out


def test_errors_exit_2(capsys):
    assert main(ARGS + ["--policies", "lifo"]) == 2
    assert "unknown policy 'lifo'" in capsys.readouterr().err
    assert main(ARGS + ["--policies", "orloj+hint"]) == 2
    assert "--hint-cv" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sim", "--workload", "bimodal", "--slo-mult", "-1", "--load", "2"])


def test_the_installed_command_runs():
    cmd = [sys.executable, "-m", "orloj_rt"] + ARGS + ["--json", "--policies", "edf"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout)["policies"]["edf"]["completed"] >= 0


def test_step_batching_json_parses_with_the_new_options(capsys):
    assert main(ARGS + ["--json", "--batching", "step", "--step", "0.2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["batching"] == "step" and out["config"]["step"] == 0.2
    assert list(out["policies"]) == ["orloj", "oracle", "fcfs-step", "edf-step", "orloj-step"]
    for m in out["policies"].values():
        assert set(m) >= FIELDS | {"ended"}
        assert m["completed"] + m["dropped"] + m["rejected"] == 200
    assert main(ARGS + ["--batching", "step", "--policies", "orloj-step,fcfs-step"]) == 0
    table = capsys.readouterr().out
    assert "batching=step step=0.1" in table and "\norloj-step" in table and "ended" in table


def test_step_policies_need_step_batching(capsys):
    assert main(ARGS + ["--policies", "orloj-step"]) == 2
    assert "--batching step" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(ARGS + ["--batching", "step", "--step", "0"])
