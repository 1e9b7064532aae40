"""A Python client that routes by itself: no hop through the cluster's router process.

    from orloj_rt.cluster.client import ClusterClient

    with ClusterClient("tcp://127.0.0.1:5555", router="p2c") as c:   # the entry point
        r = c.infer("early_exit", {"tokens": tokens}, slo_ms=50)      # an InferResult

It asks the entry point (router.py) once for the nodes' state stream (`health`'s
`state_pub`), keeps the newest state of every node, runs the same `routing.Router`
(`router=` orloj, p2c, round-robin, random) in this process, and sends each request on a
connection of its own to the node it picks. The request then takes the path of a
request to a single server: what the router process costs (an extra hop, measured in
docs/cluster.md) is saved, and the decision's time is paid here instead.

One request at a time (`infer` waits for its reply), and exactly one result for each: a
node that dies while it holds the request (its connection drops, or its state stops for
`dead_after_s`) or that answers that it shuts down gets the request re-sent once to
another node, with the SLO time left; else the result is `error` (or `dropped` when no
SLO time is left). A late reply of the first node can never be taken for the second's:
each send has its own id. Not thread-safe (ZeroMQ sockets are not): one per thread.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any

import msgpack
import numpy as np
import zmq

from orloj_rt.client import Client
from orloj_rt.client.codec import InferResult, decode_reply, encode_infer
from orloj_rt.cluster.publish import STATE_VERSION
from orloj_rt.cluster.routing import NodeState, NoNodeError, make_router
from orloj_rt.protocol.wire import new_routing_id

DEAD_AFTER_S = 2.0
STATE_READ_S = 0.005
_SHUTTING_DOWN = ("not accepting new requests", "the request did not run")


class _Link:
    __slots__ = ("id", "endpoint", "pid", "sock", "monitor", "connected", "ready", "heard",
                 "offset")  # fmt: skip

    def __init__(self, node_id, endpoint, pid, sock, monitor, now):
        self.id, self.endpoint, self.pid = node_id, endpoint, pid
        self.sock, self.monitor = sock, monitor
        self.connected = False
        self.ready = False
        self.heard = now
        self.offset = math.inf


class ClusterClient:
    """See the module docstring."""

    def __init__(self, entry: str, router: str = "p2c", timeout_s: float = 30.0,
                 dead_after_s: float = DEAD_AFTER_S, seed: int = 0):  # fmt: skip
        with Client(entry, timeout_s=timeout_s) as c:
            health = c.health()
            self.default_slo_s = {m["name"]: m["default_slo_ms"] / 1000.0 for m in c.models()}
        pub = health.get("state_pub")
        if not pub:
            raise ValueError(f"{entry} publishes no node states: is it an orloj-rt cluster's "
                             "entry point (orloj-rt cluster start)?")  # fmt: skip
        self.entry = entry
        self.timeout_s = timeout_s
        self.dead_after_s = dead_after_s
        self.router = make_router(router, seed=seed)
        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(pub)
        self.links: dict[str, _Link] = {}
        self._ids = itertools.count(1)
        self._next_states = 0.0
        self.rerouted = 0

    # ------------------------------------------------------------------ public
    def wait_nodes(self, n: int, timeout_s: float = 30.0) -> int:
        """Waits (bounded) until n nodes are routable; how many are."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._states(time.monotonic(), force=True)
            ready = sum(link.connected and link.ready and node in self.router.nodes
                        for node, link in self.links.items())  # fmt: skip
            if ready >= n or time.monotonic() > deadline:
                return ready
            time.sleep(0.01)

    def infer(self, model: str, inputs: dict[str, np.ndarray], slo_ms: float | None = None,
              app: str | None = None, hint: float | None = None,
              timeout_s: float | None = None) -> InferResult:  # fmt: skip
        t0 = time.monotonic()
        slo_s = slo_ms / 1000.0 if slo_ms is not None else self.default_slo_s.get(model, 1.0)
        deadline = t0 + (self.timeout_s if timeout_s is None else timeout_s)
        tried: set[str] = set()
        while True:
            now = time.monotonic()
            left = slo_s - (now - t0)
            if left <= 0:
                return self._local(None, "dropped", "its node failed, and no SLO time was "
                                   "left to run it on another")  # fmt: skip
            link = self._choose(model, app or "default", left, now, tried)
            if link is None:
                return self._local(None, "rejected", "no node of the cluster is serving right "
                                   "now; retry later")  # fmt: skip
            rid = next(self._ids)
            frames = encode_infer(rid, model, inputs, slo_ms=left * 1000.0, app=app, hint=hint)
            link.sock.send_multipart([b"", *frames], zmq.NOBLOCK, copy=False)
            outcome = self._wait(link, rid, deadline)
            if isinstance(outcome, InferResult):
                if not (outcome.status == "rejected" and outcome.error
                        and outcome.error.endswith(_SHUTTING_DOWN)):  # fmt: skip
                    return outcome
                link.ready = False  # it shuts down: the request never ran there
                self.router.remove(link.id)
                why = f"node {link.id} shuts down"
            else:
                why = outcome  # the node was lost while it held the request
            tried.add(link.id)
            if len(tried) > 1:
                return self._local(rid, "error", f"{why} while it held this request, which "
                                   "was re-sent once already; retry it")  # fmt: skip
            self.rerouted += 1

    def close(self) -> None:
        for link in list(self.links.values()):
            self._drop(link)
        self.sub.close(linger=0)
        self.ctx.term()

    def __enter__(self) -> ClusterClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _local(rid: Any, status: str, error: str) -> InferResult:
        return InferResult(id=rid, status=status, error=error)

    def _choose(self, model, app, slo_s, now, tried) -> _Link | None:
        self._states(now)
        for _ in range(2):
            try:
                node = self.router.choose(model, app, slo_s, now)
            except NoNodeError:
                return None
            link = self.links.get(node)
            if link is not None and link.connected and link.ready and node not in tried:
                return link
            if link is not None and node in tried:
                self.router.remove(node)  # (it comes back with its next state)
        usable = [k for k in self.links.values() if k.connected and k.ready and k.id not in tried]
        return usable[0] if usable else None

    def _wait(self, link: _Link, rid: int, deadline: float):
        """The node's reply (an InferResult), or why the node was lost (a str)."""
        poller = zmq.Poller()
        poller.register(link.sock, zmq.POLLIN)
        poller.register(link.monitor, zmq.POLLIN)
        while True:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"no reply from node {link.id} ({link.endpoint}) within "
                                   f"timeout_s={self.timeout_s:g} s")  # fmt: skip
            wait_ms = max(1, math.ceil(min(deadline - now, STATE_READ_S) * 1000))
            events = dict(poller.poll(wait_ms))
            if link.sock in events:
                while link.sock.get(zmq.EVENTS) & zmq.POLLIN:
                    reply = link.sock.recv_multipart(copy=False)
                    _, result = decode_reply([f.buffer for f in reply[1:]])
                    if result.id == rid:
                        return result
            if link.monitor in events and not self._monitor(link):
                return f"node {link.id} ({link.endpoint}) died (its connection dropped)"
            self._states(time.monotonic())
            if self.links.get(link.id) is not link:
                return f"node {link.id} ({link.endpoint}) was lost (no state, or restarted)"

    def _monitor(self, link: _Link) -> bool:
        from zmq.utils.monitor import recv_monitor_message

        while link.monitor.get(zmq.EVENTS) & zmq.POLLIN:
            ev = recv_monitor_message(link.monitor, zmq.NOBLOCK)
            if ev["event"] == zmq.EVENT_CONNECTED:
                link.connected = True
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                self._drop(link)
                return False
        return True

    def _states(self, now: float, force: bool = False) -> None:
        if now < self._next_states and not force:
            return
        self._next_states = now + STATE_READ_S
        for link in list(self.links.values()):  # connections first: a state then counts
            if link.monitor.get(zmq.EVENTS) & zmq.POLLIN:
                self._monitor(link)
        newest: dict = {}
        while self.sub.get(zmq.EVENTS) & zmq.POLLIN:
            msg = msgpack.unpackb(self.sub.recv(zmq.NOBLOCK), raw=False, strict_map_key=False)
            newest[str(msg.get("node"))] = msg
        for node_id, msg in newest.items():
            if msg.get("v") == STATE_VERSION:
                self._state(node_id, msg, now)
        for link in list(self.links.values()):
            if now - link.heard > self.dead_after_s:
                self._drop(link)

    def _state(self, node_id: str, msg: dict, now: float) -> None:
        endpoint, pid = str(msg.get("endpoint", "")), int(msg.get("pid", 0))
        link = self.links.get(node_id)
        if link is not None and (link.endpoint, link.pid) != (endpoint, pid):
            self._drop(link)
            link = None
        if link is None:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.ROUTING_ID, new_routing_id())
            monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            sock.connect(endpoint)
            link = self.links[node_id] = _Link(node_id, endpoint, pid, sock, monitor, now)
        link.heard = now
        link.ready = int(msg.get("workers_ready", 0)) > 0
        wire = msg["state"]
        stamp = float(wire["stamp"])
        link.offset = min(link.offset, now - stamp)
        wire["stamp"] = stamp + link.offset  # the node's clock mapped onto this process's
        if link.connected and link.ready:
            self.router.update(node_id, NodeState.from_wire(wire), now)
        else:
            self.router.remove(node_id)

    def _drop(self, link: _Link) -> None:
        if self.links.get(link.id) is link:
            del self.links[link.id]
            self.router.remove(link.id)
        if link.sock.closed:
            return
        link.sock.disable_monitor()
        link.monitor.close(linger=0)
        link.sock.close(linger=0)


__all__ = ["ClusterClient"]
