"""`orloj-rt cluster` on a real local Ray cluster: 3 Ray nodes on this machine
(ray.cluster_utils.Cluster, one CPU each, a small object store, no dashboard), one
early_exit instance per node with one CPU worker, the router on loopback.

start and status (through the CLI), requests answered by every node and through the
entry point (ZeroMQ and KServe v2 over HTTP), a Ray node removed under load (exactly one
reply per request), stop (no process, no shared-memory segment left). One cluster is
shared by the module (Ray starts slowly); the tests run in file order. Skipped, with the
reason, where Ray is not installed or a local cluster cannot start."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import urllib.request

import msgpack
import numpy as np
import pytest

pytestmark = pytest.mark.once

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'orloj-rt[ray]'")

from orloj_rt.cli import main  # noqa: E402
from orloj_rt.client import Client  # noqa: E402
from orloj_rt.cluster import control  # noqa: E402
from orloj_rt.runtime.shm_ring import SEGMENT_PREFIX  # noqa: E402

NODES = 3
OBJECT_STORE = 80_000_000  # Ray's minimum is 75 MiB
TOKENS = np.array([3, 17, 99, 250], dtype=np.int64)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    models = tmp_path_factory.mktemp("models")
    (models / "early_exit.toml").write_text('builtin = "early_exit"\nmax_batch_size = 8\n')
    try:
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False})
        for _ in range(NODES - 1):
            c.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
    except Exception as exc:  # noqa: BLE001 - whatever keeps Ray from starting here
        pytest.skip(f"a local Ray cluster cannot start here: {type(exc).__name__}: {exc}")
    state = {"cluster": c, "address": c.address, "models": str(models), "pids": set()}
    try:
        yield state
    finally:
        with contextlib.suppress(Exception):
            control.stop(c.address, timeout_s=30)
        with contextlib.suppress(Exception):
            ray.shutdown()
        c.shutdown()


def status(state) -> dict:
    st = control.status(state["address"])
    import psutil

    for n in st["nodes"]:  # every process the cluster ran, for the last test
        pid = n.get("supervisor_pid", 0)
        if pid:
            state["pids"].add(pid)
            with contextlib.suppress(psutil.Error):
                state["pids"].update(p.pid for p in psutil.Process(pid).children(recursive=True))
    if st["router"]["pid"]:
        state["pids"].add(st["router"]["pid"])
    return st


def test_start_and_status(cluster, capsys):
    rc = main(["cluster", "start", "--address", cluster["address"], "--models",
               cluster["models"], "--local", "--bind", "tcp://127.0.0.1:*", "--wait", "120",
               "--http-port", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "orloj-rt: cluster entry point tcp://127.0.0.1:" in out
    assert out.count(" serving ") == NODES, out
    assert main(["cluster", "status", "--address", cluster["address"], "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert len(st["nodes"]) == NODES
    assert all(n["state"] == "serving" for n in st["nodes"])
    endpoints = [n["endpoint"] for n in st["nodes"]]
    assert len(set(endpoints)) == NODES and all(e.startswith("tcp://127.0.0.1:") for e in endpoints)
    cluster["endpoint"] = st["router"]["endpoint"]
    cluster["http"] = st["router"]["http"]
    assert cluster["http"].startswith("http://127.0.0.1:")
    status(cluster)
    # a second start is refused, naming what to do
    assert main(["cluster", "start", "--address", cluster["address"], "--local"]) == 2
    assert "cluster stop" in capsys.readouterr().err


def test_requests_answered_on_every_node(cluster):
    st = status(cluster)
    for n in st["nodes"]:
        with Client(n["endpoint"], timeout_s=30) as c:
            r = c.infer("early_exit", {"tokens": TOKENS}, slo_ms=1000)
            assert r.status == "ok", (n["node"], r)
    with Client(cluster["endpoint"], timeout_s=30) as c:
        deadline = time.monotonic() + 30
        while c.health()["nodes_ready"] < NODES:  # the router hears every node's state
            assert time.monotonic() < deadline, c.health()
            time.sleep(0.05)
        replies = [c.infer("early_exit", {"tokens": TOKENS}, slo_ms=1000) for _ in range(30)]
        assert [r.status for r in replies] == ["ok"] * 30
        stats = c.stats()
    assert stats["ok"] >= 30 and stats["in_flight"] == 0
    assert sum(n["sent"] for n in stats["nodes"].values()) >= 30
    # KServe v2 over HTTP at the entry point: the gateway process, a client of the router
    body = json.dumps({"inputs": [{"name": "tokens", "shape": [2, 4], "datatype": "INT64",
                                   "data": TOKENS.tolist() * 2}]}).encode()  # fmt: skip
    req = urllib.request.Request(cluster["http"] + "/v2/models/early_exit/infer", data=body,
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        answer = json.loads(r.read())
    assert r.status == 200
    assert {o["name"] for o in answer["outputs"]} >= {"logits"}
    assert next(o for o in answer["outputs"] if o["name"] == "logits")["shape"][0] == 2


def test_a_dead_controller_comes_back_with_the_same_entry_point(cluster):
    """SIGKILL to the controller actor's process (its router, a child, dies with it): Ray
    starts it again on its node; it serves the same entry point (ZeroMQ and HTTP) and
    adopts the node actors as they run: no instance is restarted."""
    import signal

    st = status(cluster)
    before = {n["node"]: n["supervisor_pid"] for n in st["nodes"]}
    os.kill(st["controller_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 90
    while True:
        assert time.monotonic() < deadline, "the controller did not come back"
        time.sleep(0.5)
        with contextlib.suppress(Exception):
            st = status(cluster)
            if st["controller_pid"] != 0 and st["controller_restarts"] == 1:
                break
    assert st["router"]["endpoint"] == cluster["endpoint"]
    assert st["router"]["http"] == cluster["http"]
    assert {n["node"]: n["supervisor_pid"] for n in st["nodes"]} == before
    with Client(cluster["endpoint"], timeout_s=30) as c:
        deadline = time.monotonic() + 30
        while c.health()["nodes_ready"] < NODES:  # the new router hears every node
            assert time.monotonic() < deadline, c.health()
            time.sleep(0.05)
        assert c.infer("early_exit", {"tokens": TOKENS}, slo_ms=1000).status == "ok"


def test_a_node_removed_under_load_answers_each_request_once(cluster):
    import zmq

    c = cluster["cluster"]
    st = status(cluster)
    here = ray.get_runtime_context().get_node_id()
    victim = next(n for n in c.worker_nodes if n.node_id != here)
    label = next(n["node"] for n in st["nodes"] if n["node"].endswith(victim.node_id[:8]))
    n_req, sent, replies = 150, [], []
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cluster["endpoint"])

    def load() -> None:
        for i in range(n_req):
            h = {"v": 1, "id": i, "model": "early_exit", "slo_ms": 2000.0,
                 "inputs": [{"name": "tokens", "dtype": "int64", "shape": [4]}]}
            sock.send_multipart([b"", msgpack.packb(h), TOKENS.tobytes()])
            sent.append(i)
            time.sleep(0.01)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    while len(sent) < n_req // 3:
        time.sleep(0.005)
    c.remove_node(victim, allow_graceful=False)  # its raylet and actor die at once
    deadline = time.monotonic() + 60
    while (len(replies) < n_req or t.is_alive()) and time.monotonic() < deadline:
        if sock.poll(50):
            replies.append(msgpack.unpackb(sock.recv_multipart()[1]))
    t.join(5)
    end = time.monotonic() + 1.0  # nothing more may come: no duplicates
    while time.monotonic() < end:
        if sock.poll(50):
            replies.append(msgpack.unpackb(sock.recv_multipart()[1]))
    sock.close()
    ids = sorted(r["id"] for r in replies)
    assert ids == list(range(n_req)), f"missing or duplicated replies: {len(ids)} for {n_req}"
    statuses = {r["status"] for r in replies}
    assert statuses <= {"ok", "error", "dropped"}, statuses
    assert sum(r["status"] == "ok" for r in replies) >= n_req // 2
    with Client(cluster["endpoint"], timeout_s=30) as cl:
        deadline = time.monotonic() + 20
        while label in cl.health()["nodes"]:  # its state stopped: forgotten
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert cl.infer("early_exit", {"tokens": TOKENS}, slo_ms=1000).status == "ok"
    deadline = time.monotonic() + 20
    while label not in status(cluster)["nodes_lost"]:  # the controller forgets it too
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_stop_leaves_no_process_nor_shared_memory(cluster, capsys):
    import psutil

    status(cluster)
    assert main(["cluster", "stop", "--address", cluster["address"]]) == 0
    assert "stopped the cluster router" in capsys.readouterr().out
    pids = cluster["pids"]
    assert pids

    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    deadline = time.monotonic() + 15
    while True:
        alive = [p for p in pids if running(p)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert alive == [], [psutil.Process(p).cmdline() for p in alive if running(p)]
    segments = [s for s in os.listdir("/dev/shm")
                if any(s.startswith(f"{SEGMENT_PREFIX}{p}-") for p in pids)]  # fmt: skip
    assert segments == []
    assert main(["cluster", "status", "--address", cluster["address"]]) == 2
