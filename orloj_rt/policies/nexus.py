"""`nexus`: batching from a deterministic offline profile (Nexus, SOSP 2019).

Shen et al., "Nexus: A GPU Cluster Engine for Accelerating DNN-Based Video Analysis",
SOSP 2019. Nexus profiles each model offline and schedules from that profile; here the
profile is the mean batch latency at each batch size,

    l(b) = c(b) * E[max of b solo times],

computed once from the prior distribution (`set_default_distribution`), which stands for
Nexus's offline profiling; it does not learn online.

**Batch size from the duty cycle.** Nexus's squishy bin packing gives a model session a
batch size b and a duty cycle d = l(b): a request that arrives just after a batch started
waits up to one duty cycle, then runs in the next batch, so its worst-case latency is
d + l(b) = 2 l(b). Nexus takes the largest b with 2 l(b) <= SLO (b = 1 if even 2 l(1)
exceeds the SLO). The SLO is a request's deadline - arrival. Nexus serves one SLO per
session; when the queue holds requests with several SLOs, the head request's (the
earliest deadline still queued) sets b.

**Early drop with a sliding window.** Nexus drops requests early so that the batch is
filled with requests that can still make it, rather than running stale ones late. When a
worker is idle it looks at the head of the deadline order with a window of
w = min(b, queued) requests: if the head cannot finish within l(w) from now,
now + l(w) > its deadline, it drops the head and slides the window on to the next
request; once the head can, it dispatches the w earliest deadlines (all of them meet
now + l(w), since their deadlines are no earlier than the head's).

A deterministic profile is right for static models; for dynamic ones the mean hides the
tail, so its batches finish late as often as not.
"""

from __future__ import annotations

import bisect

from orloj_rt.policies.base import QueuedPolicy


class NexusPolicy(QueuedPolicy):
    name = "nexus"

    _profile: list[float] | None = None

    def set_default_distribution(self, dist) -> None:
        """Called before serving with the model's profiled solo-time distribution."""
        c = self._c
        self._profile = [0.0] + [c[b - 1] * dist.expected_max(b) for b in range(1, len(c) + 1)]
        # 2 l(b) for b = 1..B, non-decreasing: the duty-cycle test as a bisection
        self._cycle = [2.0 * t for t in self._profile[1:]]

    def profile(self, b: int) -> float:
        """The profiled mean latency of a batch of `b`."""
        if self._profile is None:
            raise ValueError("nexus needs a profile: call set_default_distribution(dist) first")
        return self._profile[b]

    def batch_size(self, slo: float) -> int:
        """The duty-cycle batch size for an SLO: the largest b with 2 l(b) <= slo, or 1."""
        if self._profile is None:
            raise ValueError("nexus needs a profile: call set_default_distribution(dist) first")
        return max(1, bisect.bisect_right(self._cycle, slo))

    def decide(self, now: float):
        """Called when a worker is idle: slide the window past the heads that cannot
        finish within l(window), then dispatch the window."""
        if self._profile is None:
            self.profile(1)  # raises: no profile
        dropped: list[int] = []
        while self._requests:
            deadline, head = self._queue.first()
            req = self._requests[head]
            window = min(self.batch_size(req.deadline - req.arrival), len(self._requests))
            if now + self._profile[window] <= deadline:
                return self.decision(batch=self._take_head(window), dropped=dropped)
            dropped.extend(self._take_head(1))
        return self.decision(dropped=dropped)
