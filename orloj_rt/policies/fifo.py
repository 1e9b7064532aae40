"""`fifo`: Triton's dynamic batcher as a user would tune it, the batching most servers ship.

It follows Triton's own description of the dynamic batcher (Triton Inference Server user
guide, "Batchers" > "Dynamic Batcher", docs/user_guide/batcher.md) and its code
(`DynamicBatchScheduler::GetDynamicBatch`, triton-inference-server/core,
src/dynamic_batch_scheduler.cc). Requests join the batch in arrival order. When a worker
is idle, with `n` = min(queued, maximum batch) requests pending:

1. **Queue policy.** A request that has waited longer than its timeout is **rejected**
   (`default_queue_policy { timeout_action: REJECT, default_timeout_microseconds }`). The
   timeout is each request's own SLO (deadline - arrival) unless `queue_timeout` sets one
   for all.
2. **Preferred batch sizes** (`preferred_batch_size`): by default the powers of two from 2
   up to the maximum batch (2, 4, ..., 32 for 32). If a preferred size can be formed, the
   largest one that fits in `n` is dispatched at once ("If the dynamic batcher can form a
   batch of a preferred size(s) it will create a batch of the largest possible preferred
   size"): 5 queued with a maximum of 8 -> a batch of 4. 1 is not a preferred size: a
   batch of one can always be formed, so the queue delay would never hold anything.
3. **Queue delay** (`max_queue_delay_microseconds`). If no preferred size can be formed,
   the partial batch is held as long as no pending request has waited longer than its
   delay; once one has, the whole pending batch (`n`, whatever its size) is dispatched,
   as Triton's code does when the delay is exceeded. A full batch (`n` reaches the largest
   preferred size, or the maximum batch without preferred sizes) never waits. With a delay
   of 0 nothing is held: the largest preferred size if one fits, else all `n`.

**The delay, chosen from the SLO.** Triton's documentation gives a procedure, not a
number: start with no delay, and if latency is within budget "try increasing delay values
until the latency budget is exceeded" (batcher.md, "Recommended Configuration Process");
Model Analyzer automates the same search under a latency constraint, sweeping
`max_queue_delay_microseconds` in its manual mode (model_analyzer docs/config_search.md).
Neither states a fraction. A delay spends the held request's latency budget, and a
request's execution still has to fit in what is left, so the tuned value is a small
fraction of the budget. We fix that fraction: unless `max_queue_delay` is given, each
request's delay is `queue_delay_fraction` (default 0.1) x its SLO, so that the policy needs
no configuration in the runtime or the simulator. A user tuning it would also never hold
a request longer than the model takes to run a full batch (by then the next batch is
forming anyway), so once the model's profile is known (`set_default_distribution`) the
delay is at most that: l(B) = c(B) x E[max of B solo times] for the maximum batch B.
Without that cap a 60 s SLO would hold a lone request for 6 s. Under overload the queue
always holds a preferred size and the delay never binds; it matters only at light load.

It knows nothing of execution times, so a request still runs when it can no longer
finish.

**Priorities** (Triton's `priority_levels`, batcher.md "Priority"): requests of a higher
tier are always taken before those of a lower one, in arrival order within a tier (here a
higher `priority` is more important; Triton numbers the other way round). The queue's key
is the arrival time less `TIER_SPAN` per tier, which orders by tier first as long as the
queued requests arrived within TIER_SPAN of each other (a million seconds). Timeouts and
queue delays stay each request's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orloj_rt.engine import DEFAULT_ALPHA, DEFAULT_MAX_BATCH, RequestQueue
from orloj_rt.policies.base import QueuedPolicy, Request

#: The default queue delay as a fraction of each request's SLO (see the module docstring).
DEFAULT_QUEUE_DELAY_FRACTION = 0.1
#: seconds of arrival time that one priority tier outweighs in the queue's order
TIER_SPAN = 1e6


def powers_of_two(max_batch: int) -> list[int]:
    """The default preferred batch sizes: 2, 4, 8, ... up to `max_batch`."""
    sizes = []
    b = 2
    while b <= max_batch:
        sizes.append(b)
        b *= 2
    return sizes


class TritonFifoPolicy(QueuedPolicy):
    name = "fifo"

    def __init__(
        self,
        max_batch: int = DEFAULT_MAX_BATCH,
        alpha: float = DEFAULT_ALPHA,
        inflation=None,
        max_queue_delay: float | None = None,
        queue_timeout: float | None = None,
        preferred_batch_sizes: Sequence[int] | None = None,
        queue_delay_fraction: float = DEFAULT_QUEUE_DELAY_FRACTION,
    ):
        super().__init__(max_batch, alpha, inflation)
        if max_queue_delay is not None and not max_queue_delay >= 0:
            raise ValueError(f"max_queue_delay must be >= 0 seconds, got {max_queue_delay!r}")
        if queue_timeout is not None and not queue_timeout > 0:
            raise ValueError(f"queue_timeout must be > 0 seconds, got {queue_timeout!r}")
        if not 0 <= queue_delay_fraction < 1:
            raise ValueError(
                f"queue_delay_fraction must be in [0, 1), got {queue_delay_fraction!r}"
            )
        if preferred_batch_sizes is None:
            preferred = powers_of_two(self._max_batch)
        else:
            preferred = sorted({int(b) for b in preferred_batch_sizes})
            bad = [b for b in preferred if not 1 <= b <= self._max_batch]
            if bad:
                raise ValueError(
                    f"preferred batch sizes must be in 1..{self._max_batch}, got {bad}"
                )
        self._preferred = preferred
        # a batch this large never waits (Triton's max_preferred_batch_size_)
        self._full = preferred[-1] if preferred else self._max_batch
        self._delay = None if max_queue_delay is None else float(max_queue_delay)
        self._fraction = float(queue_delay_fraction)
        self._delays = self._fraction > 0 if self._delay is None else self._delay > 0
        self._timeout = queue_timeout
        self._expiry = RequestQueue()  # the same requests, ordered by when they time out
        self._release = RequestQueue()  # ... and by when their queue delay runs out
        self._delay_cap = math.inf  # l(max batch) once the profile is known

    @property
    def preferred_batch_sizes(self) -> list[int]:
        return list(self._preferred)

    def set_default_distribution(self, dist) -> None:
        """Called before serving with the model's profiled solo-time distribution: the
        derived delay is capped at the profiled latency of a full batch."""
        b = self._max_batch
        self._delay_cap = self._c[b - 1] * dist.expected_max(b)

    def queue_delay(self, arrival: float, deadline: float) -> float:
        """The queue delay of a request: `max_queue_delay`, else a fraction of its SLO,
        at most the profiled latency of a full batch."""
        if self._delay is not None:
            return self._delay
        return min(self._fraction * (deadline - arrival), self._delay_cap)

    def queue_key(self, req: Request) -> float:
        return req.arrival - TIER_SPAN * req.priority if req.priority else req.arrival

    def _on_enqueue(self, req: Request) -> None:
        timeout = req.deadline - req.arrival if self._timeout is None else self._timeout
        self._expiry.push(req.id, req.arrival + timeout)
        self._release.push(req.id, req.arrival + self.queue_delay(req.arrival, req.deadline))

    def _forget(self, req_id: int) -> Request:
        if req_id in self._expiry:
            self._expiry.remove(req_id)
        if req_id in self._release:
            self._release.remove(req_id)
        return super()._forget(req_id)

    def _release_time(self, n: int) -> float:
        """When the first of the `n` pending requests has waited its queue delay."""
        if len(self._requests) <= n:
            return self._release.first()[0]
        return min(self._release.key_of(rid) for _, rid in self._queue.head(n))

    def _batch_size(self, now: float, n: int) -> int:
        """How many of the `n` pending requests to dispatch now; 0 holds them."""
        best = 0
        for b in self._preferred:
            if b <= n:
                best = b
        if best == n:
            return n  # a preferred size, and all that is pending: whether or not it waited
        exceeded = self._delays and now >= self._release_time(n)
        if best and not exceeded:
            return best  # the largest preferred size that can be formed
        if not self._delays or exceeded or n >= self._full:
            return n
        return 0  # hold the partial batch until its delay runs out

    def decide(self, now: float):
        """Called when a worker is idle: reject the timed out, then dispatch the largest
        preferred batch, or hold a partial one until its queue delay runs out."""
        rejected = self._expiry.pop_below(now)  # waited longer than the timeout
        for rid in rejected:
            self._queue.remove(rid)
            self._release.remove(rid)
            self._requests.pop(rid)
        if not self._requests:
            return self.decision(rejected=rejected)
        size = self._batch_size(now, min(len(self._requests), self._max_batch))
        return self.decision(batch=self._take_head(size), rejected=rejected)

    def next_wakeup(self, now: float) -> float | None:
        """Called when an idle worker got no batch: when the queue delay of a pending
        request runs out (or, if earlier, one times out)."""
        if not self._requests:
            return None
        at = self._release_time(min(len(self._requests), self._max_batch))
        # a request is rejected once it has waited longer than its timeout: just after
        timeout = math.nextafter(self._expiry.first()[0], math.inf)
        if timeout < at:
            at = timeout
        return at if at > now else None
