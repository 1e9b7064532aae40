"""The client wire protocol, version 1: parsing and validating requests, encoding replies.

The contract is docs/protocol.md. A request is `[routing..., b"", header, data_0, ...]` on
a ROUTER socket; the header is a msgpack map. Everything that can be wrong with a request
raises `WireError` with a text that says what and how to fix it; the frontend answers it
`error` and goes on serving.

This module is pure Python with no sockets, so that it is unit-tested without a server,
and shared by the Python client for the constants.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import msgpack

from orloj_rt.models.spec import DTYPES, ModelSpec

PROTOCOL_VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"  # where `orloj-rt start` listens by default
OPS = ("infer", "health", "models", "stats", "cancel")
STATUS_OK = "ok"
STATUS_DROPPED = "dropped"
STATUS_REJECTED = "rejected"
STATUS_ERROR = "error"
STATUS_CANCELLED = "cancelled"
STATUSES = (STATUS_OK, STATUS_DROPPED, STATUS_REJECTED, STATUS_ERROR, STATUS_CANCELLED)
#: what a `cancel` reply's `result` says of its target (docs/protocol.md)
CANCEL_QUEUED = "queued"  # it was waiting: it never runs
CANCEL_RUNNING = "running"  # it was running: its result is discarded
CANCEL_ANSWERED = "answered"  # its answer had gone out, or was on its way: nothing to do
CANCEL_UNKNOWN = "unknown"  # no request of this client had that id
DEFAULT_APP = "default"

MAX_HEADER_BYTES = 64 * 1024  # a header is a few hundred bytes; this bounds a hostile one
MAX_APP_LEN = 128
MAX_ID_LEN = 256
MAX_SLO_MS = 86_400_000.0  # one day: beyond that an SLO means nothing
#: a request's `priority`: an integer tier, higher = more important (docs/protocol.md)
DEFAULT_PRIORITY = 0
MAX_PRIORITY = 7

_packb = msgpack.Packer(use_bin_type=True).pack


def new_routing_id() -> bytes:
    """A DEALER's ZMQ_ROUTING_ID for one client socket: random (unguessable, so no other
    client can take over its replies) and kept across reconnects, so that replies in
    flight when a connection broke still reach it (outbox.py, docs/protocol.md)."""
    import os

    return b"orloj:" + os.urandom(16)  # never starts with a zero byte (ZeroMQ reserves it)


class WireError(Exception):
    """A request the server answers `error`: `req_id` is what could be read of its id."""

    def __init__(self, text: str, req_id: Any = None):
        super().__init__(text)
        self.text = text
        self.req_id = req_id


class Header(NamedTuple):
    req_id: Any
    op: str
    raw: dict


class InferRequest(NamedTuple):
    """A validated infer request; `frames` and `shapes` are in the model's input order."""

    app: str
    slo_s: float
    hint: float | None
    frames: list
    shapes: list
    priority: int = DEFAULT_PRIORITY


def split_envelope(frames: Sequence) -> tuple[int, str | None]:
    """The index of the first frame after the empty delimiter, and an error text if the
    message is not `[routing..., b"", header, ...]`."""
    for i, f in enumerate(frames):
        if len(f) == 0:
            if i == 0:
                return 1, "the message has no routing frame"  # not possible on ROUTER
            if i + 1 >= len(frames):
                return i + 1, "the message has no header frame after the empty delimiter"
            return i + 1, None
    # no delimiter at all: a DEALER client that sent the header first
    return 1, (
        "the message does not start with an empty delimiter frame: a DEALER client must "
        "send b'' before the header (REQ sockets add it themselves)"
    )


def _id_of(header: dict) -> Any:
    rid = header.get("id")
    if isinstance(rid, bool):
        return None
    if isinstance(rid, int) or (isinstance(rid, str) and len(rid) <= MAX_ID_LEN):
        return rid
    return None


def _id_of_oversized(buf) -> Any:
    """The id of a header above the limit, so that its `error` reply can carry it. The
    frame is already in memory (ZeroMQ bounds it by --max-frame-bytes); decoding it costs
    about as much as copying it."""
    try:
        header = msgpack.unpackb(buf, raw=False, strict_map_key=False)
    except Exception:  # noqa: BLE001 - unreadable: the reply has no id
        return None
    return _id_of(header) if isinstance(header, dict) else None


def parse_header(buf) -> Header:
    """Decodes and checks the header's common keys (v, id, op)."""
    if len(buf) > MAX_HEADER_BYTES:
        raise WireError(
            f"the header frame is {len(buf)} bytes; the limit is {MAX_HEADER_BYTES}: "
            "tensors go in data frames, not in the header, and \"app\" is at most "
            f"{MAX_APP_LEN} characters",
            _id_of_oversized(buf),
        )
    try:
        header = msgpack.unpackb(buf, raw=False, strict_map_key=False)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the client's
        raise WireError(
            f"the header frame is not valid msgpack ({type(exc).__name__}): send a msgpack "
            "map as the frame after the empty delimiter"
        ) from None
    if not isinstance(header, dict):
        raise WireError(
            f"the header must be a msgpack map, got {type(header).__name__}"
        )
    req_id = _id_of(header)
    v = header.get("v")
    if v != PROTOCOL_VERSION or isinstance(v, bool):
        if v is None:
            raise WireError(
                f"the header has no protocol version: add \"v\": {PROTOCOL_VERSION}", req_id
            )
        raise WireError(
            f"unsupported protocol version {v!r}: this server speaks version "
            f"{PROTOCOL_VERSION} (\"v\": {PROTOCOL_VERSION})",
            req_id,
        )
    if "id" not in header:
        raise WireError("the header has no \"id\": give each request an int or str id")
    if req_id is None:
        raise WireError(
            f"\"id\" must be an int or a str of at most {MAX_ID_LEN} characters, got "
            f"{type(header['id']).__name__}"
        )
    op = header.get("op", "infer")
    if op not in OPS:
        raise WireError(f"unknown op {op!r}; choose one of {', '.join(OPS)}", req_id)
    return Header(req_id, op, header)


def cancel_target(header: Header) -> Any:
    """The `target` of a `cancel` request: the id of an earlier request of the same
    client; WireError if it is missing or not an id."""
    raw = header.raw.get("target")
    target = _id_of({"id": raw})
    if target is None:
        raise WireError(
            "a cancel request needs \"target\": the \"id\" (an int or a str of at most "
            f"{MAX_ID_LEN} characters) of an earlier request on this connection, got "
            f"{type(raw).__name__ if raw is not None else 'none'}",
            header.req_id,
        )
    return target


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def check_priority(value: Any, req_id: Any = None) -> int:
    """A request's `priority` (None: the default tier); WireError naming the field if it
    is not an integer in 0..MAX_PRIORITY (bools and floats are not)."""
    if value is None:
        return DEFAULT_PRIORITY
    if isinstance(value, bool) or not isinstance(value, int) or not (
        0 <= value <= MAX_PRIORITY
    ):
        raise WireError(
            f"\"priority\" must be an integer tier in 0..{MAX_PRIORITY} (higher = more "
            f"important), got {value!r:.40}; omit it for the default tier "
            f"{DEFAULT_PRIORITY}",
            req_id,
        )
    return value


class _InputCheck(NamedTuple):
    index: int  # position in the model's input order
    dtype: str
    shape: list  # the spec's shape; -1 where variable
    max_shape: list
    itemsize: int
    fixed_nbytes: int  # -1 where a dim is variable


class RequestValidator:
    """Checks infer requests against one model's spec (built once per model)."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.model = spec.name
        self.default_slo_s = spec.default_slo_ms / 1000.0
        self._inputs = {
            t.name: _InputCheck(
                i,
                t.dtype,
                list(t.shape),
                list(t.max_shape),
                t.itemsize,
                -1 if t.variable_dims else t.max_nbytes,
            )
            for i, t in enumerate(spec.inputs)
        }
        self._n = len(spec.inputs)
        self._names = ", ".join(t.name for t in spec.inputs)

    def check(self, header: dict, req_id: Any, data: Sequence) -> InferRequest:
        model = self.model
        app = header.get("app", DEFAULT_APP)
        if not isinstance(app, str) or not app or len(app) > MAX_APP_LEN:
            raise WireError(f"\"app\" must be a non-empty str of at most {MAX_APP_LEN} "
                            f"characters, got {app!r:.60}", req_id)  # fmt: skip
        slo = header.get("slo_ms")
        if slo is None:
            slo_s = self.default_slo_s
        else:
            v = _number(slo)
            if v is None or not (math.isfinite(v) and 0 < v <= MAX_SLO_MS):
                raise WireError(
                    f"\"slo_ms\" must be a positive, finite number of milliseconds (at most "
                    f"{MAX_SLO_MS:.0f}), got {slo!r:.40}; omit it to use model {model!r}'s "
                    f"default of {self.spec.default_slo_ms:g} ms",
                    req_id,
                )
            slo_s = v / 1000.0
        hint = header.get("hint")
        if hint is not None:
            hint = _number(hint)
            if hint is None or not math.isfinite(hint):
                raise WireError("\"hint\" must be a finite number when given", req_id)
        priority = check_priority(header.get("priority"), req_id)
        meta = header.get("inputs")
        if not isinstance(meta, list):
            raise WireError(
                f"an infer request needs \"inputs\": an array with one "
                f"{{name, dtype, shape}} map per data frame (model {model!r} takes: "
                f"{self._names})",
                req_id,
            )
        if len(meta) != len(data):
            raise WireError(
                f"the header lists {len(meta)} input(s) but {len(data)} data frame(s) "
                "follow: send exactly one data frame per entry of \"inputs\", in order",
                req_id,
            )
        if len(meta) != self._n:
            self._missing_or_extra(meta, req_id)
        frames: list = [None] * self._n
        shapes: list = [None] * self._n
        for k, m in enumerate(meta):
            if not isinstance(m, dict):
                raise WireError(f"inputs[{k}] must be a map with name, dtype, shape", req_id)
            name = m.get("name")
            chk = self._inputs.get(name) if isinstance(name, str) else None
            if chk is None:
                raise WireError(
                    f"unknown input {name!r:.60} for model {model!r} (it takes: "
                    f"{self._names})",
                    req_id,
                )
            if frames[chk.index] is not None:
                raise WireError(f"input {name!r} is given twice", req_id)
            dtype = m.get("dtype")
            if dtype != chk.dtype:
                if not isinstance(dtype, str) or dtype not in DTYPES:  # (a list is unhashable)
                    raise WireError(
                        f"input {name!r}: unknown dtype {dtype!r:.40}; use one of "
                        f"{', '.join(DTYPES)}",
                        req_id,
                    )
                raise WireError(
                    f"input {name!r} has dtype {dtype!r}, but model {model!r} expects "
                    f"{chk.dtype!r}: convert it on the client",
                    req_id,
                )
            shape = m.get("shape")
            if shape != chk.shape or chk.fixed_nbytes < 0:
                nbytes = self._check_shape(name, shape, chk, req_id)
            else:
                nbytes = chk.fixed_nbytes
            frame = data[k]
            if len(frame) != nbytes:
                raise WireError(
                    f"input {name!r}: the data frame is {len(frame)} bytes, but shape "
                    f"{shape} of {dtype} needs {nbytes} (prod(shape) x {chk.itemsize}, "
                    "raw little-endian, C order)",
                    req_id,
                )
            frames[chk.index] = frame
            shapes[chk.index] = shape
        return InferRequest(app, slo_s, hint, frames, shapes, priority)

    def _missing_or_extra(self, meta: list, req_id: Any) -> None:
        given = {m.get("name") for m in meta if isinstance(m, dict)}
        missing = [n for n in self._inputs if n not in given]
        if missing:
            raise WireError(
                f"missing input(s) {missing} for model {self.model!r} (it takes: "
                f"{self._names}): add one \"inputs\" entry and one data frame for each",
                req_id,
            )
        raise WireError(
            f"model {self.model!r} takes {self._n} input(s) ({self._names}), but the request "
            f"has {len(meta)}: remove the extra ones",
            req_id,
        )

    def _check_shape(self, name: str, shape: Any, chk: _InputCheck, req_id: Any) -> int:
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) for d in shape
        ):
            raise WireError(
                f"input {name!r}: \"shape\" must be an array of ints (one request, no batch "
                f"dimension), got {shape!r:.60}",
                req_id,
            )
        if len(shape) != len(chk.shape):
            raise WireError(
                f"input {name!r} has shape {shape}, but model {self.model!r} expects "
                f"{len(chk.shape)} dim(s) {chk.shape} (-1: variable); send one request's "
                "shape, without a batch dimension",
                req_id,
            )
        for i, (d, want, mx) in enumerate(zip(shape, chk.shape, chk.max_shape, strict=True)):
            if want == -1:
                if not 1 <= d <= mx:
                    raise WireError(
                        f"input {name!r} dim {i} is {d}, outside [1, {mx}]: model "
                        f"{self.model!r} accepts shapes up to max_shape {chk.max_shape}",
                        req_id,
                    )
            elif d != want:
                raise WireError(
                    f"input {name!r} has shape {shape}, but model {self.model!r} expects "
                    f"{chk.shape}",
                    req_id,
                )
        return math.prod(shape) * chk.itemsize


# ---------------------------------------------------------------------- replies
def encode_reply(req_id: Any, status: str, error: str | None = None, **fields: Any) -> bytes:
    """A reply header: `v`, `id`, `status`, `error` unless ok, and any further keys."""
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": req_id, "status": status}
    if error is not None:
        header["error"] = error
    header.update(fields)
    return _packb(header)
