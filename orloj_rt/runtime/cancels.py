"""The frontend's book of cancellations (`op: "cancel"`, docs/protocol.md), free of IO.

A client cancels one of its own requests by its id: the key is (the client's routing
identity, the request's id), so that no client can cancel another's. The frontend asks the
scheduler where the request is (`Cancel` -> `Cancelled`, protocol/messages.py) and then:

- "queued": it is answered `cancelled`, its ring slot is free again, and it never runs;
- "running": it is answered `cancelled` at once, but its ring slot stays taken until the
  worker is done with it (its `Results`, the `Discard` that ends a step member, or the
  `WorkerLost` of its worker): a *zombie*, whose late answer is discarded;
- otherwise its answer had gone out or is on its way: nothing changes.

The cancel itself is answered `ok` with `result`: "queued", "running", "answered" or
"unknown" (wire.CANCEL_*). A request answered a moment ago is "answered" as long as its
key is among the last `REMEMBER_ANSWERED` answered keys.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

#: answered requests' keys kept, to tell "answered" from "unknown"
REMEMBER_ANSWERED = 65_536


class CancelBook:
    """Keys of pending requests, recently answered keys, cancels waiting for the
    scheduler, and zombies (answered `cancelled` while a worker still holds their slot)."""

    def __init__(self, remember: int = REMEMBER_ANSWERED) -> None:
        self.remember = remember
        self.pending: dict[tuple, int] = {}  # (identity, id) -> token, while unanswered
        self.answered: OrderedDict[tuple, None] = OrderedDict()
        self.waiting: dict[int, list[tuple[list, Any]]] = {}  # token -> [(envelope, id)]
        self.zombies: dict[int, Any] = {}  # token -> the frontend's record, slot held
        self.cancelled = 0  # requests answered `cancelled`

    @staticmethod
    def key(envelope: list, req_id: Any) -> tuple:
        return (bytes(envelope[0]), req_id)

    def admitted(self, key: tuple, token: int) -> None:
        # a client that reuses an id in flight names its newest request with it
        self.pending[key] = token

    def done(self, key: tuple, token: int) -> None:
        """Request `token` was answered (any status)."""
        if self.pending.get(key) == token:
            del self.pending[key]
        answered = self.answered
        answered[key] = None
        answered.move_to_end(key)
        if len(answered) > self.remember:
            answered.popitem(last=False)

    def ask(self, key: tuple, envelope: list, cancel_id: Any) -> tuple[int | None, bool]:
        """A cancel of `key` arrived: (the token to ask the scheduler about, or None when
        no request of that key is pending; whether this is the first cancel of it, the
        one to send)."""
        token = self.pending.get(key)
        if token is None:
            return None, False
        first = token not in self.waiting
        self.waiting.setdefault(token, []).append((envelope, cancel_id))
        return token, first

    def was_answered(self, key: tuple) -> bool:
        return key in self.answered

    def take_waiting(self, token: int) -> list[tuple[list, Any]]:
        return self.waiting.pop(token, [])
