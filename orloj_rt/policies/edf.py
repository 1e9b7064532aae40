"""`edf`: earliest deadline first, the textbook real-time scheduler.

When a worker is idle it drops every request whose deadline has passed, then dispatches
the earliest deadlines, as many as the maximum batch allows. It has no model of execution
time: it never waits to form a batch and never gives up on a request early.
"""

from __future__ import annotations

from orloj_rt.policies.base import QueuedPolicy, expired_before


class EdfPolicy(QueuedPolicy):
    name = "edf"

    def decide(self, now: float):
        """Called when a worker is idle: drop the expired, batch the earliest deadlines."""
        dropped = self._pop_below(expired_before(now))
        return self.decision(batch=self._take_head(self._max_batch), dropped=dropped)
