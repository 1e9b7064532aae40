"""Bookkeeping that every step-level policy shares: one ordered queue, c(b), the step.

Like the whole-batch baselines (orloj_rt/policies/base.py), a step policy schedules one
model from one queue ordered by `queue_key()` (the deadline unless a policy says
otherwise), on the active engine's `RequestQueue`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orloj_rt.engine import DEFAULT_ALPHA, DEFAULT_MAX_BATCH, RequestQueue
from orloj_rt.policies.base import Request, check_tier, checked_request, inflation_table
from orloj_rt.policies.step_interface import StepDecision, StepPolicy

#: The solo work of one step, in units of the mean solo time (the issue's definition).
DEFAULT_STEP = 0.1


def check_step(step: float) -> float:
    step = float(step)
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"the step's solo work must be > 0 seconds, got {step!r}")
    return step


class QueuedStepPolicy(StepPolicy):
    """A step policy over one queue of requests ordered by `queue_key()`, then by id."""

    def __init__(
        self,
        max_batch: int = DEFAULT_MAX_BATCH,
        alpha: float = DEFAULT_ALPHA,
        inflation: Sequence[float] | None = None,
        step: float = DEFAULT_STEP,
    ):
        self._c = inflation_table(max_batch, alpha, inflation)
        self._max_batch = len(self._c)
        self._step = check_step(step)
        self._queue = RequestQueue()
        self._requests: dict[int, Request] = {}

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def step(self) -> float:
        return self._step

    @property
    def inflation(self) -> list[float]:
        return list(self._c)

    def queue_key(self, req: Request) -> float:
        """The queue's order; the deadline unless a policy says otherwise."""
        return req.deadline

    def enqueue(self, req_id, app, arrival, deadline, hint=None, priority=0) -> None:
        req_id, arrival, deadline = checked_request(req_id, arrival, deadline, self._requests)
        priority = check_tier(priority)
        req = Request(req_id, self._app_of(app, arrival), arrival, deadline, hint, priority)
        self._queue.push(req_id, self.queue_key(req))
        self._requests[req_id] = req

    def remove(self, req_id) -> None:
        if req_id not in self._requests:
            raise KeyError(f"unknown request id {req_id!r}: it is not queued")
        self._take(req_id)

    def _take(self, req_id: int) -> Request:
        """Removes queued request `req_id` and returns it."""
        self._queue.remove(req_id)
        req = self._requests.pop(req_id)
        self._left(req)
        return req

    def _app_of(self, app, arrival: float):
        """The app a valid arriving request is queued under (a hook; `app` itself)."""
        return app

    def _left(self, req: Request) -> None:  # noqa: B027 - optional hook
        """Called for every request that leaves the queue (joined, dropped, removed)."""

    def _take_head(self, n: int) -> list[int]:
        """Removes and returns the first `n` requests of the queue."""
        if n <= 0:
            return []
        ids = [rid for _, rid in self._queue.head(n)]
        for rid in ids:
            self._take(rid)
        return ids

    def _pop_below(self, key: float) -> list[int]:
        """Removes and returns every request whose key is below `key`."""
        ids = self._queue.pop_below(key)
        for rid in ids:
            self._left(self._requests.pop(rid))
        return ids

    def __len__(self) -> int:
        return len(self._requests)

    @staticmethod
    def decision(joined=(), dropped=(), ended=()) -> StepDecision:
        return StepDecision(list(joined), list(dropped), list(ended))
