"""The cluster's entry point: the router process (`python -m orloj_rt.cluster.router`).

    clients --DEALER/REQ--> ROUTER (--bind; the wire protocol of docs/protocol.md)
                              |  routing.Router.choose(model, app, slo, now) per request
                              v
                            DEALER per node --> node i's frontend (its orloj-rt instance)
    node i's scheduler --PUB (publish.py, every 5 ms)--> SUB (--state-bind)

It speaks to clients exactly as a frontend does, so that `orloj_rt.client.Client`, the C
client and the HTTP/gRPC gateway (`--http-port`, `--grpc-port`: the gateway process of
gateway_common.py, connected here instead of to a frontend) work against it unchanged.
For each `infer` it reads the header (model, app, slo_ms), asks the router which node
serves it, gives it an id of its own (the nodes see one connection, ours, so the
clients' ids could collide) and forwards the header with the data frames as they came:
ZeroMQ frames received with copy=False and sent on as they are, so that no tensor byte
passes through a Python object. A reply goes back to its client with the client's id.

Per request, as little as possible waits (docs/cluster.md, "The entry point's
overhead"): the decisions are made ahead (routing.Prepared: after each state and each
send, for the kinds of request seen lately), and the relay is compiled where built
(csrc/cluster/_relay.pyx; ORLOJ_RT_PURE=1 or no build: the same loop in Python). Its
fast path forwards an infer whose kind has a decision made ahead, and relays the reply to
it, in C (the header read and its id replaced there); this process's Python does the
bookkeeping after each send (`_fast_sent`, `_fast_replied`). Every other message, and
every rule below, goes through `_request` and `_reply` here.

Nodes are found by their state: the first state of a node (or of a new incarnation of it:
another endpoint or supervisor pid) opens a DEALER to its endpoint. A node is routable
once that connection is up and its state says a worker is ready.

Exactly one reply per request (docs/cluster.md, "Failure"): every forwarded request is
in flight on one node until its reply comes back. A node is dead when its connection
drops (a socket monitor sees the disconnect: its frontend died) or when its state has
not come for `dead_after_s`. Then what it held is re-routed once to a survivor, with the
SLO that is left (nothing left: answered `dropped`), or answered `error` when no node is
left or it was re-routed already. A reply that comes for a request no longer in flight
(from a node declared dead that was only slow) is dropped: duplicates never reach a
client. A node heard from again is connected again.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field

import msgpack
import zmq

from orloj_rt.cluster.publish import STATE_VERSION
from orloj_rt.cluster.routing import NodeState, NoNodeError, Prepared, make_router
from orloj_rt.protocol.wire import DEFAULT_ENDPOINT, PROTOCOL_VERSION, new_routing_id

log = logging.getLogger("orloj_rt.cluster.router")

DEAD_AFTER_S = 2.0  # no state for this long: the node is dead
CHECK_INTERVAL_S = 0.05  # how often state ages are checked (the poll's longest sleep)
DRAIN_TIMEOUT_S = 5.0  # on SIGTERM: in-flight requests may finish for this long
MAX_PER_WAKE = 256  # messages read from one socket per wake-up (fairness between sockets)
STATE_READ_S = 0.005  # how often the nodes' states are read (they publish every 5 ms)
STATE_DEFER_S = 0.001  # after relaying replies, how long the states may wait for a request
GATEWAY_READY_TIMEOUT_S = 60.0
READY_PREFIX = "orloj-rt: cluster router on "

_UNKNOWN = (None, "")
_NOBLOCK, _EVENTS, _POLLIN = int(zmq.NOBLOCK), int(zmq.EVENTS), int(zmq.POLLIN)


_MORE = _NOBLOCK | int(zmq.SNDMORE)
# pyzmq's Cython methods, without the Python layer of zmq.Socket over them (its send and
# recv_multipart cost 2-3 times theirs: a few microseconds a message on this path)
_bsend = zmq.backend.Socket.send
_brecv = zmq.backend.Socket.recv
_bget = zmq.backend.Socket.get


def _send(sock, parts: list) -> None:
    """send_multipart without its per-part flag arithmetic on enums. A zmq.Frame (a data
    frame as received, copy=False) is sent by reference, never copied, and so is a data
    frame the compiled relay kept (_relay.Held); the small bytes (routing id, delimiter,
    header) are copied, which costs less than a zero-copy send."""
    last = len(parts) - 1
    for i, part in enumerate(parts):
        if type(part) is _Held:
            part.send(sock.underlying, i < last)
        else:
            _bsend(sock, part, _MORE if i < last else _NOBLOCK)


def _load_relay():
    """The compiled relay's module (csrc/cluster/_relay.pyx), or None: not built, or
    ORLOJ_RT_PURE=1 (no compiled code), or it cannot find pyzmq's libzmq."""
    if os.environ.get("ORLOJ_RT_PURE") == "1":
        return None
    try:
        from orloj_rt.cluster import _relay

        _relay.load()
    except ImportError as exc:
        log.info("relaying in Python: %s", exc)
        return None
    global _Held
    _Held = _relay.Held
    return _relay


class _NoHeld:  # no compiled relay: no kept frame to tell apart
    pass


_Held = _NoHeld


def _recv_frames(sock) -> list:
    """One whole message as zmq.Frames (copy=False: no tensor byte copied), or zmq.Again
    when none is waiting; a message's parts arrive together, so the rest never wait."""
    f = _brecv(sock, _NOBLOCK, copy=False)
    parts = [f]
    while f.more:
        f = _brecv(sock, _NOBLOCK, copy=False)
        parts.append(f)
    return parts


def _zmq_again():
    return zmq.Again


def _unpackb(buf):
    return msgpack.unpackb(buf, raw=False, strict_map_key=False)


_packb = msgpack.Packer(use_bin_type=True).pack


def _did_not_run(error) -> bool:
    """A `rejected` reply of a node that shuts down (frontend.py's texts): the request
    never ran there, so it may run elsewhere."""
    return isinstance(error, str) and (error.endswith("not accepting new requests")
                                       or error.endswith("the request did not run"))


def _reply(cid, status: str, error: str = "", result=None) -> bytes:
    h = {"v": PROTOCOL_VERSION, "id": cid, "status": status}
    if error:
        h["error"] = error
    if result is not None:
        h["result"] = result
    return _packb(h)


@dataclass
class RouterOptions:
    models: list  # ModelEntry: the default SLOs, and the gateway's model metadata
    bind: str = DEFAULT_ENDPOINT
    state_bind: str = "tcp://127.0.0.1:*"
    router: str = "orloj"
    router_params: dict = field(default_factory=dict)
    dead_after_s: float = DEAD_AFTER_S
    drain_timeout_s: float = DRAIN_TIMEOUT_S
    http_port: int | None = None
    grpc_port: int | None = None
    allow_remote: bool = False
    max_frame_bytes: int = 64 << 20
    log_level: str = "INFO"


class _Node:
    __slots__ = ("id", "endpoint", "pid", "sock", "monitor", "connected", "workers",
                 "workers_ready", "offset", "heard", "pending", "sent", "since",
                 "on_reply", "draining", "slot")  # fmt: skip

    def __init__(self, node_id: str, endpoint: str, pid: int, sock, monitor, now: float):
        self.id = node_id
        self.endpoint = endpoint
        self.pid = pid
        self.sock = sock
        self.monitor = monitor
        self.connected = False
        self.workers = 0
        self.workers_ready = 0
        self.offset = math.inf  # min(received - stamp): the node's clock in ours
        self.heard = now  # when its last state came (our clock)
        self.pending: set[int] = set()  # our ids in flight there
        self.sent = 0  # requests forwarded to it
        self.since = now
        self.on_reply = None  # its replies' handler (ClusterRouter._on_reply bound to it)
        self.draining = False  # it answered "shutting down": nothing more is sent to it
        self.slot = -1  # its index in ClusterRouter._slots (and the relay's sockets)

    @property
    def routable(self) -> bool:
        return self.connected and self.workers_ready > 0 and not self.draining


class _Pending:
    __slots__ = ("ident", "cid", "node", "_header", "data", "rerouted", "t0", "op", "slo_s",
                 "raw")  # fmt: skip

    def __init__(self, ident, cid, node, header, data, op, t0, slo_s, raw=None):
        self.ident = ident  # the client's routing id (bytes)
        self.cid = cid  # the client's request id
        self.node = node  # the node id it was sent to
        self._header = header  # as forwarded (our id in it); kept to re-route it
        self.data = data  # its data frames (zmq.Frame, or _relay.Held: no copy)
        self.rerouted = False
        self.t0 = t0
        self.op = op
        self.slo_s = slo_s
        self.raw = raw  # (the client's header, our id) when `header` is read on demand

    @property
    def header(self) -> dict:
        """The header as forwarded: decoded when first needed (a re-route) where the
        compiled relay forwarded it."""
        if self._header is None:
            raw, rid = self.raw
            self._header = _unpackb(raw)
            self._header["id"] = rid
        return self._header


class ClusterRouter:
    """The router process's state and loop; see the module docstring."""

    def __init__(self, options: RouterOptions):
        self._zmq = zmq
        self.options = options
        self.router = make_router(options.router, **options.router_params)
        # decisions made ahead (after each state and send), so that a request waits for
        # none: routing.Prepared
        self.ahead = Prepared(self.router, max_age=STATE_READ_S)
        self.default_slo_s = {e.spec.name: e.spec.default_slo_ms / 1000.0 for e in options.models}
        self.model_list = [e.spec.to_dict() for e in options.models]
        self.ctx = zmq.Context()
        self.client = self.ctx.socket(zmq.ROUTER)
        self.client.setsockopt(zmq.LINGER, 0)
        self.client.setsockopt(zmq.SNDHWM, 0)
        self.client.setsockopt(zmq.RCVHWM, 0)
        self.client.setsockopt(zmq.MAXMSGSIZE, options.max_frame_bytes)
        self.state = self.ctx.socket(zmq.SUB)
        self.state.setsockopt(zmq.LINGER, 0)
        self.state.setsockopt(zmq.RCVHWM, 10_000)
        self.state.setsockopt(zmq.SUBSCRIBE, b"")
        self.endpoint = ""
        self.state_endpoint = ""
        # the newest states, published again for clients that route themselves
        # (orloj_rt.cluster.client.ClusterClient); its endpoint is in `health`
        self.state_pub = self.ctx.socket(zmq.PUB)
        self.state_pub.setsockopt(zmq.LINGER, 0)
        self.state_pub.setsockopt(zmq.SNDHWM, 1000)
        self.state_pub_endpoint = ""
        self.nodes: dict[str, _Node] = {}
        self.inflight: dict[int, _Pending] = {}
        self.by_client: dict[tuple, int] = {}  # (client routing id, client id) -> our id
        self._ids = itertools.count(1)
        self._rr = 0
        self._next_states = 0.0
        self._deferred = False  # states due were left for after the next request
        self.poller = zmq.Poller()
        self._slots: list[_Node] = []  # the nodes, in the relay's order (_Node.slot)
        self._later = None  # what _settle does after a forward
        relay = _load_relay()
        self.relay = None if relay is None else relay.Relay(self, self.client.underlying)
        # the relay's fast path: the decisions made ahead, by the kind of request as its
        # header names it; and what it forwarded, by our id (empty without the relay)
        self._decisions: dict = {} if self.relay is None else self.relay.decisions
        self._sent_map: dict = {} if self.relay is None else self.relay.sent
        self._kinds: dict = {}  # (model, app, header slo_ms or None) -> (model, app, slo_s)
        self.ahead.on_change = self._decisions.clear
        self._socks: dict = {}  # socket -> (kind, node id)
        self.stopping = False
        self.started = time.monotonic()
        self.counts = {"received": 0, "ok": 0, "dropped": 0, "rejected": 0, "error": 0,
                       "cancelled": 0, "rerouted": 0, "lost": 0, "duplicates": 0,
                       "nodes_lost": 0}  # fmt: skip
        self.decisions = 0  # routing decisions made, and the seconds they took
        self.decision_s = 0.0
        self.gateway = None  # (process, conn) when --http-port / --grpc-port
        self.urls: dict[str, str] = {}

    # ------------------------------------------------------------------ setup
    def bind(self) -> None:
        zmq = self._zmq
        for sock, ep, flag in ((self.client, self.options.bind, "--bind"),
                               (self.state, self.options.state_bind, "--state-bind")):  # fmt: skip
            try:
                sock.bind(ep)
            except zmq.ZMQError as exc:
                raise SystemExit(f"orloj-rt cluster router: cannot listen on {ep} ({flag}): "
                                 f"{exc}; pick another address or port") from None  # fmt: skip
        self.endpoint = self.client.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.state_endpoint = self.state.getsockopt(zmq.LAST_ENDPOINT).decode()
        host = self.state_endpoint.rsplit(":", 1)[0]  # beside the state socket, any port
        self.state_pub.bind(f"{host}:*")
        self.state_pub_endpoint = self.state_pub.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.poller.register(self.client, zmq.POLLIN)
        self._socks[self.client] = ("client", "")

    def start_gateway(self) -> None:
        """The HTTP/gRPC gateway process of a single instance, as a client of this router."""
        o = self.options
        if o.http_port is None and o.grpc_port is None:
            return
        import multiprocessing

        from orloj_rt.protocol import messages as msgs
        from orloj_rt.runtime.gateway_common import GatewayOptions, listen_host, run_gateway_process
        from orloj_rt.runtime.proc import InstanceConfig

        config = InstanceConfig(
            instance=f"router-{os.getpid()}", models=tuple(o.models), ring_names=(),
            ring_layouts=(), client_endpoint=self.endpoint, devices=(),
            log_level=o.log_level, supervisor_pid=os.getpid(),
            internal_endpoint=self.endpoint,
        )  # fmt: skip
        gw = GatewayOptions(http_port=o.http_port, grpc_port=o.grpc_port,
                            host=listen_host(o.allow_remote))  # fmt: skip
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=run_gateway_process, args=(config, child, gw),
                           name="gateway", daemon=True)  # fmt: skip
        proc.start()
        child.close()
        self.gateway = (proc, parent)
        deadline = time.monotonic() + GATEWAY_READY_TIMEOUT_S
        # the gateway's health probes come here: serve while waiting for its ready message
        while time.monotonic() < deadline:
            if parent.poll(0):
                msg = msgs.decode(parent.recv_bytes())
                if isinstance(msg, msgs.ChildReady):
                    self.urls = dict(msg.info)
                    return
                raise SystemExit(f"orloj-rt cluster router: the gateway failed: "
                                 f"{getattr(msg, 'error', msg)}")  # fmt: skip
            if not proc.is_alive():
                raise SystemExit("orloj-rt cluster router: the gateway exited at start "
                                 f"(code {proc.exitcode}); see its log above")  # fmt: skip
            self.serve_once(0.02)
        raise SystemExit("orloj-rt cluster router: the gateway was not ready within "
                         f"{GATEWAY_READY_TIMEOUT_S:g} s")  # fmt: skip

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        """Serves until SIGTERM/SIGINT (`stopping`), then drains (bounded) and closes."""
        while not self.stopping:
            self.serve_once(CHECK_INTERVAL_S)
        self.drain()
        self.close()

    def serve_once(self, timeout_s: float) -> None:
        """One wake-up: requests and replies first, then (every STATE_READ_S) the nodes'
        states and their ages. The state socket is not polled: read on a timer, the
        states of every node come in one wake-up instead of one each (the publishers
        send every 5 ms), which keeps the router's wake-ups for requests.

        When the states are due right after replies were relayed, the client that got
        one is likely to send its next request at once: the states wait for it (until
        STATE_DEFER_S past due if no message comes, STATE_READ_S past due at most) and
        are read after it was forwarded, while its node works, instead of delaying it by
        their ~0.1 ms."""
        if self.stopping and self._decisions:
            self._decisions.clear()  # the relay forwards nothing more: refused here
        now = time.monotonic()
        due = self._next_states + (STATE_DEFER_S if self._deferred else 0.0)
        wait = min(timeout_s, max(0.0, due - now))
        # zmq_poll counts whole milliseconds: round up, or a wait under 1 ms would spin
        timeout_ms = math.ceil(wait * 1000.0)
        if self.relay is not None:  # the same wake-up in C: _relay.pyx
            replies = bool(self.relay.serve(timeout_ms) & 2)
        else:
            replies = self._poll_python(timeout_ms)
        now = time.monotonic()
        if now < self._next_states:
            return
        if replies and now < self._next_states + STATE_READ_S:
            self._deferred = True
            return
        self._deferred = False
        self._next_states = now + STATE_READ_S
        for node in list(self.nodes.values()):  # connection events: read on this timer
            if node.monitor.get(_EVENTS) & _POLLIN:
                self._on_monitor(node.id, node.monitor)
        self._on_states(now)
        self._check(now)
        self.ahead.prepare(now)
        self._publish()

    def _poll_python(self, timeout_ms: int) -> bool:
        """One wake-up relayed in Python: whether replies were relayed."""
        replies = False
        for sock, _ in self.poller.poll(timeout_ms):
            kind, node_id = self._socks.get(sock, _UNKNOWN)
            if kind == "client":
                self._read(sock, self._on_client)
            elif kind == "node":
                node = self.nodes.get(node_id)
                if node is not None and node.sock is sock:
                    self._read(sock, node.on_reply)
                    replies = True
        return replies

    @staticmethod
    def _read(sock, handle) -> None:
        for _ in range(MAX_PER_WAKE):
            try:
                frames = _recv_frames(sock)
            except _zmq_again():
                return
            handle(frames)
            if not _bget(sock, _EVENTS) & _POLLIN:  # cheaper than the exception of an empty read
                return

    # ------------------------------------------------------------------ clients
    def _send_client(self, ident: bytes, parts: list) -> None:
        try:
            _send(self.client, [ident, b"", *parts])
        except self._zmq.ZMQError as exc:  # a ROUTER drops for a gone peer; never fatal
            log.debug("reply to a gone client dropped: %s", exc)

    def _on_client(self, frames: list) -> None:
        """A client's message, relayed in Python (without the compiled relay)."""
        if len(frames) < 3 or len(frames[1]) != 0:
            log.debug("ignored a message without the empty delimiter frame")
            return
        out = self._request(frames[0].bytes, frames[2].buffer)
        if out is not None:
            node, head, p = out
            p.data = frames[3:]
            # SNDHWM 0 on a connected DEALER: queued without limit, never blocks
            _send(self._slots[node].sock, [b"", head, *p.data])
            self._settle()

    def _request(self, ident: bytes, raw) -> tuple | None:
        """A client's request: answered here (None), or (index of the node it goes to in
        `_slots`, its header for that node, its _Pending, whose `data` the caller
        sets to the data frames it forwards). The caller forwards it, then calls
        `_settle` (what need not delay the forward). The compiled relay (_relay.pyx)
        and `_on_client` call it."""
        try:
            header = _unpackb(raw)
        except Exception:  # noqa: BLE001 - any garbage
            header = None
        if not isinstance(header, dict):
            self._send_client(ident, [_reply(None, "error", "the header frame is not a "
                                             "msgpack map (docs/protocol.md)")])  # fmt: skip
            return None
        cid = header.get("id")
        op = header.get("op", "infer")
        if op == "infer" and not self.stopping:
            now = time.monotonic()
            self.counts["received"] += 1
            slo_s = self._slo_s(header)
            node, kind = self._choose(header, slo_s, now)
            if node is None:
                self.counts["rejected"] += 1
                self._no_node(ident, cid)
                return None
            rid = self._new_id()
            header["id"] = rid
            p = _Pending(ident, cid, node.id, header, (), "infer", now, slo_s)
            self.inflight[rid] = p
            self.by_client[(ident, cid)] = rid
            node.pending.add(rid)
            node.sent += 1
            if kind is not None:  # counted once forwarded: _settle
                self._later = (node.id, kind[0], kind[1], kind[2], now)
                self._kind(header, kind)
            return node.slot, _packb(header), p
        if op == "health":
            self._send_client(ident, [_reply(cid, "ok", result=self.health())])
            return None
        if op == "stats":
            self._send_client(ident, [_reply(cid, "ok", result=self.stats())])
            return None
        if op == "models":  # the repository every node serves (the same --models)
            self._send_client(ident, [_reply(cid, "ok", result=self.model_list)])
            return None
        if self.stopping:
            self._send_client(ident, [_reply(cid, "rejected", "the cluster router is shutting "
                                             "down: not accepting new requests")])  # fmt: skip
            return None
        if op == "cancel":
            self._on_cancel(ident, cid, header)
            return None
        node = self._any_node()  # another op: any node answers it
        if node is None:
            self._no_node(ident, cid)
            return None
        rid = self._new_id()
        header["id"] = rid
        p = _Pending(ident, cid, node.id, header, (), op, time.monotonic(), None)
        self.inflight[rid] = p
        node.pending.add(rid)
        node.sent += 1
        return node.slot, _packb(header), p

    def _settle(self) -> None:
        """After a forward or a reply went out: the router counts the request sent (and
        prepares the next decision: routing.Prepared), while its node works on it."""
        later = self._later
        if later is not None:
            self._later = None
            self.ahead.sent(*later)
            self._publish()

    def _new_id(self) -> int:
        relay = self.relay
        if relay is None:
            return next(self._ids)
        rid = relay.next_id
        relay.next_id = rid + 1
        return rid

    def _kind(self, header: dict, kind: tuple) -> None:
        """Remembers the header's words for a kind of request (model, app, slo_s): the
        compiled relay finds the decisions made ahead by them."""
        if self.relay is None:
            return
        slo = header.get("slo_ms")
        key = (kind[0], kind[1], None if slo is None else float(slo))
        if key not in self._kinds:
            if len(self._kinds) >= 4 * self.ahead.keys:
                self._kinds.clear()
                self._decisions.clear()  # the relay finds none it cannot name
            self._kinds[key] = kind

    def _publish(self) -> None:
        """Gives the compiled relay the decisions made ahead that are valid now (a
        change of any clears them: Prepared.on_change), each until it is max_age old."""
        if self.relay is None or self.stopping:
            return
        decisions = self._decisions
        ahead, nodes = self.ahead, self.nodes
        for key, kind in self._kinds.items():
            got = ahead.ready(kind)
            if got is not None:
                node = nodes.get(got[0])
                if node is not None and node.routable:
                    decisions[key] = (node.slot, int((got[1] + ahead.max_age) * 1e9))

    def _fast_sent(self, ident: bytes, raw: bytes, rid: int, slot: int, data: list,
                   key: tuple, cid_raw: bytes) -> None:  # fmt: skip
        """The compiled relay forwarded an infer by a decision made ahead (our id `rid`,
        to the node at `slot`; `key` the kind as the relay read it off the header, whose
        id was `cid_raw`): its bookkeeping, as `_request` does it. The header is decoded
        only if it is routed again (_Pending.header)."""
        now = time.monotonic()
        kind = self._kinds.get(key)
        if kind is None:  # never: a decision is given to the relay by its known kind
            h = _unpackb(raw)
            kind = (h["model"], h.get("app", "default"), self._slo_s(h))
        model, app, slo_s = kind
        node = self._slots[slot]
        cid = _unpackb(cid_raw)
        self.counts["received"] += 1
        self.inflight[rid] = _Pending(ident, cid, node.id, None, data, "infer", now, slo_s,
                                      (raw, rid))  # fmt: skip
        self.by_client[(ident, cid)] = rid
        node.pending.add(rid)
        node.sent += 1
        ahead = self.ahead
        ahead.taken(kind)
        self.decisions += 1
        ahead.sent(node.id, model, app, slo_s, now)
        self._publish()

    def _fast_replied(self, rid: int, status: str) -> None:
        """The compiled relay relayed the reply to a request it forwarded: its
        bookkeeping, as `_reply` does it."""
        p = self.inflight.pop(rid, None)
        if p is None:
            return
        node = self.nodes.get(p.node)
        if node is not None:
            node.pending.discard(rid)
        self.by_client.pop((p.ident, p.cid), None)
        if status in self.counts:
            self.counts[status] += 1

    def _forget(self, rid: int) -> _Pending | None:
        """Takes a request out of flight (and out of the relay's fast path)."""
        self._sent_map.pop(rid, None)
        return self.inflight.pop(rid, None)

    def _no_node(self, ident: bytes, cid) -> None:
        self._send_client(ident, [_reply(cid, "rejected", "no node of the cluster is serving "
                                         "right now (orloj-rt cluster status shows the "
                                         "nodes); retry later")])  # fmt: skip

    def _forward(self, node: _Node, rid: int, p: _Pending) -> None:
        p.node = node.id
        node.pending.add(rid)
        node.sent += 1
        # SNDHWM 0 on a connected DEALER: queued without limit, never blocks
        _send(node.sock, [b"", _packb(p.header), *p.data])

    def _slo_s(self, header: dict):
        slo = header.get("slo_ms")
        if slo is None:
            return self.default_slo_s.get(header.get("model"))
        if isinstance(slo, bool) or not isinstance(slo, (int, float)):
            return None
        return slo / 1000.0

    def _choose(self, header: dict, slo_s, now: float) -> tuple:
        """(the node for an infer, or None when none serves; (model, app, slo) when the
        router chose it: its send is then counted by `ahead.sent`, else None)."""
        model, app = header.get("model"), header.get("app", "default")
        if isinstance(model, str) and isinstance(app, str) and slo_s is not None:
            t0 = time.perf_counter()
            try:
                node_id, _ = self.ahead.take(model, app, slo_s, now)
                self.decision_s += time.perf_counter() - t0
                self.decisions += 1
            except NoNodeError:
                return None, None
            except ValueError:  # a bad slo: the node answers it `error`
                node_id = None
            node = self.nodes.get(node_id)
            if node is not None and node.routable:
                return node, (model, app, slo_s)
        return self._any_node(), None  # a malformed request: any node answers it `error`

    def _any_node(self) -> _Node | None:
        ready = [n for n in self.nodes.values() if n.routable]
        if not ready:
            return None
        self._rr += 1
        return ready[self._rr % len(ready)]

    def _on_cancel(self, ident: bytes, cid, header: dict) -> None:
        rid = self.by_client.get((ident, header.get("target")))
        p = self.inflight.get(rid) if rid is not None else None
        node = self.nodes.get(p.node) if p is not None else None
        if node is None or not node.routable:
            self._send_client(ident, [_reply(cid, "ok", result="unknown")])
            return
        crid = self._new_id()
        ch = {"v": PROTOCOL_VERSION, "id": crid, "op": "cancel", "target": rid}
        cp = _Pending(ident, cid, node.id, ch, [], "cancel", time.monotonic(), None)
        cp.rerouted = True  # a cancel is never re-routed: its target's node is gone
        self.inflight[crid] = cp
        self._forward(node, crid, cp)

    # ------------------------------------------------------------------ nodes
    def _on_reply(self, node: _Node, frames: list) -> None:
        """A node's message, relayed in Python (without the compiled relay)."""
        if len(frames) < 2:
            return
        out = self._reply(node.slot, frames[1].buffer)
        if out is not None:
            self._send_client(out[0], [out[1], *frames[2:]])
            self._settle()

    def _reply(self, slot: int, raw) -> tuple | None:
        """A node's reply: (the client's routing id, the header for the client) to relay
        it with its data frames, or None (a duplicate, dropped; or re-routed). The
        compiled relay and `_on_reply` call it."""
        node = self._slots[slot]
        try:
            header = _unpackb(raw)
            rid = header.get("id")
        except Exception:  # noqa: BLE001 - a node speaks the protocol; never fatal
            log.error("ignored an unreadable reply from node %s", node.id)
            return None
        p = self.inflight.get(rid)
        if p is None or p.node != node.id:
            self.counts["duplicates"] += 1  # answered already (its node was declared dead)
            return None
        status = header.get("status")
        if p.op == "infer" and status == "rejected" and _did_not_run(header.get("error")):
            # the node shuts down (SIGTERM, its Ray node leaving): it sends nothing more
            # there, and the request, which never ran, goes to another node once
            if not node.draining:
                node.draining = True
                self.ahead.remove(node.id)
                log.warning("node %s shuts down: routing around it", node.id)
            if self._reroute(p, time.monotonic()):  # in flight again, under a new id
                self._forget(rid)
                node.pending.discard(rid)
                return None
        self._forget(rid)
        node.pending.discard(rid)
        if p.op == "infer":
            self.by_client.pop((p.ident, p.cid), None)
            if status in self.counts:
                self.counts[status] += 1
        header["id"] = p.cid
        return p.ident, _packb(header)

    def _on_states(self, now: float) -> None:
        newest: dict = {}
        for _ in range(4 * MAX_PER_WAKE):
            try:
                raw = self.state.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                msg = _unpackb(raw)
                newest[str(msg["node"])] = (msg, raw)
            except Exception:  # noqa: BLE001
                log.warning("ignored an unreadable node state")
        for node_id, (msg, raw) in newest.items():
            self.state_pub.send(raw, _NOBLOCK)  # a PUB drops at its mark; never blocks
            self._on_state(node_id, msg, now)

    def _on_state(self, node_id: str, msg: dict, now: float) -> None:
        if msg.get("v") != STATE_VERSION:
            log.error("node %s publishes state version %r, this router reads %d: run the "
                      "same orloj-rt on every node", node_id, msg.get("v"), STATE_VERSION)
            return
        endpoint, pid = str(msg.get("endpoint", "")), int(msg.get("pid", 0))
        node = self.nodes.get(node_id)
        if node is not None and (node.endpoint, node.pid) != (endpoint, pid):
            self._lose(node, "restarted (a new instance publishes under its id)")
            node = None
        if node is None:
            node = self._connect(node_id, endpoint, pid, now)
        node.heard = now
        node.workers = int(msg.get("workers", 0))
        node.workers_ready = int(msg.get("workers_ready", 0))
        wire = msg["state"]
        stamp = float(wire["stamp"])
        node.offset = min(node.offset, now - stamp)
        wire["stamp"] = stamp + node.offset  # the state's time on this process's clock
        if node.routable:
            self.ahead.update(node_id, NodeState.from_wire(wire), now)
        else:
            self.ahead.remove(node_id)

    def _connect(self, node_id: str, endpoint: str, pid: int, now: float) -> _Node:
        zmq = self._zmq
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.ROUTING_ID, new_routing_id())  # kept across reconnects
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(endpoint)
        node = _Node(node_id, endpoint, pid, sock, monitor, now)
        node.on_reply = functools.partial(self._on_reply, node)
        self.nodes[node_id] = node
        self.poller.register(sock, zmq.POLLIN)
        self._socks[sock] = ("node", node_id)
        self._nodes_changed()
        log.info("node %s: connecting to %s (supervisor pid %d)", node_id, endpoint, pid)
        return node

    def _nodes_changed(self) -> None:
        self._slots = list(self.nodes.values())
        for i, n in enumerate(self._slots):
            n.slot = i
        if self.relay is not None:
            self._decisions.clear()  # they name nodes by their index
            self.relay.set_nodes([n.sock.underlying for n in self._slots])

    def _on_monitor(self, node_id: str, monitor) -> None:
        from zmq.utils.monitor import recv_monitor_message

        zmq = self._zmq
        node = self.nodes.get(node_id)
        for _ in range(MAX_PER_WAKE):
            try:
                ev = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if node is None or node.monitor is not monitor:
                continue
            if ev["event"] == zmq.EVENT_CONNECTED:
                node.connected = True
                log.info("node %s: connected", node_id)
            elif ev["event"] == zmq.EVENT_DISCONNECTED:
                self._lose(node, "its connection dropped")
                return

    def _check(self, now: float) -> None:
        dead_after = self.options.dead_after_s
        for node in list(self.nodes.values()):
            if now - node.heard > dead_after:
                self._lose(node, f"no state for {now - node.heard:.1f} s")

    def _lose(self, node: _Node, why: str) -> None:
        """The node is gone: forget it, and answer or re-route what it held."""
        log.warning("node %s (%s) lost: %s; %d request(s) in flight there", node.id,
                    node.endpoint, why, len(node.pending))  # fmt: skip
        self.counts["nodes_lost"] += 1
        self.ahead.remove(node.id)
        self.nodes.pop(node.id, None)
        self.poller.unregister(node.sock)
        self._socks.pop(node.sock, None)
        self._nodes_changed()
        node.sock.disable_monitor()
        node.monitor.close(linger=0)
        node.sock.close(linger=0)
        now = time.monotonic()
        for rid in sorted(node.pending):
            p = self._forget(rid)
            if p is not None:
                self._orphan(p, node, now)
        node.pending.clear()

    def _reroute(self, p: _Pending, now: float) -> bool:
        """Sends an infer to another node once, with the SLO time left; whether it did."""
        left = None if p.slo_s is None else p.slo_s - (now - p.t0)
        if p.op != "infer" or p.rerouted or self.stopping or left is None or left <= 0:
            return False
        target, kind = self._choose(p.header, left, now)
        if target is None:
            return False
        rid = self._new_id()
        p.rerouted = True
        p.header["id"] = rid
        p.header["slo_ms"] = left * 1000.0
        self.inflight[rid] = p
        self.by_client[(p.ident, p.cid)] = rid
        self.counts["rerouted"] += 1
        self._forward(target, rid, p)
        if kind is not None:
            self.ahead.sent(target.id, kind[0], kind[1], kind[2], now)
        return True

    def _orphan(self, p: _Pending, node: _Node, now: float) -> None:
        """A request whose node died: re-routed once if a node is left and SLO time too."""
        if self._reroute(p, now):
            return
        left = None if p.slo_s is None else p.slo_s - (now - p.t0)
        if p.op == "infer" and not p.rerouted and left is not None and left <= 0:
            self._answer(p, "dropped", f"node {node.id} died while it held this request, "
                         "and no SLO time was left to run it elsewhere")  # fmt: skip
            return
        self._answer(p, "error", f"node {node.id} ({node.endpoint}) died while it held this "
                     "request; it may or may not have run; retry it")  # fmt: skip

    def _answer(self, p: _Pending, status: str, error: str) -> None:
        if p.op == "infer":
            self.by_client.pop((p.ident, p.cid), None)
            self.counts[status] += 1
            self.counts["lost"] += status == "error"
        self._send_client(p.ident, [_reply(p.cid, status, error)])

    # ------------------------------------------------------------------ answers
    def health(self) -> dict:
        nodes = list(self.nodes.values())
        ready = sum(n.routable for n in nodes)
        status = ("shutting_down" if self.stopping
                  else "ok" if nodes and ready == len(nodes) else "degraded")  # fmt: skip
        pids = {"supervisor": os.getpid(), "frontend": os.getpid(), "scheduler": 0,
                "workers": []}  # fmt: skip
        if self.gateway is not None:
            pids["gateway"] = self.gateway[0].pid or 0
        return {
            "status": status,
            "workers": sum(n.workers for n in nodes if n.routable),
            "workers_ready": sum(n.workers_ready for n in nodes if n.routable),
            "nodes_ready": ready,
            "state_pub": self.state_pub_endpoint,
            "pids": pids,
            "nodes": self.node_table(),
        }

    def node_table(self) -> dict:
        now = time.monotonic()
        return {n.id: {"endpoint": n.endpoint, "supervisor_pid": n.pid,
                       "connected": n.connected, "workers": n.workers,
                       "workers_ready": n.workers_ready, "in_flight": len(n.pending),
                       "sent": n.sent, "state_age_ms": round((now - n.heard) * 1000.0, 1)}
                for n in self.nodes.values()}  # fmt: skip

    def stats(self) -> dict:
        answered = sum(self.counts[k] for k in ("ok", "dropped", "rejected", "error"))
        return {
            **self.counts,
            "in_flight": sum(p.op == "infer" for p in self.inflight.values()),
            "answered": answered,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "router": self.options.router,
            "choices_with_stale_state": getattr(self.router, "fallbacks", 0),
            "decisions": self.decisions,
            "decisions_prepared": self.ahead.prepared,
            "relay": "python" if self.relay is None else "compiled",
            "relayed_in_c": [0, 0] if self.relay is None
            else [self.relay.fast_requests, self.relay.fast_replies],
            "decision_us_mean": round(self.decision_s / self.decisions * 1e6, 2)
            if self.decisions else 0.0,
            "nodes": self.node_table(),
        }

    # ------------------------------------------------------------------ shutdown
    def drain(self) -> None:
        """Lets what is in flight finish for up to drain_timeout_s, then answers the rest."""
        deadline = time.monotonic() + self.options.drain_timeout_s
        while self.inflight and time.monotonic() < deadline:
            self.serve_once(0.02)
        for rid in list(self.inflight):
            p = self._forget(rid)
            self._answer(p, "rejected", "the cluster router shut down before the node answered")

    def close(self) -> None:
        if self.gateway is not None:
            from orloj_rt.protocol import messages as msgs

            proc, conn = self.gateway
            with contextlib.suppress(OSError):
                conn.send_bytes(msgs.encode(msgs.Shutdown()))
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(2.0)
        for node in list(self.nodes.values()):
            node.sock.disable_monitor()
            node.monitor.close(linger=0)
            node.sock.close(linger=0)
        self.client.close(linger=0)
        self.state.close(linger=0)
        self.state_pub.close(linger=0)
        self.ctx.term()


# ---------------------------------------------------------------------- the process
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orloj_rt.cluster.router",
                                description="The orloj-rt cluster's entry point (started by "
                                "`orloj-rt cluster start`; docs/cluster.md).")  # fmt: skip
    p.add_argument("--bind", default=DEFAULT_ENDPOINT)
    p.add_argument("--state-bind", default="tcp://127.0.0.1:*")
    p.add_argument("--router", default="orloj")
    p.add_argument("--models", default="")
    p.add_argument("--http-port", type=int)
    p.add_argument("--grpc-port", type=int)
    p.add_argument("--allow-remote", action="store_true")
    p.add_argument("--dead-after", type=float, default=DEAD_AFTER_S)
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    from orloj_rt.runtime.proc import configure_logging, set_process_title
    from orloj_rt.runtime.security import check_bind

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, "cluster-router")
    set_process_title("orloj-rt: cluster router")
    problem = check_bind(args.bind, args.allow_remote)
    if problem:
        print(f"orloj-rt cluster router: {problem}", file=sys.stderr)
        return 2
    if args.models:
        from orloj_rt.models.repository import load_repository

        models = load_repository(args.models)
    else:
        from orloj_rt.models.builtin import default_entries

        models = default_entries()
    opts = RouterOptions(models=models, bind=args.bind, state_bind=args.state_bind,
                         router=args.router, dead_after_s=args.dead_after,
                         http_port=args.http_port, grpc_port=args.grpc_port,
                         allow_remote=args.allow_remote, log_level=args.log_level)  # fmt: skip
    r = ClusterRouter(opts)

    def on_signal(signum, frame) -> None:
        r.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    r.bind()
    r.start_gateway()
    urls = "".join(f"; {k} {v}" for k, v in sorted(r.urls.items()))
    print(f"{READY_PREFIX}{r.endpoint} (state {r.state_endpoint}; router {opts.router}; "
          f"pid {os.getpid()}{urls})", flush=True)  # fmt: skip
    r.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
