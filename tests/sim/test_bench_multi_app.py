"""bench/finish_rate.py's multi-app panel on a tiny sweep."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import finish_rate  # noqa: E402


def test_the_panel_is_in_the_table_the_csv_and_the_json(tmp_path):
    out = tmp_path / "fr"
    cmd = [sys.executable, str(ROOT / "bench/finish_rate.py"), "--out", str(out),
           "--workloads", "static", "--slos", "2", "--loads", "2", "--requests", "200",
           "--jobs", "2", "--policies", "orloj,fifo,edf"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    mixes, loads = finish_rate.MULTI_APP_MIXES, finish_rate.MULTI_APP_LOADS
    result = json.loads((out / "results.json").read_text())
    panel = result["multi_app"]
    assert panel["max_batch"] == finish_rate.MULTI_APP_MAX_BATCH
    assert [(c["mix"], c["load"]) for c in panel["cells"]] == [(m, ld) for m in mixes
                                                                for ld in loads]
    for c in panel["cells"]:
        names = [a["name"] for a in c["app_mix"]]
        assert list(c["policies"]) == ["orloj", "fifo", "edf"]
        for m in c["policies"].values():
            assert list(m["apps"]) == names
            assert sum(a["requests"] for a in m["apps"].values()) == 200
    # edf and fifo part ways somewhere in the panel: different SLOs, different orders
    assert any(c["policies"]["edf"]["apps"] != c["policies"]["fifo"]["apps"]
               for c in panel["cells"])
    assert "Multi-app cells" in done.stdout and "edf - fifo" in done.stdout
    assert "## Multi-app cells" in (out / "results.md").read_text()
    rows = list(csv.DictReader((out / "multi_app.csv").read_text().splitlines()))
    apps = sum(len(c["app_mix"]) + 1 for c in panel["cells"])  # each app, and "all"
    assert len(rows) == apps * 3
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 3  # unchanged


def test_no_multi_app_skips_it(tmp_path):
    out = tmp_path / "fr"
    cmd = [sys.executable, str(ROOT / "bench/finish_rate.py"), "--out", str(out),
           "--workloads", "static", "--slos", "2", "--loads", "2", "--requests", "100",
           "--jobs", "1", "--policies", "orloj,fifo", "--no-multi-app"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "multi_app" not in json.loads((out / "results.json").read_text())
    assert not (out / "multi_app.csv").exists()
