"""bench/cancel.py on a tiny run: two real servers, cancels under load, its JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.once  # engine-independent (tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]


def test_cancel_bench_runs_and_checks_its_targets():
    done = subprocess.run([sys.executable, str(ROOT / "bench/cancel.py"), "--requests", "150",
                           "--json"], capture_output=True, text=True, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert out["cancelled_sent"] == 45
    assert sum(out["cancel_results"].values()) == 45  # every cancel was answered
    assert out["statuses"]["lost"] == 0
    # one reply each; a request cancelled while queued never reached a worker
    assert out["targets"]["one_reply_each"] and out["targets"]["queued_cancels_never_ran"]
    assert out["statuses"]["cancelled"] == (out["cancel_results"]["queued"]
                                           + out["cancel_results"]["running"])
    assert set(out["targets"]) == {"one_reply_each", "queued_cancels_never_ran",
                                   "finish_not_worse"}
