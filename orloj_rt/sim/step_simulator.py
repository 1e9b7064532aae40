"""Step-level batching on the virtual clock: members join and leave at every step boundary.

Two drivers. `simulate_serving_steps` (below; what `orloj-rt sim --batching step` and
bench/finish_rate.py run) drives the runtime's own serving core, with workers that report
each boundary and apply the core's decisions one boundary later, as the runtime's do.
`simulate_steps` calls a step policy directly and exactly at each boundary; it stays for
the policies' own tests. The rest of this docstring describes `simulate_steps`.

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

from orloj_rt.policies.step_interface import RunningMember, StepPolicy
from orloj_rt.sim.simulator import (
    COMPLETED,
    DROPPED,
    ENDED,
    PENDING,
    Outcome,
    SimulationError,
    checked_requests,
    drop_stranded,
    next_wakeup_after,
    outcome_of,
    submit_arrivals,
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
    arrival, deadline, solo = checked_requests(arrival, deadline, solo, apps, workers)
    n = len(arrival)
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
        wakeup = next_wakeup_after(now, last_event, wakeup)
        last_event = now
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
            drop_stranded(policy, state)
    return outcome_of(state, finish, sizes, last_event)


# ---------------------------------------------------------------------- through the core
JOINING = -2  # sent to a worker in a StepUpdate, not yet applied there


def step_profile(warmup_solo: Sequence[float], inflation: Sequence[float], step: float,
                 warmup_hints: Sequence[float] | None = None) -> list:  # fmt: skip
    """The ModelProfile fields a worker would send after warming up a model that declares
    steps: its examples' solo times, c(b), a work fit (solo time ~ step x steps), and the
    step profile [step_s, the step's c(1..B), the steps each example ran]
    (`steps_needed(x, step)` for each warm-up solo time x), and the examples' cost hints
    where the model derives them (`warmup_hints`)."""
    c = [float(v) for v in inflation]
    solo = [float(x) for x in warmup_solo]
    works = [steps_needed(x, step) for x in solo]
    hints = None if warmup_hints is None else [float(h) for h in warmup_hints]
    return [solo, c, [0.0, float(step)], [float(step), list(c), works], hints]


def simulate_serving_steps(
    policy: str,
    arrival: Sequence[float],
    deadline: Sequence[float],
    solo: Sequence[float],
    apps: Sequence[str],
    inflation: Sequence[float],
    warmup_solo: Sequence[float],
    *,
    step: float,
    workers: int = 1,
    hints: Sequence[float] | None = None,
    warmup_hints: Sequence[float] | None = None,
    clairvoyant: bool = False,
    policy_params: dict | None = None,
    trace: list | None = None,
    priorities: Sequence[int] | None = None,
) -> Outcome:
    """Runs every request through the runtime's own serving core (orloj_rt.serving) with
    step policy `policy` (`priorities`: each request's tier, as in `simulate_serving`),
    on `workers` identical workers emulated as runtime/worker.py and runtime/step_runner.py
    run them, on a virtual clock.

    The core serves one model that declares steps (`SimModel(..., step_kind="token")`);
    every worker's warm-up profile carries the step profile of `warmup_solo`
    (`step_profile`), from which the core builds and primes the policy as in `orloj-rt
    start`. Each worker runs its members step by step (a step of b members takes
    c(b) x `step`; a member of solo time X is done after `steps_needed(X, step)` steps,
    newcomers starting from 0). At each of its step boundaries a worker:

    1. answers the members done in the step (they complete then) and sends a
       `StepProgress` (`core.step_progress`): who runs, with their steps; who finished,
       with theirs; the last update it applied; one timed step of c(b) x `step` of model
       time and no overhead;
    2. applies the `StepUpdate`s it received during the step (ended members leave, those
       that had joined join), then starts its next step. An update computed from this
       boundary's report is applied at the next boundary, as in the runtime (the worker
       never waits for the scheduler); a worker with nobody running applies an update at
       once, as the runtime's idle worker does, and if that leaves it with nobody (every
       newcomer ended on the way) it reports so at once.

    Then the arrivals are submitted, and the scheduler's pass runs (`dispatch`,
    `step_updates`, `take_discards`, as `Scheduler._schedule`). Dropped tokens are
    answered at once: a queued one is DROPPED, a member (running, or on its way to a
    worker) is ENDED, even if it finishes at a later boundary (the frontend answers each
    request once, the first answer winning). Events at one instant: step ends in
    (time, worker) order, then arrivals, then the pass.

    `hints` are the requests' cost hints, in their descriptors (the core classes them for
    the policies that use them; a clairvoyant policy gets each true solo time instead).

    `trace`, if a list, receives every call made on the core, in order, as (name, args):
    ("worker_ready", (w, profiles)), ("submit", (descs,)), ("step_progress", (fields of
    the StepProgress,)), ("schedule", (now,)) for a pass, followed by what it decided:
    ("decided", ([(worker, seq, joined tokens, ended tokens) per StepUpdate], dropped)).
    tests/serving/test_replay.py replays it through the scheduler process's handlers.
    """
    from orloj_rt.protocol import messages as msgs
    from orloj_rt.serving import ServingCore
    from orloj_rt.sim.simulator import SimModel

    arrival, deadline, solo = checked_requests(arrival, deadline, solo, apps, workers)
    n = len(arrival)
    if not (step > 0 and math.isfinite(step)):
        raise ValueError(f"the step's solo work must be > 0, got {step!r}")
    step = float(step)
    c = [float(v) for v in inflation]
    max_batch = len(c)
    # a step of b takes c(b) x step: the same product the core's step-time model forms,
    # so the reports keep its learned scale at exactly 1
    step_time = [step * v for v in c]
    tiers = None if priorities is None else [int(p) for p in priorities]
    if tiers is not None and len(tiers) != len(arrival):
        raise ValueError("priorities must have one entry per request")
    core = ServingCore([SimModel("sim", max_batch, step_kind="token")], policy,
                       policy_params, workers, timer=lambda: 0.0)  # fmt: skip
    record = trace.append if trace is not None else (lambda _e: None)
    profile = step_profile(warmup_solo, c, step, warmup_hints)
    for w in range(workers):
        record(("worker_ready", (w, [profile])))
        core.worker_ready(w, [profile])
    if core.models[0].steps is None:
        raise ValueError(f"policy {policy!r} is not a step policy")
    policy_obj = core.models[0].policy

    arr = arrival.tolist()
    dl = deadline.tolist()
    x = solo.tolist()
    need = [steps_needed(v, step) for v in x]
    hint_of = x if clairvoyant else (None if hints is None else [float(h) for h in hints])
    state = [PENDING] * n
    finish = [math.nan] * n
    done = [0] * n  # steps run so far
    where = [-1] * n  # the worker a member runs on, or is on its way to
    sizes: list[int] = []

    members: list[list[int]] = [[] for _ in range(workers)]  # running, in row order
    inbox: list[list] = [[] for _ in range(workers)]  # StepUpdates received, not applied
    applied = [0] * workers  # the last update's seq each worker applied
    stepping = [0] * workers  # members of the step in progress (0: none)
    ends: list[tuple[float, int]] = []  # (end of the current step, worker)
    wakeup = math.inf
    nxt = 0
    last_event = 0.0

    def report(w: int, now: float, finished: list, b: int) -> None:
        running = members[w]
        msg = msgs.StepProgress(
            w, 0, applied[w], now, list(running), [done[r] for r in running], finished, [],
            1 if b else 0, b, 1 if b else 0, step_time[b - 1] if b else 0.0, 0.0,
            0.0, 0.0, 0.0, 0.0)  # fmt: skip
        record(("step_progress", (tuple(msg),)))
        core.step_progress(msg)

    def apply_and_start(w: int, now: float) -> bool:
        """Applies worker w's received updates and starts its next step; True if it
        applied some and is left with nobody (it then reports at once, as the worker
        does after a cycle that applied updates)."""
        updates, inbox[w] = inbox[w], []
        running = members[w]
        if updates:
            ended: set[int] = set()
            joined: list[int] = []
            for u in updates:
                ended.update(u.ended)
                joined += [t for t, _slot, _gen in u.joined]
            applied[w] = updates[-1].seq
            if ended:
                running = members[w] = [r for r in running if r not in ended]
            for rid in joined:
                if rid in ended:
                    continue  # ended on its way: its answer was the scheduler's
                if state[rid] == JOINING:
                    state[rid] = RUNNING
                running.append(rid)
        b = len(running)
        if b > max_batch:
            raise SimulationError(f"{policy} made a batch of {b} > the maximum {max_batch}")
        stepping[w] = b
        if b:
            heapq.heappush(ends, (now + step_time[b - 1], w))
            sizes.append(b)
            return False
        return bool(updates)

    def answer_dropped(tokens: list[int]) -> None:
        for rid in tokens:
            if not (0 <= rid < nxt):
                raise SimulationError(f"{policy} dropped request {rid}, which is not queued")
            if state[rid] == PENDING:
                state[rid] = DROPPED
            elif state[rid] in (JOINING, RUNNING):
                state[rid] = ENDED
            else:
                raise SimulationError(f"{policy} dropped request {rid}, which is neither "
                                      "queued nor a member")  # fmt: skip

    def schedule(now: float) -> None:
        """The scheduler's pass (Scheduler._schedule); idle workers apply at once."""
        while True:
            record(("schedule", (now,)))
            if core.dispatch(now):
                raise SimulationError("the core dispatched a whole batch of a step model")
            updates = core.step_updates(now)
            dropped, rejected, errors = core.take_discards()
            record(("decided", ([(w, u.seq, [t for t, _s, _g in u.joined], list(u.ended))
                                 for w, u in updates], dropped)))  # fmt: skip
            if errors:
                raise SimulationError(f"{policy}: the core failed requests: {errors[:3]}")
            if rejected:
                raise SimulationError(f"{policy} rejected requests {rejected[:3]}")
            for w, u in updates:
                for rid, _slot, _gen in u.joined:
                    if not (0 <= rid < nxt) or state[rid] != PENDING:
                        raise SimulationError(f"{policy} admitted request {rid}, which is "
                                              "not queued")  # fmt: skip
                    state[rid] = JOINING
                    where[rid] = w
                for rid in u.ended:
                    if not (0 <= rid < nxt) or where[rid] != w:
                        raise SimulationError(f"{policy} ended request {rid}, which is not "
                                              f"running on worker {w}")  # fmt: skip
                inbox[w].append(u)
            answer_dropped(dropped)
            again = False
            for w in sorted({w for w, _ in updates}):
                if not stepping[w] and apply_and_start(w, now):
                    report(w, now, [], 0)
                    again = True
            if not again:
                return

    while True:
        t_arr = arr[nxt] if nxt < n else math.inf
        t_end = ends[0][0] if ends else math.inf
        idle = not all(stepping)
        t_wake = wakeup if idle else math.inf
        now = min(t_arr, t_end, t_wake)
        if now == math.inf:
            break
        wakeup = next_wakeup_after(now, last_event, wakeup)
        last_event = now
        while ends and ends[0][0] <= now:  # step ends: answers, reports, updates applied
            _, w = heapq.heappop(ends)
            b = stepping[w]
            left, finished = [], []
            for rid in members[w]:
                done[rid] += 1
                if done[rid] >= need[rid]:
                    finished.append([rid, done[rid]])
                    if state[rid] == RUNNING:  # else ended on the way: answered dropped
                        state[rid] = COMPLETED
                        finish[rid] = now
                else:
                    left.append(rid)
            members[w] = left
            report(w, now, finished, b)
            if apply_and_start(w, now):
                report(w, now, [], 0)
        nxt = submit_arrivals(core, now, nxt, arr, dl, apps, hint_of, record, tiers)
        schedule(now)
        if not all(stepping):
            w_at = core.next_wakeup(now)
            if w_at is not None and w_at > now:
                wakeup = min(wakeup, w_at)
        if not ends and nxt >= n and wakeup == math.inf and len(policy_obj):
            drop_stranded(policy_obj, state)
    return outcome_of(state, finish, sizes, last_event)
