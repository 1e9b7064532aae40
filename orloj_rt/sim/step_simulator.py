"""Step-level batching on the virtual clock: members join and leave at every step boundary.

The model (issue 8). Each worker runs its batch step by step. A step advances every
running member by `step` units of solo work and takes c(b) * step for the b members
running it. A member whose solo time is X is done after ceil(X / step) steps: it leaves
at the end of that step and is answered at once. At every step boundary the worker's
policy (a `StepPolicy`, orloj_rt/policies/step_interface.py) says who joins from the
queue, who is dropped, and which running members it ends.

The simulator calls, at the moments the runtime's step scheduler would:

    enqueue(id, app, arrival, deadline, hint)   at each arrival
    observe_finished(app, steps)                for each member done at a step's end
    step_boundary(now, running)                 at each step boundary of a busy worker,
                                                and at any event while a worker is idle
                                                and requests are queued
    observe_ended(app, steps)                   for each member the policy ended
    next_wakeup(now)                            after an idle worker got no member

Events at one instant are handled in this order: step ends (members that finished leave
and are answered), then arrivals, then the busy workers' boundaries in worker order, then
the idle workers in worker order. So a request arriving exactly at a step boundary can
join at that boundary.

Every request ends in exactly one state: completed (on time or late), dropped (from the
queue, or still queued when nothing else could happen), ended (stopped while it ran; it
is answered `dropped`), or rejected (never, here: step policies do not reject).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np

from orloj_rt.policies.step_interface import RunningMember, StepPolicy
from orloj_rt.sim.simulator import (
    COMPLETED,
    DROPPED,
    ENDED,
    PENDING,
    Outcome,
    SimulationError,
)

RUNNING = -1
# X / step a hair above an integer (floating-point noise) still needs only that many steps
_STEP_TOLERANCE = 1e-9


def steps_needed(solo: float, step: float) -> int:
    """The steps a request of solo time `solo` runs: ceil(solo / step), at least one."""
    return max(1, math.ceil(solo / step - _STEP_TOLERANCE))


def simulate_steps(
    policy: StepPolicy,
    arrival: Sequence[float],
    deadline: Sequence[float],
    solo: Sequence[float],
    apps: Sequence[str],
    inflation: Sequence[float],
    *,
    step: float,
    workers: int = 1,
    hints: Sequence[float] | None = None,
    clairvoyant: bool | None = None,
) -> Outcome:
    """Runs every request through the step policy on `workers` identical workers.

    `inflation[b - 1]` is c(b); a step of b members takes c(b) * `step`. `hints` are the
    per-request cost hints given to `enqueue`; a clairvoyant policy (`clairvoyant = True`
    on its class, or when `clairvoyant` says so) gets each request's true solo time
    instead. The Outcome's `batches` counts steps and `batch_sizes` holds the members of
    every step.
    """
    arrival = np.asarray(arrival, dtype=np.float64)
    deadline = np.asarray(deadline, dtype=np.float64)
    solo = np.asarray(solo, dtype=np.float64)
    n = len(arrival)
    if not (len(deadline) == len(solo) == len(apps) == n):
        raise ValueError("arrival, deadline, solo and apps must have one entry per request")
    if n and np.any(np.diff(arrival) < 0):
        raise ValueError("requests must be ordered by arrival time")
    if workers < 1:
        raise ValueError(f"need at least one worker, got {workers!r}")
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"the step's solo work must be > 0, got {step!r}")
    step_time = [float(v) * step for v in inflation]  # a step of b takes step_time[b - 1]
    max_batch = len(step_time)

    arr = arrival.tolist()
    dl = deadline.tolist()
    need = [steps_needed(x, step) for x in solo.tolist()]
    if clairvoyant is None:
        clairvoyant = bool(getattr(policy, "clairvoyant", False))
    hint_of = solo if clairvoyant else hints
    hint_list = None if hint_of is None else [float(h) for h in hint_of]
    state = [PENDING] * n
    finish = [math.nan] * n
    done = [0] * n  # steps run so far
    where = [-1] * n  # the worker a running member is on
    sizes: list[int] = []

    batch: list[list[int]] = [[] for _ in range(workers)]  # running member ids, per worker
    ends: list[tuple[float, int]] = []  # (end of the current step, worker)
    wakeup = math.inf
    nxt = 0
    now = 0.0
    last_event = 0.0
    name = type(policy).__name__

    def take_queued(ids: list[int], to: int, what: str) -> None:
        for rid in ids:
            if not (0 <= rid < nxt) or state[rid] != PENDING:
                raise SimulationError(f"{name} {what} request {rid}, which is not queued")
            state[rid] = to

    def boundary(w: int) -> None:
        """Asks the policy about worker w at `now`, applies the answer, starts a step."""
        nonlocal wakeup
        members = batch[w]
        running = [RunningMember(rid, apps[rid], dl[rid], done[rid]) for rid in members]
        joined, dropped, ended = policy.step_boundary(now, running)
        take_queued(dropped, DROPPED, "dropped")
        if ended:
            gone = set(ended)
            for rid in ended:
                if not (0 <= rid < n) or state[rid] != RUNNING or where[rid] != w:
                    raise SimulationError(f"{name} ended request {rid}, which is not "
                                          f"running on worker {w}")
                state[rid] = ENDED
                policy.observe_ended(apps[rid], done[rid])
            members = batch[w] = [rid for rid in members if rid not in gone]
        take_queued(joined, RUNNING, "admitted")
        for rid in joined:
            where[rid] = w
        members.extend(joined)
        b = len(members)
        if b > max_batch:
            raise SimulationError(f"{name} made a batch of {b} > the maximum {max_batch}")
        if b:
            heapq.heappush(ends, (now + step_time[b - 1], w))
            sizes.append(b)
        elif len(policy):
            w_at = policy.next_wakeup(now)
            if w_at is not None:
                if not w_at > now:
                    raise SimulationError(f"{name}.next_wakeup({now!r}) returned {w_at!r}, "
                                          "which is not in the future")
                wakeup = min(wakeup, w_at)

    while True:
        t_arr = arr[nxt] if nxt < n else math.inf
        t_end = ends[0][0] if ends else math.inf
        idle = [w for w in range(workers) if not batch[w]]
        t_wake = wakeup if idle else math.inf
        now = min(t_arr, t_end, t_wake)
        if now == math.inf:
            break
        last_event = now
        if t_wake <= now:
            wakeup = math.inf
        at_boundary = []
        while ends and ends[0][0] <= now:
            _, w = heapq.heappop(ends)
            members = batch[w]
            left = []
            for rid in members:
                done[rid] += 1
                if done[rid] >= need[rid]:
                    state[rid] = COMPLETED
                    finish[rid] = now
                    policy.observe_finished(apps[rid], done[rid])
                else:
                    left.append(rid)
            batch[w] = left
            if left:
                at_boundary.append(w)
        while nxt < n and arr[nxt] <= now:
            hint = None if hint_list is None else hint_list[nxt]
            policy.enqueue(nxt, apps[nxt], arr[nxt], dl[nxt], hint)
            nxt += 1
        for w in sorted(at_boundary):
            boundary(w)
        for w in range(workers):
            if not batch[w] and len(policy):
                boundary(w)
        if not ends and nxt >= n and wakeup == math.inf and len(policy):
            # nothing can happen any more, yet requests wait: they count as dropped
            for rid in range(n):
                if state[rid] == PENDING:
                    policy.remove(rid)
                    state[rid] = DROPPED
    return Outcome(
        state=np.asarray(state, dtype=np.int8),
        finish=np.asarray(finish, dtype=np.float64),
        batches=len(sizes),
        batch_sizes=np.asarray(sizes, dtype=np.int32),
        end_time=last_event,
    )
