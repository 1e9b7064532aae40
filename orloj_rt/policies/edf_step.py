"""`edf-step`: continuous batching in earliest-deadline-first order.

At every step boundary it drops the queued requests whose deadline has passed, ends the
running members whose deadline has passed (their answer can no longer be on time), and
fills the free places with the earliest deadlines. Like `edf` it has no model of
execution time: it never gives up on a request before its deadline.
"""

from __future__ import annotations

from orloj_rt.policies.base import expired_before
from orloj_rt.policies.step_base import QueuedStepPolicy


class EdfStepPolicy(QueuedStepPolicy):
    name = "edf-step"

    def step_boundary(self, now, running):
        """Called at each step boundary: end and drop the expired, then fill the free
        places with the earliest deadlines."""
        limit = expired_before(now)
        ended = [m.id for m in running if m.deadline < limit]
        dropped = self._pop_below(limit)
        joined = self._take_head(self._max_batch - len(running) + len(ended))
        return self.decision(joined=joined, dropped=dropped, ended=ended)
