"""The Python client of orloj-rt: synchronous (`Client`) and asyncio (`AsyncClient`).

    from orloj_rt.client import Client

    with Client("tcp://127.0.0.1:5555") as c:
        r = c.infer("early_exit", {"tokens": tokens}, slo_ms=20, app="search")
        if r.ok:
            print(r.outputs["logits"], r.timing)     # {"queue_us", "exec_us", "total_us", ...}
        else:
            print(r.status, r.error)                  # dropped / rejected / error
        c.health(); c.models(); c.stats()

`infer` returns an `InferResult` for every status (`raise_for_status()` turns a non-ok one
into `ServerError`); it raises `TimeoutError` only when no reply came within `timeout_s`.
Both clients use a DEALER socket, so an `AsyncClient` keeps many requests in flight on one
connection. Output arrays are views of the received frames (no copy).

A client object is not thread-safe (ZeroMQ sockets are not): use one per thread.

A server started with `--curve-keys DIR` serves only CURVE clients whose key it admits:
pass `curve_keys=` a directory holding `server.key` and `client.key_secret` (what
`orloj-rt keys DIR` makes), or `orloj_rt.protocol.keys.ClientKeys.load(DIR, "NAME")`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any

import numpy as np

from orloj_rt.client.codec import (
    InferResult,
    ServerError,
    decode_reply,
    encode_infer,
    encode_op,
)
from orloj_rt.protocol.wire import DEFAULT_ENDPOINT, STATUS_OK, new_routing_id

DEFAULT_TIMEOUT_S = 30.0

__all__ = ["AsyncClient", "Client", "InferResult", "ServerError", "DEFAULT_ENDPOINT"]


def _timeout_error(endpoint: str, timeout_s: float, what: str) -> TimeoutError:
    return TimeoutError(
        f"no reply to {what} from {endpoint} within timeout_s={timeout_s:g} s: is the server "
        "running there (orloj-rt start)? Raise timeout_s for slow requests."
    )


def _control_result(header: dict, result: InferResult, op: str) -> Any:
    if result.status != STATUS_OK:
        raise ServerError(result.status, result.error or f"{op} failed")
    return header.get("result")


class Client:
    """A synchronous client: one request at a time on a DEALER socket."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout_s: float = DEFAULT_TIMEOUT_S,
                 curve_keys=None):  # fmt: skip
        import zmq

        from orloj_rt.protocol.keys import client_keys

        self._zmq = zmq
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTING_ID, new_routing_id())  # replies survive reconnects
        keys = client_keys(curve_keys)
        if keys is not None:
            keys.apply(self._sock)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        slo_ms: float | None = None,
        app: str | None = None,
        hint: float | None = None,
        timeout_s: float | None = None,
    ) -> InferResult:
        """Runs one request; the result carries the status, outputs and timing."""
        rid = next(self._ids)
        frames = encode_infer(rid, model, inputs, slo_ms=slo_ms, app=app, hint=hint)
        return self._roundtrip(rid, frames, timeout_s, f"infer({model!r})")[1]

    def health(self) -> dict:
        return self._op("health")

    def models(self) -> list:
        return self._op("models")

    def stats(self) -> dict:
        return self._op("stats")

    def _op(self, op: str) -> Any:
        rid = next(self._ids)
        header, result = self._roundtrip(rid, encode_op(rid, op), None, op)
        return _control_result(header, result, op)

    def _roundtrip(self, rid: int, frames: list, timeout_s: float | None, what: str):
        zmq = self._zmq
        timeout = self.timeout_s if timeout_s is None else timeout_s
        self._sock.send_multipart([b"", *frames], copy=False)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(left * 1000, zmq.POLLIN):
                raise _timeout_error(self.endpoint, timeout, what)
            reply = self._sock.recv_multipart()  # copying small frames beats tracking them
            header, result = decode_reply(reply[1:])
            if result.id == rid:
                return header, result
            # a late reply to an earlier request that timed out: not ours, skip it

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncClient:
    """An asyncio client: any number of requests in flight on one DEALER socket."""

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout_s: float = DEFAULT_TIMEOUT_S,
                 curve_keys=None):  # fmt: skip
        import zmq
        import zmq.asyncio

        from orloj_rt.protocol.keys import client_keys

        self._zmq = zmq
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTING_ID, new_routing_id())  # replies survive reconnects
        keys = client_keys(curve_keys)
        if keys is not None:
            keys.apply(self._sock)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        slo_ms: float | None = None,
        app: str | None = None,
        hint: float | None = None,
        timeout_s: float | None = None,
    ) -> InferResult:
        rid = next(self._ids)
        frames = encode_infer(rid, model, inputs, slo_ms=slo_ms, app=app, hint=hint)
        return (await self._roundtrip(rid, frames, timeout_s, f"infer({model!r})"))[1]

    async def health(self) -> dict:
        return await self._op("health")

    async def models(self) -> list:
        return await self._op("models")

    async def stats(self) -> dict:
        return await self._op("stats")

    async def _op(self, op: str) -> Any:
        rid = next(self._ids)
        header, result = await self._roundtrip(rid, encode_op(rid, op), None, op)
        return _control_result(header, result, op)

    async def _roundtrip(self, rid: int, frames: list, timeout_s: float | None, what: str):
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_replies())
        fut = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            await self._sock.send_multipart([b"", *frames], copy=False)
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise _timeout_error(self.endpoint, timeout, what) from None
        finally:
            self._waiting.pop(rid, None)

    async def _read_replies(self) -> None:
        while self._waiting:
            reply = await self._sock.recv_multipart(copy=False)
            header, result = decode_reply([f.buffer for f in reply[1:]])
            fut = self._waiting.get(result.id)
            if fut is not None and not fut.done():
                fut.set_result((header, result))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):  # closing anyway
                await self._reader
        self._sock.close(linger=0)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
