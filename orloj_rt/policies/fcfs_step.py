"""`fcfs-step`: continuous batching as LLM servers do it by default (Orca, vLLM).

At every step boundary the oldest waiting requests join, as many as the free places in
the batch allow. It knows no deadlines: it never drops a queued request and never ends a
running member, so under overload everyone is admitted and everyone is late.
"""

from __future__ import annotations

from orloj_rt.policies.base import Request
from orloj_rt.policies.step_base import QueuedStepPolicy


class FcfsStepPolicy(QueuedStepPolicy):
    name = "fcfs-step"

    def queue_key(self, req: Request) -> float:
        return req.arrival

    def step_boundary(self, now, running):
        """Called at each step boundary: fill the free places in arrival order."""
        return self.decision(joined=self._take_head(self._max_batch - len(running)))
