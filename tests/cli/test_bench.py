"""`orloj-rt bench` against a live server (the light test models: noop and sleep)."""

from __future__ import annotations

import json

import pytest

from orloj_rt.cli.bench import is_local_endpoint

from ..runtime.helpers import run_cli, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("bench"), light=True) as s:
        yield s


def bench(server, *args: str, timeout: float = 120):
    return run_cli("bench", "--endpoint", server.endpoint, *args, timeout=timeout)


def test_json_output_parses_and_adds_up(server):
    r = bench(server, "--model", "noop", "--rate", "400", "--requests", "300", "--json",
              "--slo-ms", "500")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["model"] == "noop" and out["inputs"] == "generic" and out["slo_ms"] == 500
    assert out["requests"] == out["sent"] == 300
    assert sum(out["counts"].values()) == 300 and out["counts"]["lost"] == 0
    assert 0 <= out["finish_rate"] <= 1 and out["throughput"] > 0
    assert out["latency_ms"]["p50"] <= out["latency_ms"]["p99"]
    assert out["extra_replies"] == 0


def test_text_output_an_app_mix_and_gamma_arrivals(server):
    r = bench(server, "--model", "sleep", "--rate", "100", "--requests", "80",
              "--arrival", "gamma", "--arrival-cv", "2", "--app", "a", "--app", "b=3",
              "--input-param", "mean_ms=1", "--progress", "on")  # fmt: skip
    assert r.returncode == 0, r.stderr
    for word in ("throughput", "finish rate", "status", "p50", "p99", "app a", "app b"):
        assert word in r.stdout, r.stdout
    assert "sent 80/80" in r.stderr  # the progress bar


def test_trace_arrivals_and_a_time_bound(server, tmp_path):
    trace = tmp_path / "t.csv"
    rows = ["TIMESTAMP,ContextTokens,GeneratedTokens"] + [
        f"2023-11-16 18:15:{i // 10:02d}.{i % 10}000000,10,{i + 1}" for i in range(40)
    ]
    trace.write_text("\n".join(rows) + "\n")
    r = bench(server, "--model", "noop", "--trace", str(trace), "--requests", "30",
              "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["arrival"] == "trace" and out["sent"] == 30
    assert out["offered_rate"] == pytest.approx(10.0, rel=0.05)  # one row per 0.1 s
    # --max-duration stops the sending: the rest are reported unsent
    r = bench(server, "--model", "noop", "--rate", "20", "--requests", "1000",
              "--max-duration", "0.5", "--json")  # fmt: skip
    out = json.loads(r.stdout)
    assert 0 < out["sent"] < 100 and out["counts"]["unsent"] == 1000 - out["sent"]


def test_usage_errors(server):
    r = bench(server, "--model", "nope", "--rate", "10", timeout=60)
    assert r.returncode == 2 and "has no model 'nope'" in r.stderr
    r = bench(server, "--model", "noop", timeout=60)
    assert r.returncode == 2 and "give --rate" in r.stderr
    r = bench(server, "--model", "noop", "--rate", "10", "--inputs", "generate", timeout=60)
    assert r.returncode == 2 and "do not fit model 'noop'" in r.stderr


def test_refuses_remote_endpoints_unless_allowed():
    r = run_cli("bench", "--endpoint", "tcp://192.0.2.7:5555", "--model", "m", "--rate", "1",
                timeout=60)  # fmt: skip
    assert r.returncode == 2 and "--allow-remote" in r.stderr
    # allowed, it tries (and times out fast: nothing listens there)
    r = run_cli("bench", "--endpoint", "tcp://192.0.2.7:5555", "--model", "m", "--rate", "1",
                "--allow-remote", "--timeout", "0.5", timeout=60)  # fmt: skip
    assert r.returncode == 1 and "no reply" in r.stderr


@pytest.mark.parametrize(
    "endpoint, local",
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:1", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/orloj.sock", True),
        ("tcp://10.0.0.1:5555", False),
        ("tcp://example.com:5555", False),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://127.0.0.1;10.0.0.1:5555", False),
        ("udp://127.0.0.1:5555", False),
        ("127.0.0.1:5555", False),
    ],
)
def test_is_local_endpoint(endpoint, local):
    assert is_local_endpoint(endpoint) is local
