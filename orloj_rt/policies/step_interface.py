"""The interface of step-level policies: the batch is re-formed at every step boundary.

An iterative model (a generation loop: one step per token; an early-exit encoder: one
step per layer) can change its batch between two steps. Members whose work is done leave
and are answered at once; waiting requests join. A `StepPolicy` decides, at every step
boundary of a worker, who joins, who is given up while still queued, and which running
members are ended. The simulator (`orloj-rt sim --batching step`) and the runtime's
scheduler (`orloj-rt start --policy orloj-step`, docs/runtime.md#step-level-batching) both
drive it through the same calls:

    enqueue(id, app, arrival, deadline, hint)   at each arrival
    step_boundary(now, running)                 at each step boundary of a worker, and
                                                when an idle worker has requests queued
    observe_finished(app, steps)                when a member's work is done
    observe_ended(app, steps)                   when the policy ended a member
    next_wakeup(now)                            after an idle worker got no member

The step model. A step advances every running member by the same amount of solo work,
`step` seconds: the time one step of one request takes alone. A step of b members takes
c(b) * step, with c the model's batch inflation (c(1) = 1). A member that needs X seconds
of solo work is done after ceil(X / step) steps. `RunningMember.steps` counts the steps a
member has run, so its solo work so far is steps * step.

Times are seconds on the caller's clock (a virtual clock in the simulator); the policy
needs only differences of times.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import NamedTuple


class RunningMember(NamedTuple):
    """A member of a worker's running batch at a step boundary."""

    id: int
    app: str
    deadline: float
    steps: int  # steps run at the boundary, if it is still running
    # Of `steps`, those that nobody has yet seen it survive: it may have finished in them.
    # A runtime scheduler decides for a worker's next boundary ahead of the worker's
    # report of it, so the member's last step there is still unseen (1, or more when the
    # report is late); the simulator knows every boundary exactly (0). A policy must
    # condition on N > steps - unseen only: conditioning on N > steps would take every
    # member about to finish for a long one.
    unseen: int = 0


class StepDecision(NamedTuple):
    """What to do at a step boundary.

    joined:  queued request ids that join the batch and run from the next step on.
    dropped: queued request ids given up: answer `dropped`.
    ended:   running member ids stopped now, their partial work lost: answer `dropped`.

    Every id in `joined` and `dropped` has left the queue. The running batch after the
    boundary is the running members minus `ended` plus `joined`; it must not exceed the
    maximum batch.
    """

    joined: list[int]
    dropped: list[int]
    ended: list[int]


class StepPolicy(abc.ABC):
    """A step-level batching policy for one model. Registered in `STEP_POLICIES`."""

    #: The name used on command lines and in results (`orloj-step`, `fcfs-step`, ...).
    name: str = ""

    @property
    @abc.abstractmethod
    def max_batch(self) -> int:
        """The most members a worker may run at once."""

    @property
    @abc.abstractmethod
    def step(self) -> float:
        """The solo work of one step, in seconds."""

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
        """Called once when request `req_id` arrives at time `arrival` (`priority`: its
        tier, see Policy.enqueue; the step policies have no tiers yet and ignore it).
        ValueError for a duplicate id or a deadline before the arrival."""

    @abc.abstractmethod
    def remove(self, req_id: int) -> None:
        """Called when a queued request leaves for another reason. KeyError if unknown."""

    @abc.abstractmethod
    def step_boundary(self, now: float, running: Sequence[RunningMember]) -> StepDecision:
        """Called at every step boundary of a worker, after the members that finished in
        the step have left, with the members still running there (none when the worker is
        idle). Returns who joins, who is dropped from the queue and who is ended.

        A worker whose batch is empty after the decision stays idle until the next
        arrival or `next_wakeup()`; the caller asks again then.
        """

    def next_wakeup(self, now: float) -> float | None:
        """When an idle worker should ask again even if nothing arrives; default never."""
        return None

    def set_step_times(self, times: Sequence[float]) -> None:  # noqa: B027 - optional hook
        """Called while serving with what a step really takes: `times[b - 1]` seconds of
        wall time for a step of b members (learned online by the runtime, which sees the
        worker's overhead and the machine's other load; the warm-up's c(b) x step does
        not). Solo work keeps its units: a step still advances each member by `step`."""

    def set_default_distribution(self, dist) -> None:  # noqa: B027 - optional hook
        """Called before serving with the model's prior distribution of solo work (the
        whole request's solo time, in seconds); apps first seen later start from it."""

    def set_distribution(self, app: str, dist) -> None:  # noqa: B027 - optional hook
        """Called to give `app` its own prior distribution."""

    def observe_finished(self, app: str, steps: int) -> None:  # noqa: B027 - optional hook
        """Called when a member of `app` finished after `steps` steps: its solo work was
        (steps - 1) * step < X <= steps * step."""

    def observe_ended(self, app: str, steps: int) -> None:  # noqa: B027 - optional hook
        """Called when the policy ended a member of `app` after `steps` steps: its solo
        work X is known only to exceed steps * step (a censored observation)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of queued (not running) requests."""
