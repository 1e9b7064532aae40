"""The cluster router process (orloj_rt/cluster/router.py) against fake nodes: a real
router subprocess, real ZeroMQ sockets; each fake node is a ROUTER socket that answers
like a frontend and a PUB that publishes a real NodeState like a node's scheduler.

Relaying (ids of two clients that collide, data frames intact, health), a cancel reaching
the node that holds its target, and exactly one reply per request when a node dies with
requests in flight (re-routed once) and when it then answers late (never relayed: its
connection was closed when it was declared dead)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from orloj_rt.client import Client
from orloj_rt.cluster.publish import STATE_VERSION
from orloj_rt.cluster.routing import NodeState

try:
    from orloj_rt.cluster import _relay  # noqa: F401 - built by setup.py where it can be

    RELAY_BUILT = True
except ImportError:
    RELAY_BUILT = False

pytestmark = pytest.mark.once  # sockets and processes only: nothing of the engine

READY = re.compile(r"cluster router on (\S+) \(state (\S+);")
TIMEOUT_S = 20.0
# a node is dead after this long without a state. The fake nodes publish from threads of
# this test process: on a loaded machine (the suite beside other jobs, 2 cores) a process
# can go 0.5 s unscheduled, and with 0.5 s here every node was once declared dead at once
# (`test_a_node_that_shuts_down_is_routed_around` got `rejected`: no node left)
DEAD_AFTER_S = 1.5


class FakeNode:
    """A node: answers `infer` ok with its inputs echoed and `"node"` in the reply, or holds
    its requests while `hold` is set; answers a cancel `queued` and its target `cancelled`."""

    def __init__(self, name: str, state_endpoint: str):
        self.name = name
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.connect(state_endpoint)
        self.hold = False
        self.shutting_down = False  # answers infer `rejected` as a draining frontend does
        self.publish = True
        self.held: list = []
        self.to_release = False  # answer what it holds, from its own thread (release)
        self.seen: list = []  # ids received (the router's)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _state(self) -> bytes:
        st = NodeState(node=self.name, stamp=time.monotonic(), workers=1)
        return msgpack.packb({"v": STATE_VERSION, "node": self.name, "endpoint": self.endpoint,
                              "pid": os.getpid(), "seq": 0, "workers": 1, "workers_ready": 1,
                              "state": st.to_wire()})  # fmt: skip

    def answer(self, frames: list) -> None:
        ident, _, raw, *data = frames
        h = msgpack.unpackb(raw)
        out = {"v": 1, "id": h["id"], "status": "ok", "node": self.name}
        if h.get("op") == "cancel":
            out["result"] = "queued"
            tgt = [f for f in self.held if msgpack.unpackb(f[2])["id"] == h["target"]]
            for f in tgt:
                self.held.remove(f)
                self.sock.send_multipart([f[0], b"", msgpack.packb(
                    {"v": 1, "id": h["target"], "status": "cancelled"})])  # fmt: skip
        elif h.get("op", "infer") == "infer" and self.shutting_down:
            out.update(status="rejected", error="the server is shutting down: not accepting "
                       "new requests")  # fmt: skip
            data = []
        elif h.get("op", "infer") == "infer":
            out["outputs"] = h.get("inputs", [])
        self.sock.send_multipart([ident, b"", msgpack.packb(out), *data])

    def _loop(self) -> None:
        next_state = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if self.publish and now >= next_state:
                self.pub.send(self._state())
                next_state = now + 0.005
            if self.to_release:
                self.to_release = False
                self._answer_held()
            if self.sock.poll(2):
                frames = self.sock.recv_multipart()
                h = msgpack.unpackb(frames[2])
                self.seen.append(h["id"])
                if self.hold and h.get("op", "infer") == "infer":
                    self.held.append(frames)
                else:
                    self.answer(frames)
        self.sock.close(linger=0)
        self.pub.close(linger=0)
        self.ctx.term()

    def release(self) -> None:
        """Answers what it held (late, from the router's point of view), from its own
        thread (a ZeroMQ socket is used by one thread), and waits until it did."""
        self.hold = False
        self.to_release = True
        wait_for(lambda: not self.to_release, f"{self.name} answering what it held")

    def _answer_held(self) -> None:
        for f in self.held:
            self.answer(f)
        self.held.clear()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture(params=["relay", "python"])
def router(request):
    """The router process (round-robin), relaying with its compiled relay (where built)
    or, with ORLOJ_RT_PURE=1, in Python: both must keep every rule."""
    with router_process("round-robin", request.param == "python") as r:
        yield r


@contextlib.contextmanager
def router_process(name: str, python: bool):
    env = dict(os.environ, ORLOJ_RT_PURE="1" if python else "0")
    cmd = [sys.executable, "-m", "orloj_rt.cluster.router", "--bind", "tcp://127.0.0.1:*",
           "--state-bind", "tcp://127.0.0.1:*", "--router", name,
           "--dead-after", str(DEAD_AFTER_S), "--log-level", "WARNING"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        m = READY.search(line)
        assert m, f"no ready line from the router: {line!r}"
        yield proc, m.group(1), m.group(2)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_for(pred, what: str, timeout_s: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def nodes_ready(client: Client, n: int) -> bool:
    return client.health()["nodes_ready"] == n


@contextlib.contextmanager
def fake_nodes(state_ep: str, n: int):
    nodes = [FakeNode(f"n{i}", state_ep) for i in range(n)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.close()


def dealer(endpoint: str):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def send(sock, rid: int, data: bytes, **extra) -> None:
    h = {"v": 1, "id": rid, "model": "early_exit", "slo_ms": 5000.0,
         "inputs": [{"name": "tokens", "dtype": "int64", "shape": [len(data) // 8]}], **extra}
    sock.send_multipart([b"", msgpack.packb(h), data])


def recv_all(sock, n: int, timeout_s: float = TIMEOUT_S, extra_s: float = 0.0) -> list:
    """n replies, then whatever else comes within extra_s (there must be nothing)."""
    out = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n and time.monotonic() < deadline:
        if sock.poll(50):
            out.append(sock.recv_multipart())
    end = time.monotonic() + extra_s
    while time.monotonic() < end:
        if sock.poll(50):
            out.append(sock.recv_multipart())
    return [(msgpack.unpackb(f[1]), f[2:]) for f in out]


def test_relays_to_every_node_with_the_clients_ids(router, request):
    _, ep, state_ep = router
    relay = request.node.callspec.params["router"]
    with fake_nodes(state_ep, 2) as nodes, Client(ep, timeout_s=10) as c:
        wait_for(lambda: nodes_ready(c, 2), "both nodes ready")
        h = c.health()
        assert h["status"] == "ok" and h["workers_ready"] == 2
        assert set(h["nodes"]) == {"n0", "n1"}
        a, b = dealer(ep), dealer(ep)
        for i in range(20):  # the same ids from two clients
            send(a, i, np.full(3, i, "<i8").tobytes())
            send(b, i, np.full(3, 100 + i, "<i8").tobytes())
        served = set()
        for sock, base in ((a, 0), (b, 100)):
            got = recv_all(sock, 20, extra_s=0.2)
            assert sorted(h["id"] for h, _ in got) == list(range(20))
            for h, data in got:
                assert h["status"] == "ok"
                assert np.frombuffer(data[0], "<i8").tolist() == [base + h["id"]] * 3
            served |= {h["node"] for h, _ in got}
        assert served == {"n0", "n1"}  # round-robin: both serve
        stats = c.stats()
        assert stats["received"] == 40 and stats["ok"] == 40 and stats["in_flight"] == 0
        assert stats["relay"] == ("compiled" if RELAY_BUILT and relay == "relay" else "python")
        a.close()
        b.close()
        assert nodes[0].seen and nodes[1].seen


def test_cancel_reaches_the_node_that_holds_the_target(router):
    _, ep, state_ep = router
    with fake_nodes(state_ep, 2) as nodes, Client(ep, timeout_s=10) as c:
        wait_for(lambda: nodes_ready(c, 2), "both nodes ready")
        for n in nodes:
            n.hold = True
        s = dealer(ep)
        send(s, 7, np.zeros(2, "<i8").tobytes())
        wait_for(lambda: any(n.held for n in nodes), "the request held")
        s.send_multipart([b"", msgpack.packb({"v": 1, "id": 8, "op": "cancel", "target": 7})])
        got = {h["id"]: h for h, _ in recv_all(s, 2, extra_s=0.2)}
        assert set(got) == {7, 8}
        assert got[7]["status"] == "cancelled"
        assert got[8]["status"] == "ok" and got[8]["result"] == "queued"
        s.send_multipart([b"", msgpack.packb({"v": 1, "id": 9, "op": "cancel", "target": 70})])
        (h, _), = recv_all(s, 1)
        assert h["id"] == 9 and h["result"] == "unknown"
        s.close()


def test_a_dead_nodes_requests_get_exactly_one_reply(router):
    _, ep, state_ep = router
    with fake_nodes(state_ep, 2) as nodes, Client(ep, timeout_s=10) as c:
        wait_for(lambda: nodes_ready(c, 2), "both nodes ready")
        slow = nodes[1]
        slow.hold = True
        s = dealer(ep)
        for i in range(10):
            send(s, i, np.full(2, i, "<i8").tobytes())
        wait_for(lambda: len(slow.held) == 5, "half the requests held by the slow node")
        first = recv_all(s, 5)  # the healthy node's
        assert {h["node"] for h, _ in first} == {"n0"}
        slow.publish = False  # it stops publishing: declared dead after DEAD_AFTER_S
        rerouted = recv_all(s, 5)
        assert {h["node"] for h, _ in rerouted} == {"n0"}  # re-routed once, to the survivor
        for h, data in rerouted:
            assert np.frombuffer(data[0], "<i8").tolist() == [h["id"]] * 2
        ids = sorted(h["id"] for h, _ in first + rerouted)
        assert ids == list(range(10))
        slow.release()  # its late answers must not reach the client
        assert recv_all(s, 0, extra_s=0.5) == []
        stats = c.stats()
        assert stats["rerouted"] == 5 and stats["nodes_lost"] == 1 and stats["ok"] == 10
        assert c.health()["nodes_ready"] == 1
        # the node is back (publishes again): connected again and served
        slow.publish = True
        wait_for(lambda: nodes_ready(c, 2), "the node back")
        for i in range(10, 14):
            send(s, i, np.zeros(1, "<i8").tobytes())
        got = recv_all(s, 4, extra_s=0.2)
        assert sorted(h["id"] for h, _ in got) == [10, 11, 12, 13]
        assert {h["node"] for h, _ in got} == {"n0", "n1"}
        s.close()


def test_no_node_left_answers_every_request(router):
    _, ep, state_ep = router
    with fake_nodes(state_ep, 1) as nodes, Client(ep, timeout_s=10) as c:
        wait_for(lambda: nodes_ready(c, 1), "the node ready")
        nodes[0].hold = True
        s = dealer(ep)
        for i in range(3):
            send(s, i, np.zeros(1, "<i8").tobytes())
        wait_for(lambda: len(nodes[0].held) == 3, "the requests held")
        nodes[0].publish = False
        got = recv_all(s, 3, extra_s=0.2)
        assert sorted(h["id"] for h, _ in got) == [0, 1, 2]
        assert {h["status"] for h, _ in got} == {"error"}
        assert "died while it held this request" in got[0][0]["error"]
        send(s, 5, np.zeros(1, "<i8").tobytes())  # nothing to route to
        (h, _), = recv_all(s, 1)
        assert h["id"] == 5 and h["status"] == "rejected"
        s.close()


def test_a_node_that_shuts_down_is_routed_around(router):
    _, ep, state_ep = router
    with fake_nodes(state_ep, 2) as nodes, Client(ep, timeout_s=10) as c:
        wait_for(lambda: nodes_ready(c, 2), "both nodes ready")
        nodes[1].shutting_down = True  # still publishing, still connected: draining
        s = dealer(ep)
        for i in range(10):
            send(s, i, np.full(2, i, "<i8").tobytes())
        got = recv_all(s, 10, extra_s=0.2)
        assert sorted(h["id"] for h, _ in got) == list(range(10))
        assert {h["status"] for h, _ in got} == {"ok"}  # its rejections ran elsewhere, once
        assert {h["node"] for h, _ in got} == {"n0"}
        assert c.stats()["rerouted"] >= 1
        assert c.health()["nodes"]["n1"]["in_flight"] == 0
        s.close()


@pytest.mark.skipif(not RELAY_BUILT, reason="the compiled relay is not built (setup.py)")
def test_the_relays_fast_path_keeps_ids_data_cancels_and_exactly_once():
    """p2c decisions made ahead: the compiled relay forwards and answers in C; every rule
    holds (two clients' colliding ids, data intact, a cancel, a node dying with requests
    in flight: each answered once, late answers dropped)."""
    with router_process("p2c", python=False) as (_, ep, state_ep), \
            fake_nodes(state_ep, 2) as nodes, Client(ep, timeout_s=10) as c:  # fmt: skip
        wait_for(lambda: nodes_ready(c, 2), "both nodes ready")
        a, b = dealer(ep), dealer(ep)
        for i in range(30):  # one at a time: each decision is made ahead of the next
            send(a, i, np.full(3, i, "<i8").tobytes())
            send(b, i, np.full(3, 100 + i, "<i8").tobytes())
            for sock, base in ((a, 0), (b, 100)):
                (h, data), = recv_all(sock, 1)
                assert h["id"] == i and h["status"] == "ok"
                assert np.frombuffer(data[0], "<i8").tolist() == [base + i] * 3
        stats = c.stats()
        assert stats["received"] == 60 and stats["ok"] == 60 and stats["in_flight"] == 0
        fast_requests, fast_replies = stats["relayed_in_c"]
        assert fast_requests > 30 and fast_replies == fast_requests
        assert stats["decisions_prepared"] >= fast_requests
        for n in nodes:
            n.hold = True
        for i in range(40, 50):
            send(a, i, np.full(2, i, "<i8").tobytes())
        wait_for(lambda: sum(len(n.held) for n in nodes) == 10, "the requests held")
        assert c.stats()["relayed_in_c"][0] > fast_requests  # some went the fast path
        a.send_multipart([b"", msgpack.packb({"v": 1, "id": 99, "op": "cancel", "target": 40})])
        got = {h["id"]: h for h, _ in recv_all(a, 2)}
        assert got[40]["status"] == "cancelled" and got[99]["result"] == "queued"
        slow = max(nodes, key=lambda n: len(n.held))  # it goes silent: declared dead
        other = nodes[1 - nodes.index(slow)]
        other.release()
        slow.publish = False
        got = recv_all(a, 9, extra_s=0.2)
        assert sorted(h["id"] for h, _ in got) == list(range(41, 50))
        assert {h["status"] for h, _ in got} == {"ok"}
        for h, data in got:
            assert np.frombuffer(data[0], "<i8").tolist() == [h["id"]] * 2
        slow.release()  # its late answers must not reach the client
        assert recv_all(a, 0, extra_s=0.5) == []
        assert c.stats()["in_flight"] == 0
        a.close()
        b.close()


def test_without_ray_the_command_says_how_to_install_it():
    """Ray hidden from a fresh interpreter: `orloj-rt cluster` names the install, and the
    single-node server's modules never import Ray."""
    code = ("import sys\nsys.modules['ray'] = None\nfrom orloj_rt.cli import main\n"
            "rc = main(['cluster', 'status', '--address', '127.0.0.1:1'])\n"
            "import orloj_rt.cli.start, orloj_rt.runtime.supervisor, orloj_rt.runtime.scheduler\n"
            "import orloj_rt.cluster.router\n"
            "print('rc', rc, [m for m in sys.modules if m.startswith('ray.')])\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert "rc 2 []" in out.stdout, (out.stdout, out.stderr)
    assert "pip install 'orloj-rt[ray]'" in out.stderr


def test_an_address_without_a_ray_cluster_is_said_at_once(capsys):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'orloj-rt[ray]'")
    from orloj_rt.cli import main

    # checked before Ray is asked, which would retry for minutes
    assert main(["cluster", "status", "--address", "127.0.0.1:1"]) == 2
    assert "no Ray cluster answers at 127.0.0.1:1" in capsys.readouterr().err


def test_cluster_client_routes_by_itself_and_resends_once(router):
    from orloj_rt.cluster.client import ClusterClient

    _, ep, state_ep = router
    with fake_nodes(state_ep, 2) as nodes, ClusterClient(
            ep, router="round-robin", timeout_s=10, dead_after_s=DEAD_AFTER_S) as cc:
        assert cc.wait_nodes(2, 10) == 2
        for i in range(6):
            r = cc.infer("early_exit", {"tokens": np.full(3, i, "<i8")}, slo_ms=5000)
            assert r.status == "ok" and r.id is not None
        assert len(nodes[0].seen) == 3 and len(nodes[1].seen) == 3  # no router hop: each
        with Client(ep, timeout_s=10) as c:
            assert c.stats()["received"] == 0  # ... node was sent to directly
        # a node that holds the request and goes silent: re-sent once, to the other
        for n in nodes:
            n.hold = True
        nodes[0].hold = False
        nodes[1].publish = False
        results = [cc.infer("early_exit", {"tokens": np.zeros(2, "<i8")}, slo_ms=5000)
                   for _ in range(2)]  # fmt: skip
        assert [r.status for r in results] == ["ok", "ok"]
        assert cc.rerouted <= 1
        nodes[1].release()  # its late answer is never taken for another request's
        r = cc.infer("early_exit", {"tokens": np.zeros(1, "<i8")}, slo_ms=5000)
        assert r.status == "ok"
