"""`nexus`: batching from a deterministic offline profile (Nexus, SOSP 2019).

The profile is the mean batch latency at each batch size,

    profile(b) = c(b) * E[max of b solo times],

computed once from the prior distribution (`set_default_distribution`), which stands for
Nexus's offline profiling; it does not learn online. When a worker is idle it:

1. drops, early, every request that cannot finish even alone: now + profile(1) > deadline;
2. takes the largest batch b whose profile meets the earliest deadline,
   now + profile(b) <= that deadline, and dispatches the b earliest deadlines.

A deterministic profile is right for static models; for dynamic ones the mean hides the
tail, so its batches finish late as often as not.
"""

from __future__ import annotations

from orloj_rt.policies.base import QueuedPolicy


class NexusPolicy(QueuedPolicy):
    name = "nexus"

    _profile: list[float] | None = None

    def set_default_distribution(self, dist) -> None:
        """Called before serving with the model's profiled solo-time distribution."""
        c = self._c
        self._profile = [0.0] + [c[b - 1] * dist.expected_max(b) for b in range(1, len(c) + 1)]

    def profile(self, b: int) -> float:
        """The profiled mean latency of a batch of `b`."""
        if self._profile is None:
            raise ValueError("nexus needs a profile: call set_default_distribution(dist) first")
        return self._profile[b]

    def decide(self, now: float):
        """Called when a worker is idle: drop what cannot finish alone, then dispatch the
        largest batch whose profile meets the earliest deadline."""
        dropped = self._pop_below(now + self.profile(1))
        if not self._requests:
            return self.decision(dropped=dropped)
        slack = self._queue.first()[0] - now
        size = 1
        for b in range(2, min(len(self._requests), self._max_batch) + 1):
            if self._profile[b] <= slack:
                size = b
        return self.decision(batch=self._take_head(size), dropped=dropped)
