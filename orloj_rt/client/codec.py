"""Encoding requests and decoding replies of the wire protocol (docs/protocol.md), for clients.

Pure functions over frames, shared by the synchronous and the asyncio client and by load
generators (demo, benchmarks) that drive raw sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from orloj_rt.models.spec import DTYPES
from orloj_rt.protocol.wire import PROTOCOL_VERSION, STATUS_OK

_packb = msgpack.Packer(use_bin_type=True).pack
# numpy dtype -> wire dtype; bfloat16 has no numpy dtype (pass `dtypes=` for its uint16 bits)
_NP_TO_WIRE = {np.dtype(v[0]): k for k, v in DTYPES.items() if k != "bfloat16"}


class ServerError(Exception):
    """Raised by `InferResult.raise_for_status()` for a status other than ok."""

    def __init__(self, status: str, text: str):
        super().__init__(f"{status}: {text}")
        self.status = status
        self.text = text


@dataclass
class InferResult:
    """One reply. `outputs` maps output names to arrays (empty unless status is ok)."""

    id: Any
    status: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    error: str | None = None
    met_slo: bool | None = None
    timing: dict[str, int] = field(default_factory=dict)
    #: on ok: the model variant that served it (docs/models.md); None for a model without
    variant: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def raise_for_status(self) -> InferResult:
        if not self.ok:
            raise ServerError(self.status, self.error or "")
        return self


def wire_dtype(arr: np.ndarray) -> str:
    try:
        return _NP_TO_WIRE[arr.dtype]
    except KeyError:
        raise TypeError(
            f"dtype {arr.dtype} is not a wire dtype; use one of {', '.join(DTYPES)} "
            "(bfloat16: send a uint16 array of its bits with encode_infer(..., dtypes=...))"
        ) from None


def encode_infer(
    req_id: Any,
    model: str,
    inputs: dict[str, np.ndarray],
    slo_ms: float | None = None,
    app: str | None = None,
    hint: float | None = None,
    dtypes: dict[str, str] | None = None,
    priority: int | None = None,
) -> list:
    """The frames after the empty delimiter: [header, data_0, ...]. Arrays are sent
    zero-copy where they are already little-endian and C-contiguous."""
    meta = []
    data = []
    for name, value in inputs.items():
        arr = np.asarray(value)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)
        dtype = (dtypes or {}).get(name) or wire_dtype(arr)
        meta.append({"name": name, "dtype": dtype, "shape": list(arr.shape)})
        # a byte view of the array (no copy); memoryview cannot cast a 0-d array, nor one
        # with a zero dim (an empty input: sent as is, the server says whether it accepts it)
        data.append(memoryview(arr).cast("B") if arr.ndim and arr.size else arr.tobytes())
    header: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": req_id, "op": "infer",
                              "model": model, "inputs": meta}  # fmt: skip
    if slo_ms is not None:
        header["slo_ms"] = slo_ms
    if app is not None:
        header["app"] = app
    if hint is not None:
        header["hint"] = hint
    if priority is not None:
        header["priority"] = priority
    return [_packb(header), *data]


def encode_op(req_id: Any, op: str) -> list:
    return [_packb({"v": PROTOCOL_VERSION, "id": req_id, "op": op})]


def encode_cancel(req_id: Any, target: Any) -> list:
    """A cancel of the client's earlier request `target` (docs/protocol.md)."""
    return [_packb({"v": PROTOCOL_VERSION, "id": req_id, "op": "cancel", "target": target})]


def decode_header(frame) -> dict:
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


def decode_reply(frames: list) -> tuple[dict, InferResult]:
    """Frames after the empty delimiter -> (raw header, InferResult)."""
    header = decode_header(frames[0])
    outputs = {}
    if header.get("status") == STATUS_OK:
        for meta, buf in zip(header.get("outputs", ()), frames[1:], strict=False):
            np_dtype = np.dtype(DTYPES[meta["dtype"]][0])
            arr = np.frombuffer(buf, dtype=np_dtype).reshape(meta["shape"])
            outputs[meta["name"]] = arr
    result = InferResult(
        id=header.get("id"),
        status=header.get("status", "error"),
        outputs=outputs,
        error=header.get("error"),
        met_slo=header.get("met_slo"),
        timing=header.get("timing", {}),
        variant=header.get("variant"),
    )
    return header, result
