"""The frontend process: the client socket, request validation, the rings' allocator.

    clients --ZeroMQ ROUTER--> frontend --Submit--> scheduler
                                  |  ^  writes inputs into ring slots
                                  |  +-- Discard / SchedulerStats (scheduler channel)
                                  +----- Results + data frames (one channel per worker)

It answers every request exactly once: `error` at once for a bad request, `rejected` at
once when the model's ring is full (it never waits for a slot), and later `ok` (results
from a worker) or `dropped` / `rejected` (from the scheduler). Each admitted request is in
`_pending` until its answer goes out; every path that answers first removes it from
`_pending`, which is what makes the answer unique. `health`, `models` and `stats` are
answered here, from local state, so they answer even when the backend is saturated.

The loop never blocks on anything but the poll: client messages are drained in bursts
and their descriptors sent to the scheduler as one `Submit` per burst; replies go out on
a ROUTER, which never blocks; the channels to the other processes never block either
(what the kernel does not take waits in the channel's outbox, flushed on POLLOUT).

Failures (docs/reliability.md). When a worker dies, the scheduler sends the batch it was
running (`WorkerLost`); the frontend first reads what that worker sent before dying
(results answer their requests `ok`), then re-queues each still-unanswered member once if
its deadline has not passed, and answers the others `error`. A restarted worker's channel
arrives from the supervisor (`AttachWorker` and a descriptor on the pipe). When the
scheduler's channel closes while serving, nothing admitted can run any more: the frontend
stops admitting and answers everything in flight `rejected` at once. A request that makes
the frontend itself raise is answered `error`; the frontend serves on.

Replies go out through the outbox (outbox.py): one whose client is not connected at the
moment (it is reconnecting) or not reading waits there instead of being dropped.

Security (runtime/security.py): the ROUTER refuses frames above `max_frame_bytes` inside
ZeroMQ (`ZMQ_MAXMSGSIZE`, far above any valid frame), speaks CURVE with a ZAP handler
thread when the instance has keys, and an ipc:// socket file is made owner-only.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from typing import Any

from orloj_rt.protocol import messages as msgs
from orloj_rt.protocol import wire
from orloj_rt.protocol.derived_hint import compile_hint
from orloj_rt.protocol.wire import (
    CANCEL_ANSWERED,
    CANCEL_QUEUED,
    CANCEL_RUNNING,
    CANCEL_UNKNOWN,
    STATUS_CANCELLED,
    STATUS_DROPPED,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_REJECTED,
    RequestValidator,
    WireError,
)
from orloj_rt.runtime.cancels import CancelBook
from orloj_rt.runtime.channel import Channel, ChannelClosed
from orloj_rt.runtime.metrics import FrontendMetrics
from orloj_rt.runtime.outbox import ReplyOutbox
from orloj_rt.runtime.proc import (
    InstanceConfig,
    StartupProblem,
    attach_rings,
    child_main,
    dispatch_message,
    drain_parent,
    send_to_parent,
    settle_memory,
)
from orloj_rt.runtime.security import (
    ServerKeys,
    make_curve_server,
    restrict_ipc_socket,
    start_authenticator,
)
from orloj_rt.runtime.shm_ring import ShmRing

log = logging.getLogger("orloj_rt.frontend")

CLIENT_BURST = 256  # client messages handled per poll wake-up before looking at results
ROUTER_SNDHWM = 100_000  # queued replies per client before ZeroMQ drops (never blocks)
CLOSE_LINGER_MS = 2000  # how long final replies may take to flush at shutdown
MAINTENANCE_S = 0.5
MAX_CRASH_RETRIES = 1  # times a request is re-queued after its worker died running it


class _ModelState:
    """One served model as the frontend sees it: validator, derived hint, ring, free slots,
    counters."""

    __slots__ = (
        "index", "spec", "name", "validator", "derive_hint", "ring", "free", "next_generation",
        "outputs", "received", "ok", "met_slo", "dropped", "rejected", "error", "cancelled",
        "scheduler",
    )  # fmt: skip

    def __init__(self, index: int, spec, ring: ShmRing):
        self.index = index
        self.spec = spec
        self.name = spec.name
        self.validator = RequestValidator(spec)
        # the model's `hint` declaration, parsed once (protocol/derived_hint.py), or None
        self.derive_hint = compile_hint(spec)
        self.ring = ring
        self.free = list(range(ring.layout.n_slots - 1, -1, -1))  # pop() hands out slot 0 first
        self.next_generation = 1
        self.outputs = [(t.name, t.dtype) for t in spec.outputs]
        self.received = self.ok = self.met_slo = 0
        self.dropped = self.rejected = self.error = self.cancelled = 0
        self.scheduler: dict = {}

    def counters(self) -> dict[str, Any]:
        answered = self.ok + self.dropped + self.rejected + self.error
        return {
            "received": self.received,
            "ok": self.ok,
            "met_slo": self.met_slo,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "error": self.error,
            "cancelled": self.cancelled,  # not in the finish rate: their clients gave up
            "finish_rate": self.met_slo / answered if answered else 0.0,
            "in_flight": self.ring.layout.n_slots - len(self.free),
            "ring_slots": self.ring.layout.n_slots,
            "scheduler": self.scheduler,
        }


class _Pending:
    """An admitted request waiting for its answer."""

    __slots__ = ("envelope", "req_id", "model", "slot", "arrival", "slo_s", "metrics",
                 "desc", "retries", "key")  # fmt: skip

    def __init__(self, envelope, req_id, model: _ModelState, slot: int, arrival, slo_s,
                 metrics=None):  # fmt: skip
        self.envelope = envelope
        self.req_id = req_id
        self.model = model
        self.slot = slot
        self.arrival = arrival
        self.slo_s = slo_s
        self.metrics = metrics  # its (model, app) AppMetrics: recorded when answered
        self.desc: tuple | None = None  # its Submit descriptor, to re-queue it after a crash
        self.retries = 0
        self.key = CancelBook.key(envelope, req_id)  # what a cancel of it names


class Frontend:
    def __init__(self, config: InstanceConfig, conn: Connection, scheduler_sock, worker_socks):
        import zmq

        self._zmq = zmq
        self.config = config
        self.conn = conn
        self.started_at = time.monotonic()
        self.rings = attach_rings(config)
        self.models = [
            _ModelState(i, e.spec, r)
            for i, (e, r) in enumerate(zip(config.models, self.rings, strict=True))
        ]
        self.by_name = {m.name: m for m in self.models}
        # per-request metrics: plain counters here, Prometheus families in the gateway
        # (runtime/metrics.py, docs/metrics.md); read through `stats` with "metrics": true
        self.metrics = FrontendMetrics([m.name for m in self.models])
        self._model_list = [e.spec.to_dict() for e in config.models]
        self._pending: dict[int, _Pending] = {}
        self._next_token = 1
        self._submit: list = []
        self.cancels = CancelBook()  # cancels.py: keys, cancels in flight, zombies
        self._cancel_out: list[int] = []  # tokens to ask the scheduler about
        self.received = self.ok = self.met_slo = self.dropped = self.rejected = self.error = 0
        self.accepting = True
        self.serving = False  # True once a worker was ready: later, requests wait for restarts
        self.shutdown_reason = ""
        self.drain_deadline: float | None = None
        self.cluster = msgs.ClusterState("degraded", len(config.devices), 0,
                                         {"supervisor": config.supervisor_pid,
                                          "frontend": os.getpid(), "scheduler": 0,
                                          "workers": []})  # fmt: skip

        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.SNDHWM, ROUTER_SNDHWM)
        self.router.setsockopt(zmq.LINGER, CLOSE_LINGER_MS)
        if config.max_frame_bytes:  # a bigger frame never reaches Python: ZeroMQ drops it
            self.router.setsockopt(zmq.MAXMSGSIZE, config.max_frame_bytes)
        ReplyOutbox.configure(self.router, zmq)
        self.outbox = ReplyOutbox(self.router, zmq)
        self._auth = None
        if config.curve_keys:  # the ZAP handler must run before anyone can connect
            keys = ServerKeys.load(config.curve_keys)
            self._auth = start_authenticator(self.ctx, keys, config.internal_curve)
            make_curve_server(self.router, keys)
        try:
            self.router.bind(config.client_endpoint)
        except zmq.ZMQError as exc:
            raise StartupProblem(
                f"cannot listen on {config.client_endpoint} (--bind): {os.strerror(exc.errno)}; "
                "choose another endpoint (--bind tcp://127.0.0.1:PORT, or PORT * for a free "
                "one), or stop the server that holds it (orloj-rt stop)") from None
        self.endpoint = self.router.getsockopt(zmq.LAST_ENDPOINT).decode()
        restrict_ipc_socket(self.endpoint)
        if config.internal_endpoint:
            # the HTTP gateway's way in (http_gateway.py): the same socket, so that its
            # requests take exactly the clients' path; an abstract ipc name, never a port
            self.router.bind(config.internal_endpoint)
        self.scheduler = Channel(scheduler_sock, "frontend<->scheduler")
        self.workers = [Channel(s, f"worker {i}->frontend") for i, s in enumerate(worker_socks)]
        self.channels = {ch.fileno(): ch for ch in [self.scheduler, *self.workers]}

        # type -> handler tables; an unknown type has its own explicit branch
        self._op_handlers = {
            "infer": self._on_infer,
            "health": self._on_health,
            "models": self._on_models,
            "stats": self._on_stats,
            "cancel": self._on_cancel,
        }
        self._backend_handlers = {
            msgs.Results: self._on_results,
            msgs.Discard: self._on_discard,
            msgs.Cancelled: self._on_cancelled,
            msgs.SchedulerStats: self._on_scheduler_stats,
            msgs.WorkerLost: self._on_worker_lost,
        }
        self._parent_handlers = {
            msgs.Shutdown: self._on_shutdown,
            msgs.ClusterState: self._on_cluster_state,
            msgs.AttachWorker: self._on_attach_worker,
        }

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        zmq = self._zmq
        send_to_parent(self.conn, msgs.ChildReady("frontend", 0, os.getpid(),
                                                  {"endpoint": self.endpoint}))  # fmt: skip
        log.info("listening on %s", self.endpoint)
        settle_memory()
        self.poller = poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        for fd in self.channels:
            poller.register(fd, zmq.POLLIN)
        parent_fd = self.conn.fileno()
        poller.register(parent_fd, zmq.POLLIN)
        router, channels = self.router, self.channels
        outbox = self.outbox
        while True:
            timeout_ms = outbox.poll_timeout_ms(MAINTENANCE_S * 1000)
            if self.drain_deadline is not None:
                if not self._pending or time.monotonic() >= self.drain_deadline:
                    break
                timeout_ms = min(timeout_ms, 50)
            events = poller.poll(timeout_ms)
            client_ready = False
            for sock, ev in events:
                if sock is router:
                    client_ready = True
                elif sock == parent_fd:
                    # the supervisor first: a ClusterState saying workers are ready must
                    # be seen before the requests of clients that waited for the ready line
                    self._drain_parent()
                else:
                    ch = channels.get(sock)
                    if ch is not None:
                        self._service_channel(ch, ev)
            if client_ready:
                self._drain_clients()
            if outbox.n_parked:
                outbox.retry()
        self._close()

    def _service_channel(self, ch: Channel, ev: int) -> None:
        zmq = self._zmq
        try:
            if ev & zmq.POLLOUT and ch.flush():
                self.poller.register(ch.fileno(), zmq.POLLIN)
            if ev & zmq.POLLIN:
                for parts in ch.recv():
                    self._dispatch_backend(parts)
        except ChannelClosed:
            # its process exited; the supervisor sees that too and decides what follows
            log.warning("%s closed by its peer", ch.name)
            self._forget_channel(ch)
            if ch is self.scheduler and self.accepting:
                # nothing admitted can run any more: say so now, not after a timeout
                self._on_shutdown(msgs.Shutdown(0.0, "the scheduler exited unexpectedly"))

    def _forget_channel(self, ch: Channel) -> None:
        fd = ch.fileno()
        if self.channels.get(fd) is ch:
            self.poller.unregister(fd)
            del self.channels[fd]
        ch.close()

    def _send(self, ch: Channel, parts: list) -> None:
        try:
            ch.send(parts)
        except ChannelClosed:
            return
        if ch.wants_write:
            self.poller.register(ch.fileno(), self._zmq.POLLIN | self._zmq.POLLOUT)

    def _drain_clients(self) -> None:
        zmq = self._zmq
        recv = self.router.recv_multipart
        events = self.router.get
        for _ in range(CLIENT_BURST):
            try:
                frames = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._on_client_message(frames)
            # asking is cheaper than the exception a recv on an empty socket raises
            if not events(zmq.EVENTS) & zmq.POLLIN:
                break
        if self._submit:
            self._flush_submit()
        if self._cancel_out:  # after the Submit: a request is queued before its cancel
            tokens, self._cancel_out = self._cancel_out, []
            self._send(self.scheduler, [msgs.encode(msgs.Cancel(tokens))])

    def _dispatch_backend(self, parts: list) -> None:
        # each handler gets the message and its frames (results carry data frames)
        dispatch_message(parts, self._backend_handlers, "backend", log, parts, guard=True)

    def _drain_parent(self) -> None:
        if not drain_parent(self.conn, self._parent_handlers, log):
            # the supervisor is gone: shutting down is the only safe thing left
            self._on_shutdown(msgs.Shutdown(0.0, "the server's supervisor exited"))

    # ------------------------------------------------------------------ client requests
    def _on_client_message(self, frames: list) -> None:
        self.outbox.peer_seen(frames[0])  # back after a reconnect: what waited goes first
        start, problem = wire.split_envelope(frames)
        envelope = frames[:start] if problem is None else [frames[0], b""]
        if problem is not None:
            self._count_bad_request()
            self._reply(envelope, wire.encode_reply(None, STATUS_ERROR, problem))
            return
        try:
            header = wire.parse_header(frames[start])
        except WireError as exc:
            self._count_bad_request()
            self._reply(envelope, wire.encode_reply(exc.req_id, STATUS_ERROR, exc.text))
            return
        handler = self._op_handlers.get(header.op)
        try:
            if handler is None:  # parse_header admits only known ops; kept explicit
                raise WireError(f"unknown op {header.op!r}", header.req_id)
            handler(envelope, header, frames[start + 1 :])
        except WireError as exc:
            if header.op == "infer":
                self.error += 1  # `received` was counted by _on_infer
            self._reply(envelope, wire.encode_reply(exc.req_id, STATUS_ERROR, exc.text))
        except Exception as exc:  # noqa: BLE001 - a bug costs this request, not the server
            # (handlers raise before admitting: nothing is pending for it, one reply is due)
            log.exception("internal error on a %s request; answered 'error'", header.op)
            if header.op == "infer":
                self.error += 1
            text = f"internal error ({type(exc).__name__}): the server could not handle this"
            self._reply(envelope, wire.encode_reply(header.req_id, STATUS_ERROR, text))

    def _on_infer(self, envelope: list, header: wire.Header, data: list) -> None:
        arrival = time.monotonic()
        self.received += 1
        name = header.raw.get("model")
        m = self.by_name.get(name) if isinstance(name, str) else None
        if m is None:
            self.metrics.unattributed.error += 1
            if name is None:
                raise WireError("an infer request needs \"model\": the model's name "
                                f"(served: {', '.join(self.by_name)})", header.req_id)
            raise WireError(f"unknown model {name!r:.80}; this server serves: "
                            f"{', '.join(self.by_name)}", header.req_id)  # fmt: skip
        m.received += 1
        try:
            req = m.validator.check(header.raw, header.req_id, data)
        except WireError:
            m.error += 1
            self.metrics.models[m.index].app(header.raw.get("app", wire.DEFAULT_APP)).error += 1
            raise
        if not self.accepting or not m.free or not self.serving:
            if not self.accepting:
                text = f"{self.shutdown_reason}: not accepting new requests"
            elif not m.free:
                text = (f"overloaded: model {m.name!r}'s input ring is full "
                        f"({m.ring.layout.n_slots} requests in flight); retry later, or raise "
                        "the model's ring_slots")  # fmt: skip
            else:
                text = "no worker is ready yet (the server is starting up); retry shortly"
            m.rejected += 1
            self.rejected += 1
            self.metrics.models[m.index].app(req.app).rejected += 1
            self._reply(envelope, wire.encode_reply(header.req_id, STATUS_REJECTED, text))
            return
        # the client's hint, else the one the model derives (it never raises: no hint then)
        hint = req.hint if m.derive_hint is None else m.derive_hint(req.hint, req.shapes,
                                                                     req.frames)  # fmt: skip
        slot = m.free.pop()
        generation = m.next_generation
        m.next_generation = generation + 1
        m.ring.write(slot, generation, req.frames, req.shapes)
        token = self._next_token
        self._next_token = token + 1
        p = self._pending[token] = _Pending(envelope, header.req_id, m, slot, arrival,
                                            req.slo_s,
                                            self.metrics.models[m.index].app(req.app))  # fmt: skip
        # a RequestDescriptor's fields (protocol/messages.py), the tier last
        p.desc = (token, m.index, req.app, arrival, arrival + req.slo_s, hint, slot,
                  generation, req.priority)  # fmt: skip
        self._submit.append(p.desc)
        self.cancels.admitted(p.key, token)

    def _on_cancel(self, envelope: list, header: wire.Header, data: list) -> None:
        """`op: "cancel"`: the scheduler is asked where the target is (`_on_cancelled`
        answers); a target not pending is answered at once."""
        self._no_data(header, data)
        key = CancelBook.key(envelope, wire.cancel_target(header))
        token, first = self.cancels.ask(key, envelope, header.req_id)
        if token is None:
            result = CANCEL_ANSWERED if self.cancels.was_answered(key) else CANCEL_UNKNOWN
            self._reply(envelope, wire.encode_reply(header.req_id, STATUS_OK, result=result))
        elif first:
            self._cancel_out.append(token)

    def _flush_submit(self) -> None:
        batch, self._submit = self._submit, []
        self._send(self.scheduler, [msgs.encode(msgs.Submit(batch))])

    def _on_health(self, envelope: list, header: wire.Header, data: list) -> None:
        self._no_data(header, data)
        c = self.cluster
        status = "shutting_down" if not self.accepting else c.status
        result = {"status": status, "workers": c.workers, "workers_ready": c.workers_ready,
                  "pids": c.pids}  # fmt: skip
        self._reply(envelope, wire.encode_reply(header.req_id, STATUS_OK, result=result))

    def _on_models(self, envelope: list, header: wire.Header, data: list) -> None:
        self._no_data(header, data)
        self._reply(envelope, wire.encode_reply(header.req_id, STATUS_OK,
                                                result=self._model_list))  # fmt: skip

    def _on_stats(self, envelope: list, header: wire.Header, data: list) -> None:
        self._no_data(header, data)
        answered = self.ok + self.dropped + self.rejected + self.error
        result = {
            "received": self.received,
            "ok": self.ok,
            "met_slo": self.met_slo,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "error": self.error,
            "cancelled": self.cancels.cancelled,  # not in the finish rate
            "finish_rate": self.met_slo / answered if answered else 0.0,
            "in_flight": len(self._pending),
            "uptime_s": time.monotonic() - self.started_at,
            "policy": self.config.policy,
            "models": {m.name: m.counters() for m in self.models},
            "replies_waiting": self.outbox.n_parked,
            "replies_expired": self.outbox.expired,
        }
        if header.raw.get("metrics") is True:  # the gateway's /metrics scrape (metrics.py)
            result["metrics"] = self.metrics.snapshot(self.models, self.cluster)
        self._reply(envelope, wire.encode_reply(header.req_id, STATUS_OK, result=result))

    @staticmethod
    def _no_data(header: wire.Header, data: list) -> None:
        if data:
            raise WireError(f"op {header.op!r} takes no data frames, got {len(data)}",
                            header.req_id)  # fmt: skip

    # ------------------------------------------------------------------ backend messages
    def _on_results(self, msg: msgs.Results, frames: list) -> None:
        m = self.models[msg.model]
        nout = len(m.outputs)
        errors = msg.errors
        n_ok = len(msg.tokens) if errors is None else sum(e is None for e in errors)
        data = frames[1:]
        if len(data) != n_ok * nout or len(msg.shapes) != len(msg.tokens):
            # a broken batch invariant fails every member, with an answer each
            text = (f"internal error: worker returned {len(data)} data frames for {n_ok} "
                    f"members x {nout} outputs of model {m.name!r}")  # fmt: skip
            log.error(text)
            for token in msg.tokens:
                self._answer_token(token, STATUS_ERROR, text)
            return
        now = time.monotonic()
        exec_us = msg.exec_us
        batch_size = msg.batch_size or len(msg.tokens)  # a step member: its step's size
        # which of the model's variants served them (docs/protocol.md); none: no key
        served = {} if msg.variant is None else {"variant": msg.variant}
        self.metrics.models[msg.model].batch_size.observe(batch_size)
        pending = self._pending
        k = 0
        for i, token in enumerate(msg.tokens):
            err = errors[i] if errors is not None else None
            if err is not None:
                self._answer_token(token, STATUS_ERROR, err)
                continue
            member = data[k : k + nout]
            k += nout
            p = pending.pop(token, None)
            if p is None:  # answered already (cancelled, or at shutdown): nothing to send
                self._settle(token)
                continue
            self.cancels.done(p.key, token)
            total = now - p.arrival
            met = total <= p.slo_s
            timing = {
                "queue_us": max(0, int((msg.started - p.arrival) * 1e6)),
                "exec_us": exec_us,
                "total_us": int(total * 1e6),
                "batch_size": batch_size,
            }
            outputs = [
                {"name": name, "dtype": dtype, "shape": shape}
                for (name, dtype), shape in zip(m.outputs, msg.shapes[i], strict=True)
            ]
            header = wire.encode_reply(p.req_id, STATUS_OK, outputs=outputs, met_slo=met,
                                       timing=timing, **served)  # fmt: skip
            self._release(p)
            if p.metrics is not None:
                p.metrics.record_ok(timing["queue_us"] * 1e-6, exec_us * 1e-6, total, met)
            m.ok += 1
            self.ok += 1
            if met:
                m.met_slo += 1
                self.met_slo += 1
            self._reply(p.envelope, header, member)

    def _on_discard(self, msg: msgs.Discard, frames: list) -> None:
        for token in msg.dropped:
            p = self._pending.get(token)
            slo = f"{p.slo_s * 1000:g} ms" if p is not None else "its SLO"
            text = (f"dropped: the scheduler ({self.config.policy}) judged that the request "
                    f"could no longer finish within slo_ms={slo}")  # fmt: skip
            self._answer_token(token, STATUS_DROPPED, text)
        for token in msg.rejected:
            self._answer_token(token, STATUS_REJECTED, msg.reason or "rejected by the scheduler")
        for token, text in msg.errors:
            self._answer_token(token, STATUS_ERROR, text)

    def _on_cancelled(self, msg: msgs.Cancelled, frames: list) -> None:
        """Where each cancelled request was (cancels.py says what follows)."""
        for token, where in msg.results:
            waiters = self.cancels.take_waiting(token)
            p = self._pending.get(token)
            if p is None:
                result = CANCEL_ANSWERED  # answered meanwhile
            elif where == CANCEL_QUEUED:
                self._answer_token(token, STATUS_CANCELLED,
                                   "cancelled by its client before it ran")  # fmt: skip
                result = CANCEL_QUEUED
            elif where == CANCEL_RUNNING:
                del self._pending[token]  # answered now; its slot is held until the worker
                self.cancels.zombies[token] = p  # is done with it (`_settle`)
                self._count_answer(p, token, STATUS_CANCELLED)
                self._reply(p.envelope, wire.encode_reply(
                    p.req_id, STATUS_CANCELLED, "cancelled by its client while it ran; its "
                    "result is discarded"))  # fmt: skip
                result = CANCEL_RUNNING
            else:
                result = CANCEL_ANSWERED  # its answer is on its way
            for envelope, cancel_id in waiters:
                self._reply(envelope, wire.encode_reply(cancel_id, STATUS_OK, result=result))

    def _settle(self, token: int) -> None:
        """A zombie's worker is done with it: its ring slot is free again."""
        p = self.cancels.zombies.pop(token, None)
        if p is not None:
            self._release(p)

    def _on_scheduler_stats(self, msg: msgs.SchedulerStats, frames: list) -> None:
        for name, info in msg.models.items():
            m = self.by_name.get(name)
            if m is not None:
                m.scheduler = info

    # ------------------------------------------------------------------ supervisor messages
    def _on_shutdown(self, msg: msgs.Shutdown) -> None:
        if not self.accepting:  # a second one (a second signal) can only end the drain sooner
            end = time.monotonic() + max(0.0, msg.drain_s)
            if self.drain_deadline is None or end < self.drain_deadline:
                self.drain_deadline = end
            return
        self.accepting = False
        self.shutdown_reason = msg.reason
        self.drain_deadline = time.monotonic() + max(0.0, msg.drain_s)
        log.info("shutting down (%s); %d request(s) in flight, draining for up to %.1f s",
                 msg.reason, len(self._pending), msg.drain_s)  # fmt: skip

    def _on_cluster_state(self, msg: msgs.ClusterState) -> None:
        pids = dict(msg.pids)
        pids["frontend"] = os.getpid()
        self.cluster = msg._replace(pids=pids)
        if msg.workers_ready > 0:
            self.serving = True

    # ------------------------------------------------------------------ worker crashes
    def _on_worker_lost(self, msg: msgs.WorkerLost, frames: list) -> None:
        """Worker `msg.worker` died with the batch `msg.tokens`: each member still pending
        is re-queued once if its deadline has not passed, else answered `error`."""
        self._drain_worker(msg.worker)  # results it sent before dying answer their requests
        now = time.monotonic()
        again = []
        for token in msg.tokens:
            p = self._pending.get(token)
            if p is None:
                self._settle(token)  # answered already (a zombie: its slot is free now)
                continue
            if p.retries < MAX_CRASH_RETRIES and p.desc is not None and now < p.desc[4]:
                p.retries += 1
                again.append(p.desc)
                continue
            why = ("it had been re-queued once already" if p.retries
                   else "its deadline has passed")  # fmt: skip
            text = (f"worker {msg.worker} (pid {msg.pid}) died while running this request "
                    f"({msg.reason}); {why}")  # fmt: skip
            self._answer_token(token, STATUS_ERROR, text)
        if again:
            log.warning("worker %d (pid %d) died running %d request(s); %d re-queued",
                        msg.worker, msg.pid, len(msg.tokens), len(again))  # fmt: skip
            self._submit.extend(again)
            self._flush_submit()

    def _drain_worker(self, index: int) -> None:
        """Handles what worker `index`'s channel holds now. For a dead worker that is what
        it sent before dying, up to its EOF; for a live one (already replaced by its
        restart) it is ordinary results, and the loop ends when nothing more is there."""
        ch = self.workers[index]
        for _ in range(1000):  # bounded: a dead peer reaches EOF after what it wrote
            if ch.sock is None:
                return
            try:
                batch = ch.recv()
            except (ChannelClosed, OSError):
                self._forget_channel(ch)
                return
            if not batch:
                return
            for parts in batch:
                self._dispatch_backend(parts)

    def _on_attach_worker(self, msg: msgs.AttachWorker) -> None:
        # NOTE: the descriptor follows the message on the pipe: take it before anything else
        fd = recv_handle(self.conn)
        i = msg.worker
        self._drain_worker(i)  # the dead one's last results count
        self._forget_channel(self.workers[i])
        ch = Channel(socket.socket(fileno=fd), f"worker {i}->frontend")
        self.workers[i] = ch
        self.channels[ch.fileno()] = ch
        self.poller.register(ch.fileno(), self._zmq.POLLIN)
        log.info("worker %d: attached its restart (pid %d)", i, msg.pid)

    # ------------------------------------------------------------------ answering
    def _reply(self, envelope: list, header: bytes, data: list | None = None) -> None:
        frames = [*envelope, header]
        if data:
            frames.extend(data)
        # never blocks: a reply its client cannot take now waits in the outbox
        self.outbox.send(frames)

    def _answer_token(self, token: int, status: str, text: str) -> None:
        p = self._pending.pop(token, None)
        if p is None:
            self._settle(token)  # a zombie's late answer: discarded, its slot freed
            return
        self._release(p)
        self._count_answer(p, token, status)
        self._reply(p.envelope, wire.encode_reply(p.req_id, status, text))

    def _count_answer(self, p: _Pending, token: int, status: str) -> None:
        """Counts an answer other than ok, and forgets the request's cancel key."""
        m = p.model
        if status == STATUS_DROPPED:
            m.dropped += 1
            self.dropped += 1
        elif status == STATUS_REJECTED:
            m.rejected += 1
            self.rejected += 1
        elif status == STATUS_CANCELLED:
            m.cancelled += 1
            self.cancels.cancelled += 1
        else:
            m.error += 1
            self.error += 1
        if p.metrics is not None:
            p.metrics.count(status)
        self.cancels.done(p.key, token)

    def _release(self, p: _Pending) -> None:
        p.model.free.append(p.slot)

    def _count_bad_request(self) -> None:
        """A request unreadable enough that its op is unknown counts as a failed infer."""
        self.received += 1
        self.error += 1
        self.metrics.unattributed.error += 1

    def _close(self) -> None:
        # whatever is still in flight gets its one answer before the socket closes
        reason = self.shutdown_reason or "the server is shutting down"
        for token in list(self._pending):
            self._answer_token(token, STATUS_REJECTED, f"{reason}: the request did not run")
        for token in list(self.cancels.waiting):  # cancels the scheduler did not answer
            for envelope, cancel_id in self.cancels.take_waiting(token):
                self._reply(envelope, wire.encode_reply(cancel_id, STATUS_OK,
                                                        result=CANCEL_ANSWERED))  # fmt: skip
        for ch in [self.scheduler, *self.workers]:
            ch.close()
        self.outbox.retry()
        if self.outbox.n_parked:
            log.warning("%d repl(ies) still waiting for their client are dropped at shutdown",
                        self.outbox.drop_all())  # fmt: skip
        self.router.close()  # lingers up to CLOSE_LINGER_MS so the last replies go out
        if self._auth is not None:
            self._auth.stop()  # its sockets are on ctx: before term()
        self.ctx.term()
        for r in self.rings:
            r.close()
        log.info("stopped")


def run_frontend_process(
    config: InstanceConfig, conn: Connection, scheduler_sock, worker_socks: list
) -> None:
    """Entry point of the frontend process (spawned by the supervisor).

    `scheduler_sock` and `worker_socks` are this process's ends of the socket pairs to
    the scheduler and to each worker."""

    def body() -> None:
        Frontend(config, conn, scheduler_sock, worker_socks).run()

    child_main("frontend", 0, config, conn, body)
