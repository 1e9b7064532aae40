"""The policy interface that every scheduler implements, and the decision it returns.

One `Policy` object schedules one model. The scheduler process and the simulator drive it
through the same few calls:

    enqueue()   when a request arrives;
    decide()    when a worker is idle: which requests to run now, which to give up on;
    observe_*() when a batch has run, so that the policy learns online;
    remove()    when a request leaves the queue for another reason (cancel, shutdown).

Both engines (the compiled one in csrc/ and the pure-Python twin) implement it, and so do
the baselines. Times are seconds on whatever clock the caller uses (wall clock in the
runtime, a virtual clock in the simulator); only differences of times matter.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple


class Decision(NamedTuple):
    """What to do with an idle worker.

    batch:    request ids to run now as one batch, most urgent first (may be empty).
    dropped:  request ids that can no longer meet their deadline: answer `dropped`.
    rejected: request ids refused by an admission rule such as a queue timeout: answer
              `rejected`.
    """

    batch: list[int]
    dropped: list[int]
    rejected: list[int]
    #: the index of the model variant the batch runs (orloj_rt/policies/utility.py); None
    #: for a policy that does not choose variants (the model's full variant runs)
    variant: int | None = None


class Policy(abc.ABC):
    """A batching policy for one model. Every policy name is registered in `POLICIES`."""

    #: The name used on command lines and in results (`orloj`, `fifo`, ...).
    name: str = ""

    @abc.abstractmethod
    def enqueue(
        self,
        req_id: int,
        app: str,
        arrival: float,
        deadline: float,
        hint: float | None = None,
        priority: int = 0,
    ) -> None:
        """Called once when request `req_id` arrives at time `arrival`.

        `app` selects the execution-time distribution; `hint` is an optional per-request
        cost hint known at arrival (the clairvoyant oracle reads its true solo time here).
        `priority` is the request's tier (0, the default, is the lowest; higher is more
        important): orloj with tier weights maximises weighted finishes
        (orloj_rt/policies/utility.py), fifo serves a higher tier first (Triton's priority
        levels), the other baselines have no priorities and ignore it.
        Raises ValueError for a duplicate id or a deadline before the arrival.
        """

    @abc.abstractmethod
    def remove(self, req_id: int) -> None:
        """Called when a queued request leaves for another reason. KeyError if unknown."""

    @abc.abstractmethod
    def decide(self, now: float) -> Decision:
        """Called whenever a worker is idle at time `now`.

        Returns the batch to dispatch and the requests to drop or reject. Every id returned
        has left the queue. An empty batch means: leave the worker idle until the next
        arrival, completion, or `next_wakeup()`.
        """

    def next_wakeup(self, now: float) -> float | None:
        """When an idle worker should ask `decide()` again even if nothing happens.

        Policies that wait on purpose (a batching delay, a timeout) return that time;
        the default is never.
        """
        return None

    def set_default_distribution(self, dist) -> None:  # noqa: B027 - optional hook
        """Called before serving with the model's prior execution-time distribution (from
        warm-up or a profile); apps first seen later start from it. Policies that do not
        model execution times ignore it."""

    def set_distribution(self, app: str, dist) -> None:  # noqa: B027 - optional hook
        """Called to give `app` its own prior distribution."""

    def observe_solo(self, app: str, solo_time: float) -> None:  # noqa: B027 - optional hook
        """Called with a measured per-request solo execution time (a batch of one, or a
        model's per-request work report), so that the policy learns online."""

    def observe_batch(  # noqa: B027 - optional hook
        self, apps: Sequence[str], exec_time: float
    ) -> None:
        """Called when a batch with members of `apps` has run for `exec_time` seconds."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of queued requests."""
