"""The gateway's HTTP front end: KServe v2 (Open Inference Protocol) over HTTP, and
Prometheus /metrics. The process that runs it, the frontend link and the KServe v2 pieces
it shares with the gRPC front end (grpc_gateway.py) are in gateway_common.py.

    HTTP clients (tritonclient, curl, KServe / MLServer clients)     Prometheus
        | POST /v2/models/{name}/infer ... (--http-port)                 | GET /metrics
        v                                                                v (--metrics-port)
    gateway: aiohttp --- one ZeroMQ DEALER, wire protocol v1 ---> frontend's ROUTER
                          ipc://@orloj_rt.<instance>.gateway       (the clients' socket)

An HTTP request becomes wire-protocol requests on the frontend's own ROUTER socket, bound
to one more, instance-internal endpoint (an abstract Unix socket name: no file, no port).
So HTTP requests take exactly the path of ZeroMQ clients: the same validation, rings,
scheduler, SLOs, statuses and counters; the gateway adds only HTTP framing. A tensor
with a leading batch dimension of N becomes N wire requests (orloj-rt batches on the
server, each member with its own deadline), answered together.

Why a process and not a thread in the frontend (measured in bench/e2e_overhead.py, see
docs/http.md): the frontend is the instance's busiest single-threaded loop, and an HTTP
stack in a thread of it would take the GIL from that loop on every request and stall it
for a slow or hostile HTTP client; a separate process costs one more ZeroMQ hop pair
(a `health` round trip: 120 to 240 us here), and the HTTP path stays within the 1 ms
budget (median 558 us added over ZeroMQ, p50, over 16 runs). When no gateway port
(--http-port, --metrics-port, --grpc-port) is given, no gateway process exists and the
frontend binds no internal endpoint.

Outcome -> HTTP status (docs/http.md): ok 200; error 400 (with the frontend's text);
dropped 503; rejected 429 when the server is overloaded (a full ring, the policy's
admission control) and 503 when it cannot serve at all (starting up, shutting down, a
failed worker), both with Retry-After; an unknown model 404. Every response written on
the KServe port is counted in orloj_http_requests_total (_Guard's hook); an unexpected
exception is a 500 with its traceback in the log. Slow and idle connections are closed
(HttpLimits: header, body and keep-alive timeouts; `_Watch`), and bodies are capped.

The library is aiohttp: asyncio-native, so one event loop carries the HTTP server and the
ZeroMQ socket (a plain pyzmq socket on the loop's reader, `FrontendLink`) with no thread
hand-off; its HTTP parser is compiled (llhttp); it is maintained by aio-libs and widely
deployed; and prometheus_client's encoder plugs into it (the metrics port) without a
second server stack. With --curve-keys, the link authenticates with the key pair the
supervisor made for the gateway at start (`security.internal_client_keys`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import os
import reprlib
from typing import Any

import numpy as np

from orloj_rt.models.spec import ModelSpec
from orloj_rt.runtime.gateway_common import (  # noqa: F401 - re-exported: the HTTP names
    ALL_INTERFACES,
    FRONTEND_TIMEOUT_S,
    HEALTH_TIMEOUT_S,
    KSERVE_DATATYPES,
    LOAD_REJECTIONS,
    LOOPBACK,
    MIN_BODY_LIMIT,
    MODEL_VERSION,
    WIRE_DTYPES,
    FrontendLink,
    GatewayError,
    GatewayOptions,
    HttpLimits,
    Input,
    check_replies,
    default_body_limit,
    internal_endpoint,
    itemsize,
    listen_host,
    members,
    np_dtype,
    reply_params,
    serving,
    stack_output,
    status_code,
)
from orloj_rt.runtime.gateway_common import infer as infer_members
from orloj_rt.runtime.proc import InstanceConfig, StartupProblem

log = logging.getLogger("orloj_rt.gateway")

HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor data extension
SHUTDOWN_TIMEOUT_S = 2.0  # for open HTTP connections when the instance stops

# the HTTP side's names for the shared pieces (gateway_common.py)
HttpError = GatewayError  # answered as {"error": text} with its code
_Input = Input
_members = members
_np_dtype = np_dtype


# ---------------------------------------------------------------------- KServe v2
def _json_values(buf, wire_dtype: str) -> list:
    """Raw little-endian bytes -> a flat JSON list (bfloat16 as the floats it encodes).

    Non-finite floats become the strings "NaN", "Infinity" and "-Infinity": JSON has no
    such numbers (RFC 8259). Triton writes them as the bare tokens NaN / Infinity (rapidjson's
    kWriteNanAndInfFlag), which strict parsers reject; tritonclient's as_numpy() and numpy
    read the strings back as the same floats (docs/http.md)."""
    if wire_dtype == "bfloat16":
        arr = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
    else:
        arr = np.frombuffer(buf, _np_dtype(wire_dtype))
    values = arr.tolist()
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            for k in np.flatnonzero(bad).tolist():
                v = values[k]
                values[k] = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return values


_BRIEF = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxstring, _BRIEF.maxother = 2, 4, 4, 40, 40


def _brief(value: Any) -> str:
    """A short, safe rendering of a client's value for an error text: JSON spelling for
    scalars, a truncated repr (never recursing far) for anything nested."""
    if value is None or isinstance(value, (bool, int, float, str)):
        try:
            text = json.dumps(value)
        except ValueError:  # an int of more than 4300 digits
            return f"an integer of {value.bit_length()} bits"
        return text if len(text) <= 60 else text[:57] + "..."
    return _BRIEF.repr(value)


# JSON value types each kind of datatype takes (Triton's rules: http_server.cc reads
# INT*/UINT* with rapidjson's AsInt/AsUInt, FP* with AsDouble, BOOL with AsBool)
_JSON_TYPES = {"i": frozenset({int}), "u": frozenset({int}), "f": frozenset({int, float}),
               "b": frozenset({bool})}  # fmt: skip
_JSON_TAKES = {"i": "integers", "u": "integers", "f": "numbers (not true/false)",
               "b": "true or false"}  # fmt: skip
_I64 = np.iinfo(np.int64)
_F64_MAX = float(np.finfo(np.float64).max)


def _json_tensor(name: str, datatype: str, wire_dtype: str, data: Any) -> np.ndarray:
    """JSON "data" (flat in row-major order, or nested) -> a flat array of the datatype.

    Nothing is converted silently: INT*/UINT* take integers, FP* numbers but not booleans,
    BOOL true/false only; an integer outside the datatype's range, or a number beyond its
    largest finite float, is an error. The checks run over the whole list at C speed
    (the set of the values' types; numpy's conversion and range checks); only an error's
    text looks for the first offending value in Python. Nested lists must be even (Triton
    only counts the values)."""
    target = _np_dtype(wire_dtype)
    kind = target.kind
    flat = data if isinstance(data, list) else [data]
    types = set(map(type, flat))
    while list in types:  # nested: one level at a time, each as even as a tensor's
        lengths = set(map(len, flat)) if len(types) == 1 else set()
        if len(lengths) != 1:
            raise HttpError(400, f"input {name!r}: \"data\" is nested unevenly: at each "
                            "level, all lists or all values, the lists of one length; "
                            f"got {_brief(data)}")  # fmt: skip
        flat = list(itertools.chain.from_iterable(flat))
        types = set(map(type, flat))
    allowed = _JSON_TYPES[kind]
    if not types <= allowed:
        k, v = next((k, v) for k, v in enumerate(flat) if type(v) not in allowed)
        raise _bad_value(name, datatype, k, v, f"{datatype} takes {_JSON_TAKES[kind]}")
    if kind == "b":
        return np.array(flat, dtype=np.bool_)
    if kind == "f":
        try:
            wide = np.array(flat, dtype=np.float64)
        except OverflowError:  # an integer beyond float64
            k, v = next((k, v) for k, v in enumerate(flat) if abs(v) > _F64_MAX)
            raise _bad_value(name, datatype, k, v, f"beyond {datatype}'s range") from None
        with np.errstate(over="ignore"):
            arr = wide.astype(target)
        if not np.isfinite(arr).all():  # NaN and infinities sent as such are kept
            over = np.isinf(arr) & np.isfinite(wide)
            if over.any():
                k = int(np.argmax(over))
                limit = float(np.finfo(target).max)
                raise _bad_value(name, datatype, k, flat[k], f"beyond {datatype}'s largest "
                                 f"finite value {limit:g}")  # fmt: skip
        return arr
    try:
        wide = np.array(flat, dtype=np.int64)
    except OverflowError:
        k, v = next((k, v) for k, v in enumerate(flat) if not _I64.min <= v <= _I64.max)
        raise _bad_value(name, datatype, k, v, f"outside {datatype}'s range") from None
    if target == wide.dtype:
        return wide
    info = np.iinfo(target)
    out = (wide < info.min) | (wide > info.max)
    if out.any():
        k = int(np.argmax(out))
        raise _bad_value(name, datatype, k, flat[k], f"outside {datatype}'s range "
                         f"[{info.min}, {info.max}]")  # fmt: skip
    return wide.astype(target)


def _bad_value(name: str, datatype: str, k: int, value: Any, why: str) -> HttpError:
    return HttpError(400, f"input {name!r} ({datatype}): \"data\" holds {_brief(value)} "
                     f"(value {k} in row-major order): {why}")  # fmt: skip


def _tensor_meta(t, batched: bool) -> dict:
    shape = list(t.shape)
    return {"name": t.name, "datatype": KSERVE_DATATYPES[t.dtype],
            "shape": [-1, *shape] if batched else shape}  # fmt: skip


class KServeApp:
    """The /v2 routes (docs/http.md)."""

    def __init__(self, specs: list[ModelSpec], link: FrontendLink,
                 limits: HttpLimits | None = None):  # fmt: skip
        limits = limits if limits is not None else HttpLimits()
        self.specs = {s.name: s for s in specs}
        self.link = link
        self.limits = limits
        self.max_body_bytes = (limits.max_body_bytes if limits.max_body_bytes is not None
                               else self.body_limit(specs))  # fmt: skip

    def routes(self) -> list:
        from aiohttp import web

        r = []
        r.append(web.get("/v2", self.server_metadata))
        r.append(web.get("/v2/health/live", self.live))
        r.append(web.get("/v2/health/ready", self.ready))
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            r.append(web.get(base, self.model_metadata))
            r.append(web.get(base + "/ready", self.model_ready))
            r.append(web.get(base + "/config", self.model_config))
            r.append(web.post(base + "/infer", self.infer))
        return r

    @staticmethod
    def body_limit(specs: list[ModelSpec]) -> int:
        """The default body limit (--http-max-body-bytes overrides it): a full batch of the
        largest inputs as JSON numbers (up to ~20 characters per value) and 1 MiB, at least
        MIN_BODY_LIMIT (8 MiB)."""
        return default_body_limit(specs)

    # ------------------------------------------------------------------ health, metadata
    async def server_metadata(self, request):
        from orloj_rt import __version__

        return _json({"name": "orloj-rt", "version": __version__,
                      "extensions": ["binary_tensor_data", "model_configuration"]})  # fmt: skip

    async def _health(self) -> dict | None:
        try:
            return await self.link.op("health", HEALTH_TIMEOUT_S)
        except HttpError:
            return None

    async def live(self, request):
        h = await self._health()
        return _json({"live": h is not None}, 200 if h is not None else 503)

    @staticmethod
    def _serving(h: dict | None) -> bool:
        return serving(h)

    async def ready(self, request):
        ok = self._serving(await self._health())
        return _json({"ready": ok}, 200 if ok else 503)

    def _spec(self, request) -> ModelSpec:
        name = request.match_info["name"]
        spec = self.specs.get(name)
        if spec is None:
            raise HttpError(404, f"unknown model {name!r:.80}; this server serves: "
                            f"{', '.join(self.specs)}")  # fmt: skip
        version = request.match_info.get("version")
        if version is not None and version != MODEL_VERSION:
            raise HttpError(404, f"model {name!r} has no version {version!r:.40}; orloj-rt "
                            f"serves version {MODEL_VERSION} only")  # fmt: skip
        return spec

    async def model_metadata(self, request):
        spec = self._spec(request)
        return _json({
            "name": spec.name,
            "versions": [MODEL_VERSION],
            "platform": "orloj-rt",
            "inputs": [_tensor_meta(t, True) for t in spec.inputs],
            "outputs": [_tensor_meta(t, True) for t in spec.outputs],
        })  # fmt: skip

    async def model_ready(self, request):
        spec = self._spec(request)
        ok = self._serving(await self._health())
        return _json({"name": spec.name, "ready": ok}, 200 if ok else 503)

    async def model_config(self, request):
        """Triton's model configuration extension, as far as orloj-rt has the fields."""
        spec = self._spec(request)

        def tensors(ts) -> list:
            return [{"name": t.name, "data_type": "TYPE_" + KSERVE_DATATYPES[t.dtype],
                     "dims": list(t.shape)} for t in ts]  # fmt: skip

        return _json({
            "name": spec.name,
            "platform": "orloj-rt",
            "max_batch_size": spec.max_batch_size,
            "input": tensors(spec.inputs),
            "output": tensors(spec.outputs),
            "parameters": {"default_slo_ms": {"string_value": f"{spec.default_slo_ms:g}"}},
        })  # fmt: skip

    # ------------------------------------------------------------------ infer
    async def _body(self, request) -> bytes:
        """The request body, within the body limit (413) and the body timeout (408)."""
        from aiohttp import web

        limit = self.max_body_bytes
        too_large = HttpError(413, f"the request body is larger than this server's limit "
                              f"of {limit} bytes (--http-max-body-bytes); send tensors as "
                              "binary data, or fewer per request")  # fmt: skip
        if (request.content_length or 0) > limit:  # refused before a byte of it is read
            raise too_large
        timeout_s = self.limits.body_timeout_s
        try:
            if request.content.is_eof():  # all here already (the usual case): no timer
                return await request.read()
            return await asyncio.wait_for(request.read(), timeout_s)
        except asyncio.TimeoutError:
            raise HttpError(408, f"the request body did not arrive within {timeout_s:g} s of "
                            "its headers (--http-body-timeout)") from None  # fmt: skip
        except web.HTTPRequestEntityTooLarge:  # a chunked body, without Content-Length
            raise too_large from None

    async def infer(self, request):
        spec = self._spec(request)
        body = await self._body(request)
        doc, binary = _split_body(body, request.headers.get(HEADER_LENGTH))
        req_id = doc.get("id")
        if req_id is not None and not isinstance(req_id, str):  # as Triton: a string
            raise HttpError(400, f"\"id\" must be a string, got {_brief(req_id)}")
        inputs = _parse_inputs(doc, binary)
        params = doc.get("parameters", {})
        if not isinstance(params, dict):  # [] and "" too: not an object
            raise HttpError(400, "\"parameters\" must be a JSON object")
        selected, binary_out = _requested_outputs(doc, params, spec)
        n, parts = members(spec, inputs)
        sent: list[dict] = []
        try:
            replies = await infer_members(self.link, spec, parts, params, sent)
        except asyncio.CancelledError:  # the client disconnected (handler_cancellation)
            self.link.cancel_soon(sent)
            raise
        return _infer_response(spec, req_id, n, replies, selected, binary_out)


def _json(obj: Any, status: int = 200):
    from aiohttp import web

    return web.Response(body=json.dumps(obj, separators=(",", ":"), allow_nan=False).encode(),
                        status=status, content_type="application/json")  # fmt: skip


def _split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """(the JSON inference header, the binary tensor data after it)."""
    view = memoryview(body)
    if header_length is None:
        json_part, binary = view, view[:0]
    else:
        try:
            n = int(header_length)
        except ValueError:
            n = -1
        if not 0 <= n <= len(body):
            raise HttpError(400, f"{HEADER_LENGTH} is {header_length!r:.40}, but the body "
                            f"has {len(body)} bytes: give the JSON header's length in bytes")
        json_part, binary = view[:n], view[n:]
    try:
        doc = json.loads(bytes(json_part))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"the inference request is not valid JSON ({exc}); with binary "
                        f"tensor data, set {HEADER_LENGTH} to the JSON part's length") from None
    except RecursionError:  # the C decoder stops at Python's recursion limit (~1000 levels)
        raise HttpError(400, "the inference request's JSON is nested too deeply (Python's "
                        "parser stops at about 1000 levels; a request needs fewer than "
                        "70)") from None  # fmt: skip
    if not isinstance(doc, dict):
        raise HttpError(400, "the inference request must be a JSON object")
    return doc, binary


def _parse_inputs(doc: dict, binary: memoryview) -> list[_Input]:
    raw = doc.get("inputs")
    if not isinstance(raw, list) or not raw:
        raise HttpError(400, "the inference request needs \"inputs\": a non-empty list of "
                        "tensors {name, shape, datatype, data | parameters.binary_data_size}")
    inputs, pos = [], 0
    for k, t in enumerate(raw):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise HttpError(400, f"inputs[{k}] must be an object with a \"name\"")
        name = t["name"]
        datatype = t.get("datatype")
        dtype = WIRE_DTYPES.get(datatype) if isinstance(datatype, str) else None
        if dtype is None:
            raise HttpError(400, f"input {name!r}: datatype {_brief(datatype)} is not served; "
                            f"orloj-rt takes {', '.join(WIRE_DTYPES)}")  # fmt: skip
        shape = t.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise HttpError(400, f"input {name!r}: \"shape\" must be a list of non-negative "
                            f"ints, got {_brief(shape)}")  # fmt: skip
        count = math.prod(shape)
        nbytes = count * itemsize(dtype)
        tparams = t.get("parameters") or {}
        size = tparams.get("binary_data_size") if isinstance(tparams, dict) else None
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size != nbytes:
                raise HttpError(400, f"input {name!r}: binary_data_size is {_brief(size)}, but "
                                f"shape {shape} of {datatype} takes {nbytes} bytes")  # fmt: skip
            if pos + size > len(binary):
                raise HttpError(400, f"input {name!r}: its {size} bytes of binary data go past "
                                f"the end of the body ({len(binary)} bytes after the JSON)")
            data = binary[pos : pos + size]
            pos += size
        elif "data" in t:
            if dtype == "bfloat16":
                raise HttpError(400, f"input {name!r}: BF16 tensors must be sent as binary "
                                "data (binary_data_size), not as JSON numbers")  # fmt: skip
            arr = _json_tensor(name, datatype, dtype, t["data"])
            if arr.size != count:
                raise HttpError(400, f"input {name!r}: \"data\" has {arr.size} values, but "
                                f"shape {shape} takes {count}")  # fmt: skip
            data = arr.tobytes()
        else:
            raise HttpError(400, f"input {name!r} has neither \"data\" nor "
                            "parameters.binary_data_size")  # fmt: skip
        inputs.append(_Input(name, dtype, shape, data))
    if pos != len(binary):
        raise HttpError(400, f"{len(binary)} bytes of binary data follow the JSON header, but "
                        f"the inputs' binary_data_size add up to {pos}")  # fmt: skip
    return inputs


def _requested_outputs(doc: dict, params: dict, spec: ModelSpec) -> tuple[list[int], list[bool]]:
    """The outputs to return (indices into the spec) and, for each, binary or JSON."""
    default_binary = params.get("binary_data_output") is True
    raw = doc.get("outputs")
    if raw is None:
        n = len(spec.outputs)
        return list(range(n)), [default_binary] * n
    if not isinstance(raw, list):
        raise HttpError(400, "\"outputs\" must be a list of {name, parameters} objects")
    index = {t.name: i for i, t in enumerate(spec.outputs)}
    selected, binary = [], []
    for o in raw:
        name = o.get("name") if isinstance(o, dict) else None
        if not isinstance(name, str) or name not in index:
            raise HttpError(400, f"unknown output {_brief(name)} of model {spec.name!r} (it "
                            f"has: {', '.join(index)})")  # fmt: skip
        oparams = o.get("parameters") or {}
        b = oparams.get("binary_data") if isinstance(oparams, dict) else None
        selected.append(index[name])
        binary.append(default_binary if b is None else b is True)
    return selected, binary


def _infer_response(spec: ModelSpec, req_id: Any, n: int, replies: list, selected: list,
                    binary_out: list):  # fmt: skip
    from aiohttp import web

    check_replies(n, replies)
    outputs, blobs = [], []
    for j, as_binary in zip(selected, binary_out, strict=True):
        t = spec.outputs[j]
        shape, data = stack_output(spec, j, n, replies)
        out: dict[str, Any] = {"name": t.name, "datatype": KSERVE_DATATYPES[t.dtype],
                               "shape": shape}  # fmt: skip
        if as_binary:
            out["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            out["data"] = _json_values(data, t.dtype)
        outputs.append(out)
    resp: dict[str, Any] = {"model_name": spec.name, "model_version": MODEL_VERSION,
                            "outputs": outputs, "parameters": reply_params(replies)}  # fmt: skip
    if req_id is not None:
        resp["id"] = req_id
    head = json.dumps(resp, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return web.Response(body=head, content_type="application/json")
    return web.Response(body=b"".join([head, *blobs]), content_type="application/octet-stream",
                        headers={HEADER_LENGTH: str(len(head))})  # fmt: skip


# ---------------------------------------------------------------------- HTTP connections
_IDLE, _HEADERS, _HANDLING = "idle", "headers", "handling"


class _Watch(asyncio.Protocol):
    """Sits between the transport and aiohttp's protocol of one connection (aiohttp's
    server is a protocol factory, made to be handed to loop.create_server), and closes
    the connection when it idles past the keep-alive timeout, or when a request's headers
    are not complete within the header timeout of its first byte (the first request's:
    of the connect). aiohttp has neither a header nor a body timeout, and its keep-alive
    timer is not reset by a trickle of bytes. The phase moves to HANDLING when the app's
    middleware sees the request (its headers are complete; the body timeout is the
    handler's, KServeApp._body) and to IDLE when the response is written."""

    __slots__ = ("inner", "guard", "transport", "phase", "timer")

    def __init__(self, inner, guard: _Guard):
        self.inner = inner  # aiohttp's RequestHandler
        self.guard = guard
        self.transport = None
        self.phase = _HEADERS
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.guard.watches[self.inner] = self
        self.inner.connection_made(transport)
        self._arm(self.guard.limits.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.phase is _IDLE:  # the first byte of the next request
            self.phase = _HEADERS
            self._arm(self.guard.limits.header_timeout_s)
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        self._cancel()
        self.transport = None
        self.guard.watches.pop(self.inner, None)
        self.inner.connection_lost(exc)

    def handling(self) -> None:
        self.phase = _HANDLING
        self._cancel()

    def idle(self) -> None:
        self.phase = _IDLE
        self._arm(self.guard.limits.keepalive_timeout_s)

    def close(self) -> None:
        self._cancel()
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size():  # close() would wait for a client that
                transport.abort()  # does not read to take what is queued
            else:
                transport.close()

    def _arm(self, seconds: float) -> None:
        self._cancel()
        self.timer = self.guard.loop.call_later(seconds, self._expired)

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.phase is not _HANDLING:
            log.debug("closing an HTTP connection: %s timeout (%s)",
                      "keep-alive" if self.phase is _IDLE else "header",
                      self.transport and self.transport.get_extra_info("peername"))  # fmt: skip
            self.close()


class _Guard:
    """The timeouts of one listening port's connections (_Watch), and a hook on every
    response aiohttp writes on it: the app's own, its middleware's, and the ones aiohttp
    makes itself (400 for unparsable HTTP, its 500 fallback). The hook is aiohttp's
    access-logger interface (access_log_class), which sees each response once, after it
    is written."""

    def __init__(self, limits: HttpLimits, on_response=None):
        from aiohttp import web
        from aiohttp.abc import AbstractAccessLogger

        self.limits = limits
        self.on_response = on_response  # (request, status) -> None
        self.loop = asyncio.get_running_loop()
        self.watches: dict[Any, _Watch] = {}
        guard = self

        class ResponseHook(AbstractAccessLogger):
            def log(self, request, response, time) -> None:
                guard.responded(request, response)

        self.hook_class = ResponseHook

        @web.middleware
        async def handling(request, handler):
            watch = guard.watches.get(request.protocol)
            if watch is not None:
                watch.handling()
            return await handler(request)

        self.middleware = handling

    def protocol_factory(self, server):
        return lambda: _Watch(server(), self)

    def responded(self, request, response) -> None:
        try:
            if self.on_response is not None:
                self.on_response(request, response.status)
            watch = self.watches.get(request.protocol)
            if watch is not None:
                if response.status == 408:  # the body is late: no reason to wait for it
                    watch.close()
                else:
                    watch.idle()
        except Exception:  # noqa: BLE001 - never break aiohttp's response path
            log.exception("the response hook failed")


# ---------------------------------------------------------------------- the process
class Gateway:
    """The HTTP front end's servers (KServe v2, /metrics), on the gateway process's event
    loop (gateway_common.run_gateway_process)."""

    def __init__(self, config: InstanceConfig, options: GatewayOptions):
        from prometheus_client import CollectorRegistry, Counter, disable_created_metrics

        from orloj_rt.runtime.metrics import SnapshotCollector
        from orloj_rt.runtime.security import internal_client_keys

        disable_created_metrics()  # no `_created` series: they double a scrape for nothing

        self.config = config
        self.options = options
        self.link = FrontendLink(config.internal_endpoint, internal_client_keys(config))
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector({"gateway": os.getpid()})
        self.registry.register(self.collector)
        self.http_requests = Counter(
            "orloj_http_requests", "KServe v2 HTTP requests, by route and status code",
            ["route", "code"], registry=self.registry)  # fmt: skip
        self.runners: list = []  # (asyncio server, aiohttp runner) per port
        self.urls: dict[str, str] = {}

    async def start(self) -> None:
        from aiohttp import web

        self.link.start()
        specs = [e.spec for e in self.config.models]
        opts = self.options
        if opts.http_port is not None:
            kserve = KServeApp(specs, self.link, opts.limits)
            guard = _Guard(opts.limits, self._count)
            app = web.Application(client_max_size=kserve.max_body_bytes,
                                  middlewares=[guard.middleware, self._middleware()])  # fmt: skip
            app.add_routes(kserve.routes())
            self.urls["http"] = await self._listen(app, guard, opts.http_port, "--http-port")
        if opts.metrics_port is not None:
            guard = _Guard(opts.limits)
            app = web.Application(middlewares=[guard.middleware])
            app.add_routes([web.get("/metrics", self.metrics)])
            url = await self._listen(app, guard, opts.metrics_port, "--metrics-port")
            self.urls["metrics"] = url + "/metrics"

    async def _listen(self, app, guard: _Guard, port: int, flag: str) -> str:
        """Serves `app` on the port: aiohttp's server behind the guard's watches, with the
        guard's hook as its access logger (we write no access log)."""
        from aiohttp import web

        limits = guard.limits
        # handler_cancellation: a client that disconnects cancels its handler, and so its
        # requests (`infer`: op "cancel")
        runner = web.AppRunner(app, access_log=log, access_log_class=guard.hook_class,
                               handler_cancellation=True,
                               # aiohttp's own idle timer: a backstop, never the first
                               keepalive_timeout=max(limits.keepalive_timeout_s,
                                                     limits.header_timeout_s) + 1.0,
                               shutdown_timeout=SHUTDOWN_TIMEOUT_S)  # fmt: skip
        await runner.setup()
        loop = asyncio.get_running_loop()
        try:
            factory = guard.protocol_factory(runner.server)
            server = await loop.create_server(factory, self.options.host, port,
                                              reuse_address=True)  # fmt: skip
        except OSError as exc:
            await runner.cleanup()
            raise StartupProblem(f"cannot listen on {self.options.host}:{port} ({flag}): "
                                 f"{exc.strerror or exc}; choose another port") from None
        self.runners.append((server, runner))
        host, bound = server.sockets[0].getsockname()[:2]
        log.info("%s: listening on http://%s:%d", flag, host, bound)
        return f"http://{host}:{bound}"

    async def stop(self) -> None:
        await self.link.close()
        for server, runner in self.runners:
            server.close()  # no new connections; then aiohttp closes the open ones
            with contextlib.suppress(Exception):
                await runner.cleanup()

    # ------------------------------------------------------------------ handlers
    @staticmethod
    def _route(request) -> str:
        try:
            info = request.match_info
        except (AttributeError, AssertionError):  # not routed: aiohttp's 400 for bad HTTP
            return "unmatched"
        route = getattr(info, "route", None)
        resource = getattr(route, "resource", None)
        return resource.canonical if resource is not None else "unmatched"

    def _count(self, request, status: int) -> None:
        """Every response written on the KServe port (_Guard's hook), by route and code."""
        self.http_requests.labels(self._route(request), str(status)).inc()

    def _middleware(self):
        """Turns every error into a JSON answer: HttpError with its code, aiohttp's own
        (404, 405, ...) with theirs, anything else 500 with its traceback in the log."""
        from aiohttp import web

        @web.middleware
        async def answer(request, handler):
            return await _answer(request, handler)

        return answer

    async def metrics(self, request):
        from aiohttp import web
        from prometheus_client.exposition import choose_encoder

        try:
            snap = await self.link.op("stats", HEALTH_TIMEOUT_S, metrics=True)
            snapshot = snap.get("metrics") if isinstance(snap, dict) else None
        except HttpError:
            snapshot = None
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # no await between setting the snapshot and encoding: one scrape, one snapshot
        self.collector.snapshot = snapshot
        body = encoder(self.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})


async def _answer(request, handler):
    from aiohttp import web

    try:
        return await handler(request)
    except HttpError as exc:
        body = {"error": exc.text}
        if exc.status is not None:
            body["status"] = exc.status
        resp = _json(body, exc.code)
        if exc.code in (429, 503):
            resp.headers["Retry-After"] = "1"
        elif exc.code == 408:
            resp.force_close()
        return resp
    except web.HTTPException as exc:  # aiohttp's own: 404 no route, 405 wrong method
        return _json({"error": exc.text or exc.reason}, exc.status)
    except Exception as exc:  # a bug: answered, counted and logged, not aiohttp's text 500
        log.exception("%s %s: unexpected error", request.method, request.path)
        return _json({"error": f"internal server error ({type(exc).__name__}); the server's "
                      "log has the traceback"}, 500)  # fmt: skip
