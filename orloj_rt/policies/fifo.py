"""`fifo`: Triton's dynamic batcher, the batching most servers ship.

Oldest request first, up to the maximum batch. With `max_queue_delay` > 0 it holds a
partial batch until the oldest request has waited that long (Triton's
`max_queue_delay_microseconds`); the default 0 dispatches whatever is queued. Its queue
policy rejects a request that has waited longer than its timeout (Triton's
`default_timeout_microseconds` with `timeout_action: REJECT`); the timeout is each
request's own SLO unless `queue_timeout` sets one for all. It knows nothing of execution
times, so a request still runs when it can no longer finish.
"""

from __future__ import annotations

from orloj_rt.engine import RequestQueue
from orloj_rt.engine.pure.batch_model import DEFAULT_ALPHA, DEFAULT_MAX_BATCH
from orloj_rt.policies.base import QueuedPolicy, Request


class TritonFifoPolicy(QueuedPolicy):
    name = "fifo"

    def __init__(
        self,
        max_batch: int = DEFAULT_MAX_BATCH,
        alpha: float = DEFAULT_ALPHA,
        inflation=None,
        max_queue_delay: float = 0.0,
        queue_timeout: float | None = None,
    ):
        super().__init__(max_batch, alpha, inflation)
        if not max_queue_delay >= 0:
            raise ValueError(f"max_queue_delay must be >= 0 seconds, got {max_queue_delay!r}")
        if queue_timeout is not None and not queue_timeout > 0:
            raise ValueError(f"queue_timeout must be > 0 seconds, got {queue_timeout!r}")
        self._delay = float(max_queue_delay)
        self._timeout = queue_timeout
        self._expiry = RequestQueue()  # the same requests, ordered by when they time out

    def queue_key(self, req: Request) -> float:
        return req.arrival

    def _on_enqueue(self, req: Request) -> None:
        timeout = req.deadline - req.arrival if self._timeout is None else self._timeout
        self._expiry.push(req.id, req.arrival + timeout)

    def _forget(self, req_id: int) -> Request:
        if req_id in self._expiry:
            self._expiry.remove(req_id)
        return super()._forget(req_id)

    def decide(self, now: float):
        """Called when a worker is idle: reject the timed out, then batch the oldest."""
        rejected = self._expiry.pop_below(now)  # waited longer than the timeout
        for rid in rejected:
            self._queue.remove(rid)
            self._requests.pop(rid)
        if not self._requests:
            return self.decision(rejected=rejected)
        oldest = self._queue.first()[0]
        if len(self._requests) < self._max_batch and now - oldest < self._delay:
            return self.decision(rejected=rejected)  # hold the partial batch a little
        return self.decision(batch=self._take_head(self._max_batch), rejected=rejected)

    def next_wakeup(self, now: float) -> float | None:
        """Called when an idle worker got no batch: when the batching delay runs out."""
        if not self._requests:
            return None
        at = self._queue.first()[0] + self._delay
        return at if at > now else None
