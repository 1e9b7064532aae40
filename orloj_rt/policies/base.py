"""Bookkeeping that every baseline policy shares: one ordered queue and the model's c(b).

The baselines (fifo, edf, nexus, clockwork, oracle) schedule one model from one queue,
whatever the requests' apps: the systems they stand for keep one queue per model. The
queue is the active engine's `RequestQueue` (compiled, or the pure twin), ordered by
`queue_key()`: the deadline, or the arrival time for fifo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orloj_rt.engine import DEFAULT_ALPHA, DEFAULT_MAX_BATCH, RequestQueue, inflation_table
from orloj_rt.engine.interface import Decision, Policy


class Request:
    """What a baseline remembers about a queued request."""

    __slots__ = ("id", "app", "arrival", "deadline", "hint", "priority")

    def __init__(self, req_id: int, app: str, arrival: float, deadline: float, hint,
                 priority: int = 0):  # fmt: skip
        self.id = req_id
        self.app = app
        self.arrival = arrival
        self.deadline = deadline
        self.hint = hint
        self.priority = priority


class QueuedPolicy(Policy):
    """A policy over one queue of requests ordered by `queue_key()`, then by id."""

    def __init__(
        self,
        max_batch: int = DEFAULT_MAX_BATCH,
        alpha: float = DEFAULT_ALPHA,
        inflation: Sequence[float] | None = None,
    ):
        self._c = inflation_table(max_batch, alpha, inflation)
        self._max_batch = len(self._c)
        self._queue = RequestQueue()
        self._requests: dict[int, Request] = {}

    @property
    def max_batch(self) -> int:
        return self._max_batch

    def queue_key(self, req: Request) -> float:
        """The queue's order; the deadline unless a policy says otherwise."""
        return req.deadline

    def enqueue(self, req_id, app, arrival, deadline, hint=None, priority=0) -> None:
        req_id, arrival, deadline = checked_request(req_id, arrival, deadline, self._requests)
        req = Request(req_id, app, arrival, deadline, hint, check_tier(priority))
        self._queue.push(req_id, self.queue_key(req))
        self._requests[req_id] = req
        self._on_enqueue(req)

    def _on_enqueue(self, req: Request) -> None:
        """Called after a request joined the queue (for policies with a second index)."""

    def remove(self, req_id) -> None:
        if req_id not in self._requests:
            raise KeyError(f"unknown request id {req_id!r}: it is not queued")
        self._queue.remove(req_id)
        self._forget(req_id)

    def _forget(self, req_id: int) -> Request:
        """Called for every request that leaves the queue; returns what was known of it."""
        return self._requests.pop(req_id)

    def _take_head(self, n: int) -> list[int]:
        """Removes and returns the first `n` requests of the queue."""
        ids = [rid for _, rid in self._queue.head(n)]
        for rid in ids:
            self._queue.remove(rid)
            self._forget(rid)
        return ids

    def _pop_below(self, key: float) -> list[int]:
        """Removes and returns every request whose key is below `key`."""
        ids = self._queue.pop_below(key)
        for rid in ids:
            self._forget(rid)
        return ids

    def __len__(self) -> int:
        return len(self._requests)

    @staticmethod
    def decision(batch=(), dropped=(), rejected=()) -> Decision:
        return Decision(list(batch), list(dropped), list(rejected))


def checked_request(req_id, arrival, deadline, queued) -> tuple[int, float, float]:
    """(id, arrival, deadline) of a request to enqueue, checked: finite times, a deadline
    not before the arrival, an id not already in `queued`; ValueError otherwise."""
    arrival = float(arrival)
    deadline = float(deadline)
    if not (math.isfinite(arrival) and math.isfinite(deadline)):
        raise ValueError(f"arrival and deadline must be finite, got {arrival!r}, {deadline!r}")
    if deadline < arrival:
        raise ValueError(
            f"deadline {deadline!r} is in the past: it is before the arrival {arrival!r}"
        )
    req_id = int(req_id)
    if req_id in queued:
        raise ValueError(f"request id {req_id} is already queued")
    return req_id, arrival, deadline


#: the highest priority tier (orloj_rt/protocol/wire.py MAX_PRIORITY)
MAX_TIER = 7


def check_tier(priority) -> int:
    """A request's priority tier, checked: an integer in 0..MAX_TIER; ValueError naming
    `priority` otherwise."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
        0 <= priority <= MAX_TIER
    ):
        raise ValueError(f"priority {priority!r} is out of range: a tier is an integer in "
                         f"0..{MAX_TIER}")
    return priority


def expired_before(now: float) -> float:
    """A key below which a deadline has passed by `now`: a batch takes time, so a request
    whose deadline is `now` itself cannot finish either."""
    return math.nextafter(now, math.inf)
