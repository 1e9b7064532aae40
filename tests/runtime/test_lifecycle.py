"""Starting and stopping: clean shutdown leaves nothing, stale segments go, bad starts are
explained, a crashed worker is restarted with every request answered."""

from __future__ import annotations

import importlib.util
import os
import signal
import time

import numpy as np
import psutil
import pytest

from orloj_rt.client import Client
from orloj_rt.client.codec import encode_infer
from orloj_rt.runtime.shm_ring import RingLayout, ShmRing, segment_name

from .helpers import (
    RawDealer,
    instance_segments,
    light_repo,
    process_alive,
    run_cli,
    running_server,
)


def test_clean_shutdown_leaves_no_process_and_no_segment(tmp_path):
    with running_server(tmp_path, light=True) as server:
        pids = server.child_pids
        assert len(pids) >= 3  # frontend, scheduler, worker (+ multiprocessing's tracker)
        if importlib.util.find_spec("setproctitle") is not None:  # it names the roles
            titles = " ".join(" ".join(psutil.Process(p).cmdline()) for p in pids)
            for role in ("frontend", "scheduler", "worker-0"):
                assert f"orloj-rt: {role}" in titles
        assert instance_segments(server.pid), "a running instance has its rings in /dev/shm"
        with Client(server.endpoint, timeout_s=30) as c:
            assert c.infer("noop", {"x": np.zeros(4, np.float32)}).ok
    # running_server asserted exit code 0, no process and no segment left; check again
    assert server.returncode == 0
    assert not [p for p in pids if process_alive(p)]
    assert not instance_segments(server.pid)


def test_sigint_shuts_down_cleanly_too(tmp_path):
    with running_server(tmp_path, light=True) as server:
        server.stop(signal.SIGINT)
        assert server.returncode == 0


def test_in_flight_requests_are_answered_at_shutdown(tmp_path):
    """Three slow requests in flight, then SIGTERM with a short drain: each gets exactly
    one answer (ok if it finished in time, else rejected)."""
    with running_server(tmp_path, "--drain-timeout", "0.2", light=True) as server, \
            RawDealer(server.endpoint) as d:  # fmt: skip
        for i in range(3):
            d.send(encode_infer(i, "sleep", {"ms": np.array(300, np.float32)}))
        time.sleep(0.1)
        server.proc.send_signal(signal.SIGTERM)
        replies = {}
        while len(replies) < 3:
            h, _ = d.recv(timeout_s=20)
            assert h["id"] not in replies
            replies[h["id"]] = h
        assert d.quiet(0.3)
        assert {h["status"] for h in replies.values()} <= {"ok", "rejected"}
        rejected = [h for h in replies.values() if h["status"] == "rejected"]
        assert rejected and all("shutting down" in h["error"] for h in rejected)


def test_stale_segments_of_a_killed_instance_are_removed_at_start(tmp_path):
    # a segment named for an instance that is not running (pid 1 never has this start time)
    stale = segment_name("1-42", 0)
    from orloj_rt.models.builtin import BUILTIN_MODELS

    ring = ShmRing.create(stale, RingLayout.from_spec(BUILTIN_MODELS["noop"].spec, 4))
    ring.close()  # no unlink: as if its creator had been killed
    assert os.path.exists(f"/dev/shm/{stale}")
    try:
        with running_server(tmp_path, light=True):
            assert not os.path.exists(f"/dev/shm/{stale}")
        assert "removed stale shared-memory segment" in "".join(
            p.read_text() for p in tmp_path.glob("server-*.log")
        )
    finally:
        if os.path.exists(f"/dev/shm/{stale}"):
            os.unlink(f"/dev/shm/{stale}")


def test_a_killed_worker_is_restarted_and_every_request_is_answered(tmp_path):
    """(More in test_reliability.py.) The request the worker was running is re-queued
    once and served by its restart; the instance serves on and stops cleanly."""
    with running_server(tmp_path, light=True) as server, RawDealer(server.endpoint) as d:
        with Client(server.endpoint, timeout_s=10) as c:
            worker_pid = c.health()["pids"]["workers"][0]
        for i in range(3):
            d.send(encode_infer(i, "sleep", {"ms": np.array(500, np.float32)}))
        time.sleep(0.2)
        os.kill(worker_pid, signal.SIGKILL)
        replies = {}
        while len(replies) < 3:
            h, _ = d.recv(timeout_s=30)
            assert h["id"] not in replies
            replies[h["id"]] = h
        assert all(h["status"] == "ok" for h in replies.values()), replies
        with Client(server.endpoint, timeout_s=10) as c:
            h = c.health()
        assert h["workers_ready"] == 1 and h["pids"]["workers"][0] not in (0, worker_pid)
    assert server.returncode == 0


def test_gpus_without_cuda_exits_2_and_suggests_cpu_workers():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    r = run_cli("start", "--gpus", "0")
    assert r.returncode == 2
    assert "--cpu-workers" in r.stderr and "Traceback" not in r.stderr


def test_start_help_documents_every_option():
    r = run_cli("start", "--help")
    assert r.returncode == 0
    for option in ("--gpus", "--cpu-workers", "--models", "--bind", "--policy", "--log-level",
                   "--worker-threads", "--ready-timeout", "--drain-timeout",
                   "--hang-timeout"):  # fmt: skip
        assert option in r.stdout
    from orloj_rt.policies import POLICIES

    for name in POLICIES:
        assert name in r.stdout


@pytest.mark.parametrize("value", ["-1", "nan"])
def test_a_bad_hang_timeout_is_explained(value):
    r = run_cli("start", "--cpu-workers", "1", "--hang-timeout", value)
    assert r.returncode == 2 and "--hang-timeout" in r.stderr and "Traceback" not in r.stderr


def test_a_bad_models_dir_is_explained():
    r = run_cli("start", "--cpu-workers", "1", "--models", "/nonexistent/repo")
    assert r.returncode == 2 and "not a directory" in r.stderr and "Traceback" not in r.stderr


def test_a_taken_port_is_explained_and_nothing_is_left(tmp_path):
    with running_server(tmp_path, light=True) as first:
        before = set(os.listdir("/dev/shm"))
        r = run_cli("start", "--cpu-workers", "1", "--models", str(tmp_path / "light_repo"),
                    "--bind", first.endpoint, "--ready-timeout", "60")  # fmt: skip
        # one line that names the flag and the fix, exit 2 (a problem the operator fixes)
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("orloj-rt start: cannot listen on " + first.endpoint), last
        assert "(--bind): Address already in use" in last and "choose another" in last
        assert "Traceback" not in r.stderr, r.stderr
        assert set(os.listdir("/dev/shm")) <= before
        with Client(first.endpoint, timeout_s=10) as c:  # the first one still serves
            assert c.health()["status"] == "ok"


def test_a_taken_http_port_is_one_line_too(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = run_cli("start", "--cpu-workers", "1", "--models", str(light_repo(tmp_path)),
                    "--bind", "tcp://127.0.0.1:*", "--http-port", str(port))  # fmt: skip
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"orloj-rt start: cannot listen on 127.0.0.1:{port} (--http-port)")
    assert "choose another port" in last and "Traceback" not in r.stderr, r.stderr


def test_orloj_rt_stop(tmp_path):
    with running_server(tmp_path, light=True) as server:
        r = run_cli("stop", "--bind", server.endpoint, "--timeout", "30")
        assert r.returncode == 0, r.stderr
        assert "stopped" in r.stdout
        server.proc.wait(10)
        assert server.returncode is None or server.proc.returncode == 0


def test_stop_without_a_server():
    r = run_cli("stop", "--bind", "tcp://127.0.0.1:1", "--timeout", "1")
    assert r.returncode == 1 and "no server answers" in r.stderr


def test_children_exit_when_the_supervisor_is_killed(tmp_path):
    """A supervisor killed by SIGKILL cannot clean up: its children notice their pipes
    closing and exit, and the next start (here: remove_stale_segments) removes the rings."""
    from orloj_rt.runtime.shm_ring import remove_stale_segments

    with running_server(tmp_path, check_exit=False, light=True) as server:
        children = [p for p in server.children if "orloj-rt:" in " ".join(p.cmdline())]
        segments = instance_segments(server.pid)
        assert len(children) == 3 and segments
        server.proc.kill()
        server.proc.wait(10)
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, f"children still running: {[p.pid for p in alive]}"
        removed = remove_stale_segments()
        assert set(segments) <= set(removed)


def test_two_cpu_workers_share_the_load(tmp_path):
    with running_server(tmp_path, "--cpu-workers", "2", light=True) as server, \
            RawDealer(server.endpoint) as d:  # fmt: skip
        with Client(server.endpoint, timeout_s=10) as c:
            h = c.health()
        assert h["workers"] == 2 and h["workers_ready"] == 2 and len(h["pids"]["workers"]) == 2
        t0 = time.monotonic()
        for i in range(3):  # the sleep model has 3 slots and batches of one
            d.send(encode_infer(i, "sleep", {"ms": np.array(300, np.float32)}))
        statuses = [d.recv()[0]["status"] for _ in range(3)]
        elapsed = time.monotonic() - t0
        assert statuses == ["ok"] * 3
        assert elapsed < 0.85, f"3 x 300 ms on 2 workers took {elapsed:.2f} s"
