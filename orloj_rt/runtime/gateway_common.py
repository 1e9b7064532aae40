"""What the gateway's front ends share: the process, the frontend link, KServe v2 tensors.

    HTTP clients --> http_gateway.Gateway (aiohttp; + Prometheus /metrics) --+
                                                                             +-- ZeroMQ DEALER(s),
    gRPC clients --> grpc_gateway.GrpcGateway (grpc.aio)  --------------------+   wire protocol v1
                                                                                    |
                                                           frontend's ROUTER <------+
                                                           ipc://@orloj_rt.<instance>.gateway

One gateway process (`run_gateway_process`, spawned by the supervisor when --http-port,
--metrics-port or --grpc-port is given) runs, on one asyncio event loop, the front ends
whose ports are given. Each is a client of the frontend over ZeroMQ (`FrontendLink`), on
the frontend's internal endpoint, so that its requests take exactly the path of ZeroMQ
clients' (docs/http.md, docs/grpc.md). The pieces both protocols need live here: the
link, the error type, the KServe v2 datatypes, splitting a tensor with a batch dimension
into one wire request per member (`members`), sending them (`infer`), and reading the
replies back (`check_replies`, `stack_output`, `reply_params`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import msgpack
import numpy as np

from orloj_rt.models.spec import DTYPES, ModelSpec
from orloj_rt.protocol import messages as msgs
from orloj_rt.protocol.wire import (
    PROTOCOL_VERSION,
    STATUS_DROPPED,
    STATUS_ERROR,
    STATUS_OK,
    new_routing_id,
)
from orloj_rt.runtime.proc import InstanceConfig, child_main, send_to_parent, settle_memory

log = logging.getLogger("orloj_rt.gateway")

LOOPBACK = "127.0.0.1"
ALL_INTERFACES = "0.0.0.0"
MODEL_VERSION = "1"  # orloj-rt serves one version of each model
FRONTEND_TIMEOUT_S = 60.0  # safety net: the frontend answers every request, at once or later
HEALTH_TIMEOUT_S = 2.0  # a health probe that takes longer says "not live"
MIN_BODY_LIMIT = 8 << 20  # the default body limit, unless a model's full batch needs more

# wire dtype <-> KServe v2 datatype
KSERVE_DATATYPES = {
    "float32": "FP32", "float16": "FP16", "bfloat16": "BF16", "int64": "INT64",
    "int32": "INT32", "int8": "INT8", "uint8": "UINT8", "bool": "BOOL",
}  # fmt: skip
WIRE_DTYPES = {v: k for k, v in KSERVE_DATATYPES.items()}
_packb = msgpack.Packer(use_bin_type=True).pack
# the frontend's texts for a rejection under load (frontend.py: a full ring; the
# scheduler's Discard); any other rejection means the server cannot serve at all
LOAD_REJECTIONS = ("overloaded", "rejected by the scheduler", "rejected by the scheduling policy")
# request parameters that travel to the frontend as they are (checked there)
REQUEST_PARAMS = ("slo_ms", "app", "hint", "priority")


def internal_endpoint(instance: str) -> str:
    """The frontend's extra ROUTER endpoint for the gateway: a Linux abstract socket name
    (no file to clean up, reachable only from this machine's network namespace)."""
    return f"ipc://@orloj_rt.{instance}.gateway"


def listen_host(allow_remote: bool) -> str:
    """Where the gateway's ports listen: loopback only, unless --allow-remote."""
    return ALL_INTERFACES if allow_remote else LOOPBACK


@dataclass(frozen=True)
class HttpLimits:
    """What a slow, idle or oversized HTTP client may cost (docs/http.md, "Limits"); the
    `orloj-rt start` flags --http-header-timeout, --http-body-timeout,
    --http-keepalive-timeout and --http-max-body-bytes set them."""

    # a request's headers must be complete this long after its first byte (the first
    # request on a connection: after the connect); else the connection is closed
    header_timeout_s: float = 10.0
    # an inference request's body must be complete this long after its headers; else 408
    body_timeout_s: float = 60.0
    # a connection with no request in progress is closed after this long
    keepalive_timeout_s: float = 75.0
    # the largest request body (413 above it); None: default_body_limit(the models)
    max_body_bytes: int | None = None


@dataclass(frozen=True)
class GatewayOptions:
    http_port: int | None = None  # KServe v2 over HTTP; None: off
    metrics_port: int | None = None  # Prometheus; None: off
    host: str = LOOPBACK
    limits: HttpLimits = HttpLimits()
    grpc_port: int | None = None  # KServe v2 over gRPC; None: off

    @property
    def any_port(self) -> bool:
        return any(p is not None for p in (self.http_port, self.metrics_port, self.grpc_port))


class GatewayError(Exception):
    """A request the gateway answers with an error. `code` is the HTTP status it is
    answered with on the HTTP port (the gRPC port maps it, grpc_gateway.grpc_code);
    `status` the wire status (dropped, rejected, error) when the frontend gave one."""

    def __init__(self, code: int, text: str, status: str | None = None):
        super().__init__(text)
        self.code = code
        self.text = text
        self.status = status


def is_load_rejection(error: str | None) -> bool:
    """A `rejected` for too much load (retry later), not for a server that cannot serve."""
    return (error or "").startswith(LOAD_REJECTIONS)


def status_code(status: str, error: str) -> int:
    """The HTTP status for a wire outcome other than ok (docs/http.md): error 400, dropped
    503, rejected 429 under load and 503 when the server cannot serve at all."""
    if status == STATUS_ERROR:
        return 400
    if status == STATUS_DROPPED:
        return 503
    return 429 if is_load_rejection(error) else 503


def default_body_limit(specs: list[ModelSpec]) -> int:
    """The largest request the gateway reads by default: a full batch of the largest inputs
    as JSON numbers (up to ~20 characters per value) and 1 MiB, at least MIN_BODY_LIMIT
    (8 MiB). The HTTP body limit (--http-max-body-bytes overrides it) and the gRPC
    message limit."""
    most = 0
    for s in specs:
        per = sum(math.prod(t.max_shape) * 24 for t in s.inputs)
        most = max(most, per * s.max_batch_size)
    return max(MIN_BODY_LIMIT, most + (1 << 20))


def serving(health: dict | None) -> bool:
    """Ready for inference, from a `health` answer (None: the frontend did not answer): a
    worker is ready and the server is not shutting down."""
    if health is None or health.get("status") == "shutting_down":
        return False
    return health.get("workers_ready", 0) > 0


def np_dtype(wire_dtype: str) -> np.dtype:
    return np.dtype(DTYPES[wire_dtype][0])


def itemsize(wire_dtype: str) -> int:
    return DTYPES[wire_dtype][1]


# ---------------------------------------------------------------------- the frontend link
class FrontendLink:
    """A DEALER on the frontend's ROUTER: any number of requests in flight, answers
    matched by id (every request gets exactly one answer: docs/protocol.md).

    A plain pyzmq socket driven by the event loop (`add_reader` on its FD), not
    zmq.asyncio: a round trip costs 139 us instead of 177 us p50 on the development VM
    (bench/gateway_parts.py, docs/http.md). The FD is edge-triggered: whoever may have
    consumed the edge (a send, a receive) drains what is readable, until ZMQ_EVENTS says
    there is nothing left."""

    def __init__(self, endpoint: str, curve=None):
        import zmq

        self._zmq = zmq
        self.endpoint = endpoint
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        # kept across a reconnect: replies in flight then wait for it (outbox.py)
        self._sock.setsockopt(zmq.ROUTING_ID, new_routing_id())
        self._sock.setsockopt(zmq.SNDHWM, 0)  # never drop or block: the frontend answers
        self._sock.setsockopt(zmq.RCVHWM, 0)
        if curve is not None:  # --curve-keys: the ROUTER's CURVE covers this endpoint too
            curve.apply(self._sock)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.FD, self._drain)

    async def request(self, header: dict, frames: list, timeout_s: float) -> tuple[dict, list]:
        """Sends one wire request; (reply header, data frames). `v` and `id` are set here,
        in `header` itself: after the send, header["id"] is the request's wire id (what a
        cancel names)."""
        if self.closed:
            raise GatewayError(503, "the server is shutting down: not accepting new requests")
        zmq = self._zmq
        rid = next(self._ids)
        header["v"] = PROTOCOL_VERSION
        header["id"] = rid
        try:
            packed = _packb(header)
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. an int beyond 64 bits
            raise GatewayError(400, f"the request's parameters cannot be encoded for the "
                               f"frontend ({exc})") from None  # fmt: skip
        fut = self._loop.create_future()
        self._waiting[rid] = fut
        # a timer, not asyncio.wait_for: that wraps every request in one more task
        timer = self._loop.call_later(timeout_s, _expire, fut, timeout_s)
        try:
            # SNDHWM 0: a DEALER queues without limit, so a non-blocking send never fails
            self._sock.send_multipart([b"", packed, *frames], zmq.NOBLOCK, copy=False)
            self._drain()  # the send may have taken the FD's edge for a pending reply
            return await fut
        finally:
            timer.cancel()
            self._waiting.pop(rid, None)

    def cancel_soon(self, sent: list[dict]) -> None:
        """Cancels the wire requests whose headers `sent` went out (their "id"), without
        waiting: each cancel's own answer is dropped by `_drain` (nobody waits for it), and
        each request's, `cancelled` or whatever came first, too (docs/protocol.md)."""
        if self.closed:
            return
        zmq = self._zmq
        for h in sent:
            target = h.get("id")
            if target is None:
                continue  # never sent
            packed = _packb({"v": PROTOCOL_VERSION, "id": next(self._ids), "op": "cancel",
                             "target": target})  # fmt: skip
            self._sock.send_multipart([b"", packed], zmq.NOBLOCK, copy=False)
        self._drain()

    async def op(self, op: str, timeout_s: float, **fields: Any) -> Any:
        """A control op (health, models, stats): its `result`."""
        header, _ = await self.request({"op": op, **fields}, [], timeout_s)
        if header.get("status") != STATUS_OK:
            raise GatewayError(503, f"{op}: {header.get('error')}")
        return header.get("result")

    def _drain(self) -> None:
        zmq = self._zmq
        sock = self._sock
        if self.closed:
            return
        while sock.get(zmq.EVENTS) & zmq.POLLIN:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            try:
                header = msgpack.unpackb(frames[1].buffer, raw=False, strict_map_key=False)
            except Exception:  # noqa: BLE001 - the frontend speaks the protocol; never fatal
                log.error("ignored an unreadable reply from the frontend")
                continue
            fut = self._waiting.get(header.get("id")) if isinstance(header, dict) else None
            if fut is not None and not fut.done():
                fut.set_result((header, [f.buffer for f in frames[2:]]))

    async def close(self) -> None:
        self.closed = True
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(GatewayError(503, "the server is shutting down"))
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._sock.FD)
        self._sock.close(linger=0)
        self._ctx.term()


def _expire(fut: asyncio.Future, timeout_s: float) -> None:
    if not fut.done():
        fut.set_exception(GatewayError(504, f"no answer from the orloj-rt frontend within "
                                            f"{timeout_s:g} s"))  # fmt: skip


# ---------------------------------------------------------------------- KServe v2 inference
class Input:
    """One input tensor of a KServe v2 request, as the wire protocol takes it."""

    __slots__ = ("name", "dtype", "shape", "data")

    def __init__(self, name: str, dtype: str, shape: list, data):
        self.name = name
        self.dtype = dtype  # wire dtype
        self.shape = shape
        self.data = data  # bytes-like, prod(shape) x itemsize


def members(spec: ModelSpec, inputs: list[Input]) -> tuple[int, list]:
    """(N, one (inputs meta, frames) per wire request). N = 0: no batch dimension.

    A leading batch dimension is recognised by rank: one more dim than the model's input.
    Inputs that match neither rank (or unknown names) go to the frontend as they are, so
    that its validation answers them, with the same text a ZeroMQ client gets."""
    by_name = {t.name: t for t in spec.inputs}
    ranks = set()
    for x in inputs:
        t = by_name.get(x.name)
        if t is None or len(x.shape) not in (len(t.shape), len(t.shape) + 1):
            ranks = {"as is"}
            break
        ranks.add("batched" if len(x.shape) == len(t.shape) + 1 else "single")
    if ranks != {"batched"}:
        if len(ranks) > 1:
            raise GatewayError(400, "either every input has the leading batch dimension or "
                               "none does")  # fmt: skip
        meta = [{"name": x.name, "dtype": x.dtype, "shape": x.shape} for x in inputs]
        return 0, [(meta, [x.data for x in inputs])]
    sizes = {x.shape[0] for x in inputs}
    if len(sizes) != 1:
        raise GatewayError(400, f"the inputs disagree on the batch size (dim 0): "
                           f"{sorted(sizes)}")  # fmt: skip
    n = sizes.pop()
    if not 1 <= n <= spec.max_batch_size:
        raise GatewayError(400, f"batch dimension {n} is outside [1, {spec.max_batch_size}] "
                           f"(model {spec.name!r}'s max_batch_size); each member is a "
                           "request of its own, batched by the server")  # fmt: skip
    out = []
    for k in range(n):
        meta, frames = [], []
        for x in inputs:
            per = len(x.data) // n
            meta.append({"name": x.name, "dtype": x.dtype, "shape": x.shape[1:]})
            frames.append(memoryview(x.data)[k * per : (k + 1) * per])
        out.append((meta, frames))
    return n, out


async def infer(link: FrontendLink, spec: ModelSpec, parts: list, params: dict,
                sent: list | None = None) -> list:  # fmt: skip
    """Sends one wire request per member (`parts`, from `members`) with the request
    parameters the wire protocol takes (REQUEST_PARAMS, checked by the frontend as for any
    client); their (header, frames) replies, in order. `sent`, when given, collects the
    wire request headers as they go out (their "id": what a cancel names)."""
    base: dict[str, Any] = {"op": "infer", "model": spec.name}
    for key in REQUEST_PARAMS:
        if key in params:
            base[key] = params[key]
    timeout = FRONTEND_TIMEOUT_S
    slo = params.get("slo_ms")
    if isinstance(slo, (int, float)) and not isinstance(slo, bool) and slo > 0:
        # min() before float(): an int beyond float's range must not raise here
        timeout += float(min(slo, 86_400_000)) / 1000.0
    headers = [{**base, "inputs": meta} for meta, _ in parts]
    if sent is not None:
        sent.extend(headers)
    if len(parts) == 1:  # the common case: no task per member
        return [await link.request(headers[0], parts[0][1], timeout)]
    return list(await asyncio.gather(*(
        link.request(h, frames, timeout) for h, (_, frames) in zip(headers, parts, strict=True)
    )))  # fmt: skip


_SEVERITY = {STATUS_ERROR: 0, "rejected": 1, STATUS_DROPPED: 2}


def check_replies(n: int, replies: list) -> None:
    """Raises GatewayError for the worst reply that is not ok (error, then rejected, then
    dropped); with a batch dimension, the text says how many members were not ok."""
    bad = [(k, h) for k, (h, _) in enumerate(replies) if h.get("status") != STATUS_OK]
    if not bad:
        return
    k, h = min(bad, key=lambda kh: _SEVERITY.get(kh[1].get("status"), 0))
    status = h.get("status", STATUS_ERROR)
    text = h.get("error") or status
    if n > 1:
        text = f"{len(bad)} of {n} batch members were not ok; member {k}: {text}"
    raise GatewayError(status_code(status, h.get("error", "")), text, status)


def stack_output(spec: ModelSpec, j: int, n: int, replies: list) -> tuple[list, Any]:
    """Output j of ok replies: (shape, raw bytes), stacked along a new dim 0 with a batch
    dimension of n (members whose outputs differ in shape: 500)."""
    shapes = [h["outputs"][j]["shape"] for h, _ in replies]
    parts = [frames[j] for _, frames in replies]
    if not n:
        return shapes[0], parts[0]
    if any(s != shapes[0] for s in shapes):
        raise GatewayError(500, f"output {spec.outputs[j].name!r} differs in shape across "
                           f"the batch members ({shapes}); send them one request each")
    return [n, *shapes[0]], (b"".join(parts) if n > 1 else parts[0])


def reply_params(replies: list) -> dict[str, Any]:
    """The answer's parameters: the wire protocol's timing (with a batch dimension:
    met_slo of all members, the largest of each time)."""
    timings = [h.get("timing") or {} for h, _ in replies]
    params: dict[str, Any] = {"met_slo": all(h.get("met_slo") for h, _ in replies)}
    for key in ("queue_us", "exec_us", "total_us", "batch_size"):
        params[key] = max(t.get(key, 0) for t in timings)
    # the model variant that served them (a model with variants): with a batch dimension
    # whose members were served by different variants, their names in member order, joined
    # by commas
    variants = [h.get("variant") for h, _ in replies]
    if any(v is not None for v in variants):
        names = [v or "" for v in variants]
        params["variant"] = names[0] if len(set(names)) == 1 else ",".join(names)
    return params


# ---------------------------------------------------------------------- the process
def run_gateway_process(config: InstanceConfig, conn: Connection, options: GatewayOptions) -> None:
    """Entry point of the gateway process (spawned by the supervisor when --http-port,
    --metrics-port or --grpc-port is given)."""

    def body() -> None:
        asyncio.run(_serve(config, conn, options))

    child_main("gateway", 0, config, conn, body)


def _front_ends(config: InstanceConfig, options: GatewayOptions) -> list:
    """The servers whose ports are given; each has start(), stop() and urls."""
    out: list = []
    if options.http_port is not None or options.metrics_port is not None:
        from orloj_rt.runtime.http_gateway import Gateway

        out.append(Gateway(config, options))
    if options.grpc_port is not None:
        from orloj_rt.runtime.grpc_gateway import GrpcGateway

        out.append(GrpcGateway(config, options))
    return out


async def _serve(config: InstanceConfig, conn: Connection, options: GatewayOptions) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_parent() -> None:
        try:
            while conn.poll():
                msg = msgs.decode(conn.recv_bytes())
                if isinstance(msg, msgs.Shutdown):
                    stop.set()
                else:
                    log.debug("ignored %s from the supervisor", type(msg).__name__)
        except (EOFError, OSError):  # the supervisor is gone
            stop.set()

    started: list = []
    try:
        for front in _front_ends(config, options):
            started.append(front)  # stopped below even if its start fails half-way
            await front.start()
        urls: dict[str, str] = {}
        for front in started:
            urls.update(front.urls)
        settle_memory()  # as the other processes: no full collection of the startup objects
        loop.add_reader(conn.fileno(), on_parent)
        send_to_parent(conn, msgs.ChildReady("gateway", 0, os.getpid(), urls))
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        for front in reversed(started):
            await front.stop()
        log.info("stopped")
