"""`orloj-rt status` against one live default server (no HTTP flags), which also shows
that the gateway is off by default: the server listens on its ZeroMQ port only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import psutil
import pytest

from orloj_rt.cli.status import render
from orloj_rt.client import Client
from tests.runtime.helpers import process_alive, run_cli, running_server

TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("status"), light=True) as s:
        yield s


def test_once_prints_one_table_of_every_model(server):
    with Client(server.endpoint, timeout_s=30) as c:
        for _ in range(3):
            assert c.infer("noop", {"x": np.zeros(4, np.float32)}).ok
        assert c.infer("noop", {"x": np.zeros(4, np.float32)}, slo_ms=0.001).status == "dropped"
    r = run_cli("status", "--endpoint", server.endpoint, "--once", timeout=TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"orloj-rt at {server.endpoint}: ok, workers 1/1 ready")
    header = next(line for line in lines if line.startswith("model"))
    for col in ("queued", "in flight", "answered", "finish", "recent", "dropped", "rejected"):
        assert col in header
    noop = next(line for line in lines if line.startswith("noop")).split()
    # model, queued, in flight, answered, finish, recent, dropped, rejected, errors
    assert noop[2:4] == ["0", "4"] and noop[4] == "75.0%" and noop[6] == "1"
    assert any(line.startswith("sleep") for line in lines)
    assert r.stdout.count("orloj-rt at") == 1


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("sigint", ["default", "ignored by the parent"])
def test_live_view_refreshes_until_ctrl_c(server, tmp_path, sigint):
    # "ignored by the parent": a background job of a non-interactive shell (as CI may run
    # us) starts with SIGINT ignored, and Python then installs no Ctrl-C handler; the view
    # slept on through Ctrl-C until it installed its own. stderr goes to a file (a pipe
    # nobody reads could fill and block the view), with faulthandler on, so that a view
    # that does not end can be made to say where it is stuck (SIGABRT) before the test fails
    err_path = tmp_path / "status.stderr"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-X", "faulthandler", "-m", "orloj_rt", "status", "--endpoint",
             server.endpoint, "--interval", "0.2"],
            stdout=subprocess.PIPE, stderr=err, text=True, start_new_session=True,
            preexec_fn=_ignore_sigint if sigint != "default" else None,
        )  # fmt: skip
    tables = threading.Semaphore(0)
    out: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            out.append(line)
            if line.startswith("orloj-rt at"):
                tables.release()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for _ in range(3):
            assert tables.acquire(timeout=TIMEOUT_S), "no refresh: " + "".join(out)
        proc.send_signal(signal.SIGINT)
        try:
            rc = proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            proc.wait(10)
            pytest.fail("the live view did not end on Ctrl-C; its stacks:\n"
                        + err_path.read_text()[-6000:])  # fmt: skip
        assert rc == 0, err_path.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    reader.join(10)
    assert "".join(out).count("orloj-rt at") >= 3


def test_no_server_is_exit_1_with_a_hint():
    r = run_cli("status", "--endpoint", "tcp://127.0.0.1:1", "--once", "--timeout", "0.3",
                timeout=TIMEOUT_S)  # fmt: skip
    assert r.returncode == 1 and "no server answers" in r.stderr


def test_recent_finish_rate_is_over_the_last_refresh():
    health = {"status": "ok", "workers": 2, "workers_ready": 2}
    before = {"models": {"m": {"ok": 10, "met_slo": 10, "dropped": 0, "rejected": 0,
                               "error": 0}}}  # fmt: skip
    now = {"policy": "orloj", "uptime_s": 5, "in_flight": 0,
           "models": {"m": {"ok": 14, "met_slo": 11, "dropped": 6, "rejected": 0, "error": 0,
                            "in_flight": 0, "scheduler": {"queued": 2}}}}  # fmt: skip
    table = render("E", health, now, before)
    row = next(line for line in table.splitlines() if line.startswith("m ")).split()
    assert row[1] == "2" and row[3] == "20"
    assert row[4] == "55.0%" and row[5] == "10.0%"  # 11/20 overall; 1/10 since the last
    assert "workers 2/2 ready" in table


def test_the_gateway_is_off_by_default(server):
    """A server started without --http-port / --metrics-port runs no gateway process and
    listens on nothing but its ZeroMQ endpoint."""
    procs = [psutil.Process(server.pid), *[p for p in server.children if process_alive(p.pid)]]
    listening = []
    for p in procs:
        try:  # psutil < 6 calls it connections()
            conns = (getattr(p, "net_connections", None) or p.connections)(kind="inet")
        except psutil.Error:
            continue
        listening += [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
    zmq_port = int(server.endpoint.rsplit(":", 1)[1])
    assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", zmq_port)]
    titles = " ".join(" ".join(p.cmdline()) for p in procs if process_alive(p.pid))
    assert "gateway" not in titles
    with Client(server.endpoint, timeout_s=30) as c:
        assert c.health()["status"] == "ok"
