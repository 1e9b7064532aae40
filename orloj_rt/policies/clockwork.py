"""`clockwork`: conservative latency estimates from recent measurements (Clockwork, OSDI 2020).

For each batch size b the estimate is the maximum of the last `history` (10) measured
batch times of that size. Before any measurement of a size, its window holds `history`
profiled runs from the prior distribution: the batch-time quantiles at levels
(i + 0.5) / history, i = 0..history-1, so the seed estimate is the 95th percentile of a
batch of b, c(b) * F^-1(0.95^(1/b)).

When a worker is idle it:

1. drops every request that the estimate says cannot make it even alone:
   now + estimate(1) > deadline;
2. orders the rest by latest start time, deadline - estimate, which with one model is the
   deadline order; and dispatches the largest batch b (a power of two, below) whose
   estimate meets the earliest deadline among its members: now + estimate(b) <= that
   deadline.

Batch sizes are powers of two (1, 2, 4, 8, ... up to the maximum batch), as in Clockwork
(Gujarati et al., "Serving DNNs like Clockwork: Performance Predictability from the Bottom
Up", OSDI 2020): a model is compiled ahead of time for a fixed set of batch sizes (powers
of two in its model zoo), and the controller only dispatches one of those, rounding the
number of queued requests down to the largest supported size (`supported_batch_sizes`
and `batch_lookup` in its controller). 5 queued requests make a batch of 4, not 5.
"""

from __future__ import annotations

from collections import deque

from orloj_rt.engine import DEFAULT_ALPHA, DEFAULT_MAX_BATCH
from orloj_rt.policies.base import QueuedPolicy

DEFAULT_HISTORY = 10


class ClockworkPolicy(QueuedPolicy):
    name = "clockwork"

    def __init__(
        self,
        max_batch: int = DEFAULT_MAX_BATCH,
        alpha: float = DEFAULT_ALPHA,
        inflation=None,
        history: int = DEFAULT_HISTORY,
    ):
        super().__init__(max_batch, alpha, inflation)
        if not (isinstance(history, int) and history >= 1):
            raise ValueError(f"history must be an integer >= 1, got {history!r}")
        self._history = history
        self._recent: list[deque[float] | None] = [None] * (self._max_batch + 1)

    def set_default_distribution(self, dist) -> None:
        """Called before serving: seeds every batch size's window with profiled runs."""
        for b in range(1, self._max_batch + 1):
            cb = self._c[b - 1]
            runs = (
                cb * dist.quantile(((i + 0.5) / self._history) ** (1.0 / b))
                for i in range(self._history)
            )
            self._recent[b] = deque(runs, maxlen=self._history)

    def observe_batch(self, apps, exec_time) -> None:
        """Called when a batch has run: its time joins its size's window."""
        b = len(apps)
        if not 1 <= b <= self._max_batch:
            return
        window = self._recent[b]
        if window is None:
            window = self._recent[b] = deque(maxlen=self._history)
        window.append(float(exec_time))

    def estimate(self, b: int) -> float:
        """The maximum of the recent batch times of size `b`."""
        window = self._recent[b]
        if not window:
            raise ValueError(
                "clockwork needs a profile: call set_default_distribution(dist) first"
            )
        return max(window)

    def decide(self, now: float):
        """Called when a worker is idle: drop what cannot make it alone, then dispatch the
        largest power-of-two batch whose estimate meets its earliest deadline."""
        dropped = self._pop_below(now + self.estimate(1))
        if not self._requests:
            return self.decision(dropped=dropped)
        slack = self._queue.first()[0] - now
        size = 1
        most = min(len(self._requests), self._max_batch)
        b = 2
        while b <= most:  # the batch sizes Clockwork compiles: powers of two
            window = self._recent[b]
            if window and max(window) <= slack:
                size = b
            b *= 2
        return self.decision(batch=self._take_head(size), dropped=dropped)
