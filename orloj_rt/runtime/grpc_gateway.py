"""The gateway's gRPC front end: KServe v2 / Open Inference Protocol over gRPC (--grpc-port).

    gRPC clients (tritonclient[grpc], KServe / MLServer clients)
        | inference.GRPCInferenceService/ModelInfer ... (--grpc-port)
        v
    gateway process: grpc.aio --- a ZeroMQ DEALER, wire protocol v1 ---> frontend's ROUTER
                     (beside the HTTP front end, gateway_common.py)   ipc://@orloj_rt.<instance>.gateway

The service is `inference.GRPCInferenceService` (grpc_proto/grpc_predict_v2.proto):
ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer and
Triton's ModelStreamInfer. A ModelInfer becomes wire-protocol requests on the frontend's
internal endpoint, exactly as an HTTP request does (gateway_common: `members`, `infer`),
so it takes the path of ZeroMQ clients' requests: the same validation, rings, scheduler,
SLOs, statuses and counters. Tensors arrive as `raw_input_contents` (what tritonclient
sends) or as typed `contents`; outputs always go back as `raw_output_contents`.
`slo_ms`, `app`, `hint` and `priority` are request parameters, as over HTTP; a reply from
a model with variants carries the `variant` that served it as a string parameter.

Outcome -> gRPC status (docs/grpc.md): ok OK; dropped DEADLINE_EXCEEDED; rejected
RESOURCE_EXHAUSTED under load (a full ring, the policy's admission control) and
UNAVAILABLE when the server cannot serve at all (starting up, shutting down, a failed
worker); error (from the frontend) and a malformed request INVALID_ARGUMENT; an unknown
model or version NOT_FOUND. The status's details are the reason, and a failed call's
trailing metadata carries the wire status as `orloj-status` (dropped, rejected, error).

grpc.aio runs on the gateway's asyncio loop with the ZeroMQ link, no thread hand-off. The
generated modules (grpc_proto/) are imported only when the server is built: they
register the `inference.*` messages in protobuf's default pool, as tritonclient's own
generated modules do, and the two cannot share one process (tests and clients import
tritonclient, never this module's server).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

import grpc
import numpy as np

from orloj_rt.models.spec import ModelSpec
from orloj_rt.protocol.wire import STATUS_DROPPED, STATUS_ERROR, STATUS_REJECTED
from orloj_rt.runtime.gateway_common import (
    HEALTH_TIMEOUT_S,
    KSERVE_DATATYPES,
    MODEL_VERSION,
    REQUEST_PARAMS,
    WIRE_DTYPES,
    FrontendLink,
    GatewayError,
    GatewayOptions,
    Input,
    check_replies,
    default_body_limit,
    infer,
    itemsize,
    members,
    np_dtype,
    reply_params,
    serving,
    stack_output,
)
from orloj_rt.runtime.proc import InstanceConfig, StartupProblem

log = logging.getLogger("orloj_rt.gateway")

SERVICE = "inference.GRPCInferenceService"
STATUS_METADATA = "orloj-status"  # a failed call's trailing metadata: the wire status
STOP_GRACE_S = 1.0  # for calls and streams still open when the instance stops
# the typed `contents` field of each served datatype (FP16 and BF16: raw only)
CONTENTS_FIELDS = {"bool": "bool_contents", "int8": "int_contents", "int32": "int_contents",
                   "int64": "int64_contents", "uint8": "uint_contents",
                   "float32": "fp32_contents"}  # fmt: skip
_NARROW = {"int8", "uint8"}  # typed contents wider than the datatype: range-checked
_STOP = object()  # ends an open stream: the instance stops


def grpc_code(exc: GatewayError) -> grpc.StatusCode:
    """The gRPC status of a failed request (see the module docstring)."""
    status = exc.status
    if status == STATUS_DROPPED:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    if status == STATUS_REJECTED:
        return (grpc.StatusCode.RESOURCE_EXHAUSTED if exc.code == 429
                else grpc.StatusCode.UNAVAILABLE)  # fmt: skip
    if status == STATUS_ERROR:
        return grpc.StatusCode.INVALID_ARGUMENT
    if status == "cancelled":  # the wire protocol's cancel (docs/protocol.md)
        return grpc.StatusCode.CANCELLED
    return {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
            429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
            504: grpc.StatusCode.DEADLINE_EXCEEDED, 500: grpc.StatusCode.INTERNAL,
            }.get(exc.code, grpc.StatusCode.UNKNOWN)  # fmt: skip


def on_call_cancelled(link: FrontendLink, sent: list[dict]) -> None:
    """A gRPC call (a ModelInfer, or one request of a ModelStreamInfer) was cancelled while
    its wire requests were in flight: the client cancelled it, its deadline passed, or its
    connection went away. Each of its requests is cancelled (`op: "cancel"`,
    docs/protocol.md), so that the server spends nothing more on them."""
    link.cancel_soon(sent)


def _param(p) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def request_params(request) -> dict[str, Any]:
    """The request parameters that travel to the frontend (slo_ms, app, hint, priority), as their
    values; a parameter with no value set is None (the frontend judges it, as over HTTP)."""
    given = request.parameters
    return {k: _param(given[k]) for k in REQUEST_PARAMS if k in given}


def parse_inputs(request) -> list[Input]:
    """The request's input tensors: raw_input_contents (one entry per input, in order) or
    each input's typed `contents`; sizes and datatypes checked (GatewayError 400)."""
    tensors = request.inputs
    if not tensors:
        raise GatewayError(400, "the request has no inputs: give each input tensor's name, "
                           "datatype and shape, and its data in raw_input_contents or "
                           "contents")  # fmt: skip
    raw = request.raw_input_contents
    if raw and len(raw) != len(tensors):
        raise GatewayError(400, f"raw_input_contents has {len(raw)} entries, but the request "
                           f"has {len(tensors)} inputs: one entry per input, in the order "
                           "of inputs")  # fmt: skip
    out = []
    for k, t in enumerate(tensors):
        name = t.name
        dtype = WIRE_DTYPES.get(t.datatype)
        if dtype is None:
            raise GatewayError(400, f"input {name!r:.80}: datatype {t.datatype!r:.40} is not "
                               f"served; orloj-rt takes {', '.join(WIRE_DTYPES)}")  # fmt: skip
        shape = list(t.shape)
        if any(d < 0 for d in shape):
            raise GatewayError(400, f"input {name!r:.80}: shape {shape} has a negative "
                               "dimension")  # fmt: skip
        if "shared_memory_region" in t.parameters:
            raise GatewayError(400, f"input {name!r:.80}: shared-memory tensors are not "
                               "served; send the data in the request")  # fmt: skip
        count = math.prod(shape)
        if raw:
            if t.HasField("contents"):
                raise GatewayError(400, f"input {name!r:.80} sets contents, but the request "
                                   "carries raw_input_contents: use one or the other for "
                                   "all inputs")  # fmt: skip
            data = raw[k]
            nbytes = count * itemsize(dtype)
            if len(data) != nbytes:
                raise GatewayError(400, f"input {name!r:.80}: raw_input_contents[{k}] has "
                                   f"{len(data)} bytes, but shape {shape} of {t.datatype} "
                                   f"takes {nbytes}")  # fmt: skip
        elif t.HasField("contents"):
            data = _typed(name, t.datatype, dtype, t.contents, shape, count)
        else:
            raise GatewayError(400, f"input {name!r:.80} has no data: neither contents nor "
                               "raw_input_contents")  # fmt: skip
        out.append(Input(name, dtype, shape, data))
    return out


def _typed(name: str, datatype: str, dtype: str, contents, shape: list, count: int) -> bytes:
    """An input's typed contents -> its raw bytes; nothing converted silently (an INT8 or
    UINT8 value outside the datatype's range is an error, not wrapped)."""
    field = CONTENTS_FIELDS.get(dtype)
    if field is None:
        raise GatewayError(400, f"input {name!r:.80}: {datatype} has no typed contents field; "
                           "send it in raw_input_contents")  # fmt: skip
    wrong = [f.name for f, _ in contents.ListFields() if f.name != field]
    if wrong:
        raise GatewayError(400, f"input {name!r:.80} ({datatype}) carries {wrong[0]}; "
                           f"{datatype} takes {field}")  # fmt: skip
    values = getattr(contents, field)
    if len(values) != count:
        raise GatewayError(400, f"input {name!r:.80}: contents.{field} has {len(values)} "
                           f"values, but shape {shape} takes {count}")  # fmt: skip
    target = np_dtype(dtype)
    if dtype in _NARROW:
        wide = np.array(values, np.int64)
        info = np.iinfo(target)
        bad = (wide < info.min) | (wide > info.max)
        if bad.any():
            k = int(np.argmax(bad))
            raise GatewayError(400, f"input {name!r:.80} ({datatype}): contents.{field} holds "
                               f"{int(wide[k])} (value {k} in row-major order): outside "
                               f"{datatype}'s range [{info.min}, {info.max}]")  # fmt: skip
        return wide.astype(target).tobytes()
    return np.array(values, target).tobytes()


def requested_outputs(request, spec: ModelSpec) -> list[int]:
    """Indices into the model's outputs: the requested ones, or all."""
    if not request.outputs:
        return list(range(len(spec.outputs)))
    index = {t.name: i for i, t in enumerate(spec.outputs)}
    selected = []
    for o in request.outputs:
        if o.name not in index:
            raise GatewayError(400, f"unknown output {o.name!r:.80} of model {spec.name!r} "
                               f"(it has: {', '.join(index)})")  # fmt: skip
        if "shared_memory_region" in o.parameters:
            raise GatewayError(400, f"output {o.name!r}: shared-memory outputs are not served")
        selected.append(index[o.name])
    return selected


class InferenceService:
    """The methods of inference.GRPCInferenceService (the generated
    add_GRPCInferenceServiceServicer_to_server registers them by name)."""

    def __init__(self, specs: list[ModelSpec], link: FrontendLink):
        from orloj_rt.runtime.grpc_proto import grpc_predict_v2_pb2 as pb

        self.pb = pb
        self.specs = {s.name: s for s in specs}
        self.link = link
        self.streams: set[asyncio.Queue] = set()  # the open ModelStreamInfer calls' queues

    def close_streams(self) -> None:
        """Ends every open stream with UNAVAILABLE (the instance stops): without it,
        grpc.aio's stop cancels them, and logs each as an error."""
        for queue in self.streams:
            queue.put_nowait(_STOP)

    # ------------------------------------------------------------------ helpers
    def _spec(self, name: str, version: str) -> ModelSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise GatewayError(404, f"unknown model {name!r:.80}; this server serves: "
                               f"{', '.join(self.specs)}")  # fmt: skip
        if version and version != MODEL_VERSION:
            raise GatewayError(404, f"model {name!r} has no version {version!r:.40}; orloj-rt "
                               f"serves version {MODEL_VERSION} only")  # fmt: skip
        return spec

    async def _health(self) -> dict | None:
        try:
            return await self.link.op("health", HEALTH_TIMEOUT_S)
        except GatewayError:
            return None

    @staticmethod
    async def _abort(context, exc: GatewayError) -> None:
        metadata = ((STATUS_METADATA, exc.status),) if exc.status else ()
        await context.abort(grpc_code(exc), exc.text, metadata)

    @staticmethod
    def _bug(exc: Exception, what: str) -> GatewayError:
        log.error("%s: unexpected error", what, exc_info=exc)
        return GatewayError(500, f"internal server error ({type(exc).__name__}); the server's "
                            "log has the traceback")  # fmt: skip

    # ------------------------------------------------------------------ health, metadata
    async def ServerLive(self, request, context):
        return self.pb.ServerLiveResponse(live=await self._health() is not None)

    async def ServerReady(self, request, context):
        return self.pb.ServerReadyResponse(ready=serving(await self._health()))

    async def ModelReady(self, request, context):
        try:
            self._spec(request.name, request.version)
        except GatewayError as exc:
            await self._abort(context, exc)
        return self.pb.ModelReadyResponse(ready=serving(await self._health()))

    async def ServerMetadata(self, request, context):
        from orloj_rt import __version__

        return self.pb.ServerMetadataResponse(name="orloj-rt", version=__version__)

    async def ModelMetadata(self, request, context):
        try:
            spec = self._spec(request.name, request.version)
        except GatewayError as exc:
            await self._abort(context, exc)
        meta = self.pb.ModelMetadataResponse.TensorMetadata

        def tensors(ts) -> list:
            return [meta(name=t.name, datatype=KSERVE_DATATYPES[t.dtype],
                         shape=[-1, *t.shape]) for t in ts]  # fmt: skip

        return self.pb.ModelMetadataResponse(
            name=spec.name, versions=[MODEL_VERSION], platform="orloj-rt",
            inputs=tensors(spec.inputs), outputs=tensors(spec.outputs))  # fmt: skip

    # ------------------------------------------------------------------ inference
    async def _infer(self, request, sent: list):
        """One ModelInferRequest -> its ModelInferResponse; GatewayError when not ok."""
        spec = self._spec(request.model_name, request.model_version)
        inputs = parse_inputs(request)
        selected = requested_outputs(request, spec)
        params = request_params(request)
        n, parts = members(spec, inputs)
        replies = await infer(self.link, spec, parts, params, sent)
        check_replies(n, replies)
        resp = self.pb.ModelInferResponse(model_name=spec.name, model_version=MODEL_VERSION,
                                          id=request.id)  # fmt: skip
        raw = []
        for j in selected:
            t = spec.outputs[j]
            shape, data = stack_output(spec, j, n, replies)
            resp.outputs.add(name=t.name, datatype=KSERVE_DATATYPES[t.dtype], shape=shape)
            raw.append(bytes(data))
        resp.raw_output_contents.extend(raw)
        timing = reply_params(replies)
        out = resp.parameters
        out["met_slo"].bool_param = bool(timing.pop("met_slo"))
        variant = timing.pop("variant", None)
        if variant is not None:
            out["variant"].string_param = variant
        for key, value in timing.items():
            out[key].int64_param = int(value)
        return resp

    async def ModelInfer(self, request, context):
        sent: list[dict] = []
        try:
            return await self._infer(request, sent)
        except GatewayError as exc:
            failure = exc
        except asyncio.CancelledError:
            on_call_cancelled(self.link, sent)
            raise
        except Exception as exc:  # a bug: answered INTERNAL, the traceback in the log
            failure = self._bug(exc, "ModelInfer")
        await self._abort(context, failure)

    async def ModelStreamInfer(self, request_iterator, context):
        """Triton's streaming extension: each request of the stream is served as it
        arrives, concurrently with the others, and answered in the stream when done (in
        the order they finish: match them by `id`). A failed request is answered with
        `error_message` (the reason) and an infer_response carrying its id, model and the
        parameters `orloj_status` (dropped, rejected, error) and `grpc_code` (what
        ModelInfer would have answered); the stream goes on."""
        queue: asyncio.Queue = asyncio.Queue()
        tasks: set[asyncio.Task] = set()

        async def one(request) -> None:
            sent: list[dict] = []
            try:
                out = self.pb.ModelStreamInferResponse(
                    infer_response=await self._infer(request, sent))
            except GatewayError as exc:
                out = self._stream_error(request, exc)
            except asyncio.CancelledError:
                on_call_cancelled(self.link, sent)
                raise
            except Exception as exc:  # noqa: BLE001 - answered in the stream, logged
                out = self._stream_error(request, self._bug(exc, "ModelStreamInfer"))
            queue.put_nowait(out)

        async def read() -> None:
            try:
                async for request in request_iterator:
                    task = asyncio.ensure_future(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:  # the client is done sending: answer what is in flight
                    await asyncio.wait(list(tasks))
            finally:
                queue.put_nowait(None)

        reader = asyncio.ensure_future(read())
        self.streams.add(queue)
        try:
            while (item := await queue.get()) is not None:
                if item is _STOP:
                    await self._abort(context, GatewayError(
                        503, "the server is shutting down: this stream ends"))  # fmt: skip
                yield item
            await reader  # its exception, if the request stream failed
        finally:
            self.streams.discard(queue)
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    def _stream_error(self, request, exc: GatewayError):
        resp = self.pb.ModelInferResponse(model_name=request.model_name,
                                          model_version=request.model_version, id=request.id)
        if exc.status:
            resp.parameters["orloj_status"].string_param = exc.status
        resp.parameters["grpc_code"].string_param = grpc_code(exc).name
        return self.pb.ModelStreamInferResponse(error_message=exc.text, infer_response=resp)


class GrpcGateway:
    """The gRPC server (--grpc-port), on the gateway process's event loop
    (gateway_common.run_gateway_process), with its own link to the frontend."""

    def __init__(self, config: InstanceConfig, options: GatewayOptions):
        from orloj_rt.runtime.security import internal_client_keys

        self.config = config
        self.options = options
        self.link = FrontendLink(config.internal_endpoint, internal_client_keys(config))
        self.server = None
        self.service: InferenceService | None = None
        self.urls: dict[str, str] = {}

    async def start(self) -> None:
        from orloj_rt.runtime.grpc_proto import grpc_predict_v2_pb2_grpc as pb_grpc

        self.link.start()
        specs = [e.spec for e in self.config.models]
        server = grpc.aio.server(options=[
            # the largest request: what the HTTP port takes by default (a full batch of
            # the largest inputs, even as typed contents); answers are not limited
            ("grpc.max_receive_message_length", default_body_limit(specs)),
            ("grpc.max_send_message_length", -1),
            # gRPC sets SO_REUSEPORT by default: a port in use would be shared, not refused
            ("grpc.so_reuseport", 0),
        ])  # fmt: skip
        self.service = InferenceService(specs, self.link)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.service, server)
        host, port = self.options.host, self.options.grpc_port
        address = f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError as exc:  # grpcio >= 1.60 raises; older versions return 0
            log.debug("gRPC could not bind %s: %s", address, exc)
            bound = 0
        if not bound:
            raise StartupProblem(f"cannot listen on {address} (--grpc-port): the port is in "
                                 "use or not available here; choose another port")  # fmt: skip
        await server.start()
        self.server = server
        self.urls["grpc"] = f"{host}:{bound}"
        log.info("--grpc-port: listening on %s:%d (%s)", host, bound, SERVICE)

    async def stop(self) -> None:
        # the link first: calls still waiting on the frontend are answered UNAVAILABLE
        # at once; open streams end UNAVAILABLE; then the server closes (what is left
        # gets STOP_GRACE_S)
        await self.link.close()
        if self.service is not None:
            self.service.close_streams()
        if self.server is not None:
            await self.server.stop(STOP_GRACE_S)
