"""The load generator's pieces: arrival processes, traces, summaries (no server)."""

from __future__ import annotations

import numpy as np
import pytest

from orloj_rt.client.loadgen import (
    LoadReport,
    Outcome,
    arrival_times,
    read_trace,
    summarize,
    trace_arrival_times,
)

SEED = 3


@pytest.mark.parametrize("process, cv", [("poisson", 1.0), ("gamma", 0.5), ("gamma", 2.0)])
def test_arrival_processes_have_their_rate_and_cv(process, cv):
    rng = np.random.default_rng(SEED)
    t = arrival_times(40_000, 250.0, rng, process, cv)
    gaps = np.diff(t)
    assert t[0] == 0 and np.all(gaps >= 0)
    assert 1 / gaps.mean() == pytest.approx(250.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)


def test_arrival_errors():
    rng = np.random.default_rng(SEED)
    with pytest.raises(ValueError, match="rate"):
        arrival_times(3, 0.0, rng)
    with pytest.raises(ValueError, match="poisson or gamma"):
        arrival_times(3, 1.0, rng, "uniform")


def test_read_trace_parses_azure_timestamps(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("TIMESTAMP,GeneratedTokens\n2023-11-16 18:15:46.6805900,44\n"
                 "2023-11-16 18:15:50.9951690,109\n2023-11-16 18:15:51.2224670,55\n")
    tr = read_trace(str(p))
    assert tr["GeneratedTokens"].tolist() == [44, 109, 55]
    assert np.diff(tr["TIMESTAMP"]) == pytest.approx([4.314579, 0.227298], abs=1e-5)
    with pytest.raises(ValueError, match="no column"):
        read_trace(str(p), ["ContextTokens"])


def test_trace_arrivals_keep_the_gaps_and_rescale():
    ts = np.array([0.0, 1.0, 3.0, 6.0])  # gaps 1, 2, 3: mean 2
    assert trace_arrival_times(ts, 4).tolist() == [0, 1, 3, 6]
    assert trace_arrival_times(ts, 5, start=1).tolist() == [0, 2, 5, 6, 8]  # wraps around
    assert trace_arrival_times(ts, 4, rate=2.0).tolist() == [0, 0.25, 0.75, 1.5]


def test_summarize_counts_and_apps():
    outs = [Outcome("ok", 0.010, True, batch_size=2), Outcome("ok", 0.030, False, batch_size=4),
            Outcome("dropped"), Outcome("unsent")]  # fmt: skip
    s = summarize(LoadReport(outs, 2.0), ["a", "a", "b", "b"])
    assert s["sent"] == 3 and s["finish_rate"] == pytest.approx(1 / 3)
    assert s["counts"] == {"ok": 2, "dropped": 1, "rejected": 0, "error": 0, "lost": 0,
                           "unsent": 1}  # fmt: skip
    assert s["throughput"] == 1.0 and s["goodput"] == 0.5 and s["late"] == 1
    assert s["latency_ms"]["p50"] == pytest.approx(30.0) and s["mean_batch"] == 3.0
    assert s["apps"]["a"]["finish_rate"] == 0.5 and s["apps"]["b"]["sent"] == 1
