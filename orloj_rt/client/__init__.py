"""The Python client of orloj-rt: synchronous (`Client`) and asyncio (`AsyncClient`).

    from orloj_rt.client import Client

    with Client("tcp://127.0.0.1:5555") as c:
        r = c.infer("early_exit", {"tokens": tokens}, slo_ms=20, app="search", priority=2)
        if r.ok:
            print(r.outputs["logits"], r.timing)     # {"queue_us", "exec_us", "total_us", ...}
            print(r.variant)                          # the model variant that served it
        else:
            print(r.status, r.error)                  # dropped / rejected / error
        c.health(); c.models(); c.stats()

`priority` is the request's tier: an integer in 0..7, higher = more important (default 0;
docs/protocol.md). `infer` returns an `InferResult` for every status (`raise_for_status()`
turns a non-ok one into `ServerError`); it raises `TimeoutError` only when no reply came
within `timeout_s`.

Cancellation (docs/protocol.md): `Client.submit` sends a request without waiting and
returns its id, `Client.result(id)` waits for its reply, and `Client.cancel(id)` cancels
it (the request is then answered `cancelled`, unless its answer had gone out already):

    rid = c.submit("early_exit", {"tokens": tokens}, slo_ms=200)
    print(c.cancel(rid))          # "queued", "running", "answered" or "unknown"
    print(c.result(rid).status)   # "cancelled" (or its answer, if that came first)

`AsyncClient.infer` cancels its request when its task is cancelled or it times out.
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
    encode_cancel,
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
        self._submitted: set[int] = set()  # submitted, result not taken yet
        self._replies: dict[int, tuple] = {}  # replies to them that came while waiting

    def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        slo_ms: float | None = None,
        app: str | None = None,
        hint: float | None = None,
        timeout_s: float | None = None,
        priority: int | None = None,
    ) -> InferResult:
        """Runs one request; the result carries the status, outputs, timing and the
        variant that served it."""
        rid = next(self._ids)
        frames = encode_infer(rid, model, inputs, slo_ms=slo_ms, app=app, hint=hint,
                              priority=priority)  # fmt: skip
        return self._roundtrip(rid, frames, timeout_s, f"infer({model!r})")[1]

    def submit(
        self,
        model: str,
        inputs: dict[str, np.ndarray],
        slo_ms: float | None = None,
        app: str | None = None,
        hint: float | None = None,
        priority: int | None = None,
    ) -> int:
        """Sends a request without waiting; returns its id, for `result` and `cancel`."""
        rid = next(self._ids)
        frames = encode_infer(rid, model, inputs, slo_ms=slo_ms, app=app, hint=hint,
                              priority=priority)  # fmt: skip
        self._send(frames, None, f"submit({model!r})")
        self._submitted.add(rid)
        return rid

    def result(self, rid: int, timeout_s: float | None = None) -> InferResult:
        """The reply to submitted request `rid` (waits for it; TimeoutError after
        `timeout_s`)."""
        if rid not in self._submitted and rid not in self._replies:
            raise KeyError(f"request {rid!r} was not submitted by this client, or its "
                           "result was taken already")  # fmt: skip
        header, result = self._wait(rid, timeout_s, f"result({rid!r})")
        self._submitted.discard(rid)
        return result

    def cancel(self, rid: int, timeout_s: float | None = None) -> str:
        """Cancels submitted request `rid`: "queued" (it never runs), "running" (its
        result is discarded), "answered" (too late: its answer went out) or "unknown". The
        request's own reply (`result`) is then `cancelled`, unless it was answered."""
        cid = next(self._ids)
        header, result = self._roundtrip(cid, encode_cancel(cid, rid), timeout_s,
                                         f"cancel({rid!r})")  # fmt: skip
        return _control_result(header, result, "cancel")

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
        self._send(frames, timeout_s, what)
        return self._wait(rid, timeout_s, what)

    def _send(self, frames: list, timeout_s: float | None, what: str) -> None:
        """Sends without ever blocking past the timeout: a DEALER with no connected peer
        (the server is down, or refused this client's handshake) cannot take a message,
        and a plain send would wait for one forever."""
        zmq = self._zmq
        timeout = self.timeout_s if timeout_s is None else timeout_s
        try:
            if not self._sock.poll(timeout * 1000, zmq.POLLOUT):
                raise zmq.Again()
            self._sock.send_multipart([b"", *frames], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            raise _timeout_error(self.endpoint, timeout, what) from None

    def _wait(self, rid: int, timeout_s: float | None, what: str):
        """The reply to `rid`; replies to submitted requests that come first are kept for
        `result`, others (a late reply to a request that timed out) skipped."""
        got = self._replies.pop(rid, None)
        if got is not None:
            return got
        zmq = self._zmq
        timeout = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(left * 1000, zmq.POLLIN):
                raise _timeout_error(self.endpoint, timeout, what)
            reply = self._sock.recv_multipart()  # copying small frames beats tracking them
            header, result = decode_reply(reply[1:])
            if result.id == rid:
                return header, result
            if result.id in self._submitted:
                self._replies[result.id] = (header, result)

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
        priority: int | None = None,
    ) -> InferResult:
        rid = next(self._ids)
        frames = encode_infer(rid, model, inputs, slo_ms=slo_ms, app=app, hint=hint,
                              priority=priority)  # fmt: skip
        try:
            return (await self._roundtrip(rid, frames, timeout_s, f"infer({model!r})"))[1]
        except (asyncio.CancelledError, TimeoutError):
            self._cancel_soon(rid)  # nobody waits for the answer: the server need not run it
            raise

    def _cancel_soon(self, rid: int) -> None:
        """Sends a cancel of `rid` without waiting for anything (its reply is ignored)."""
        cid = next(self._ids)
        try:
            fut = self._sock.send_multipart([b"", *encode_cancel(cid, rid)],
                                            flags=self._zmq.NOBLOCK)  # fmt: skip
        except Exception:  # noqa: BLE001 - best effort: the socket may be closing
            return
        if isinstance(fut, asyncio.Future):
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())

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

        async def send_and_wait():
            # the send too: a DEALER with no connected peer would wait for one forever
            await self._sock.send_multipart([b"", *frames], copy=False)
            return await fut

        try:
            return await asyncio.wait_for(send_and_wait(), timeout)
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
