"""A discrete-event simulator on a virtual clock that drives real policy objects.

The simulator plays the scheduler process's part: it calls the same `Policy` methods, at
the same moments, that the runtime does (see orloj_rt/engine/interface.py):

    enqueue(id, app, arrival, deadline, hint)   at each arrival
    decide(now)                                 whenever a worker is idle and requests wait
    observe_batch(apps, exec_time)              when a batch completes
    next_wakeup(now)                            after an idle worker got an empty batch

Times given to a policy are time units read as seconds. A batch of b members runs for
c(b) * max of its members' true solo times, where c is the model's inflation table.

Events at the same instant are handled in this order: completions (which free workers),
then arrivals, then decisions; so a request arriving exactly when a worker frees up is
already queued for that worker's decision.

Every request ends in exactly one state: completed (on time or late), dropped (the policy
gave up on it, or it was still queued when nothing else could happen), or rejected.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from orloj_rt.engine.interface import Policy

PENDING, COMPLETED, DROPPED, REJECTED = 0, 1, 2, 3
# a step-level member that its policy stopped while it ran (step_simulator.py); it is
# answered `dropped`, and counted both as dropped and as ended
ENDED = 4


class SimulationError(RuntimeError):
    """A policy broke the interface's contract (an unknown id, an oversized batch...)."""


@dataclass
class Outcome:
    """Per-request results of one simulation, indexed by request id."""

    state: np.ndarray  # PENDING / COMPLETED / DROPPED / REJECTED / ENDED
    finish: np.ndarray  # completion time, NaN unless completed
    batches: int  # batches dispatched; with step-level batching, steps run
    batch_sizes: np.ndarray  # the size of every batch (or step), in order
    end_time: float
    # per request: the index of the model variant that served it (-1: none ran it, or the
    # model has no variants); None where the simulation has no variants
    variant: np.ndarray | None = None

    def summary(self, arrival: np.ndarray, deadline: np.ndarray) -> dict:
        """The metrics of `orloj-rt sim --json` (latencies in time units)."""
        n = len(self.state)
        done = self.state == COMPLETED
        on_time = done & (self.finish <= deadline)
        latency = self.finish[done] - arrival[done]
        return {
            "finish_rate": float(on_time.sum()) / n if n else 0.0,
            "completed": int(done.sum()),
            "late": int((done & ~on_time).sum()),
            "dropped": int(((self.state == DROPPED) | (self.state == ENDED)).sum()),
            "ended": int((self.state == ENDED).sum()),
            "rejected": int((self.state == REJECTED).sum()),
            "p50_latency": float(np.percentile(latency, 50)) if len(latency) else None,
            "p99_latency": float(np.percentile(latency, 99)) if len(latency) else None,
            "mean_batch": float(self.batch_sizes.mean()) if self.batches else 0.0,
        }


def checked_requests(arrival, deadline, solo, apps, workers: int):
    """The requests' arrays as float64 numpy arrays, after checking that they line up,
    arrive in order, and that there is a worker; ValueError otherwise."""
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
    return arrival, deadline, solo


def check_clock(now: float, last_event: float) -> None:
    """An event loop's step from `last_event` to `now`: SimulationError if it goes back."""
    if now < last_event:
        raise SimulationError(f"the clock went back from {last_event!r} to {now!r}")


def next_wakeup_after(now: float, last_event: float, wakeup: float) -> float:
    """`check_clock`, then the policy's wake-up still to come: math.inf if it is due now
    or passed while every worker was busy (the completion that freed a worker asked the
    policy then), so that a wake-up never brings the clock back to it."""
    check_clock(now, last_event)
    return math.inf if wakeup <= now else wakeup


def drop_stranded(policy, state: list) -> None:
    """Nothing can happen any more, yet requests wait (a policy that idles without a
    wake-up): they would wait forever, so they count as dropped."""
    for rid, st in enumerate(state):
        if st == PENDING:
            policy.remove(rid)
            state[rid] = DROPPED


def outcome_of(state: list, finish: list, sizes: list, last_event: float) -> Outcome:
    """A simulation's Outcome from its per-request lists and batch (or step) sizes."""
    return Outcome(
        state=np.asarray(state, dtype=np.int8),
        finish=np.asarray(finish, dtype=np.float64),
        batches=len(sizes),
        batch_sizes=np.asarray(sizes, dtype=np.int32),
        end_time=last_event,
    )


def simulate(
    policy: Policy,
    arrival: Sequence[float],
    deadline: Sequence[float],
    solo: Sequence[float],
    apps: Sequence[str],
    inflation: Sequence[float],
    *,
    workers: int = 1,
    hints: Sequence[float] | None = None,
    clairvoyant: bool | None = None,
) -> Outcome:
    """Runs every request through `policy` on `workers` identical workers.

    `inflation[b - 1]` is c(b), the true batch inflation (the policies get the same table).
    `hints` are per-request cost hints given to `enqueue`; a clairvoyant policy (one whose
    class sets `clairvoyant = True`, or when `clairvoyant` says so) gets each request's
    true solo time as its hint instead.
    """
    arrival, deadline, solo = checked_requests(arrival, deadline, solo, apps, workers)
    n = len(arrival)
    c = [float(v) for v in inflation]
    max_batch = len(c)
    if clairvoyant is None:
        clairvoyant = bool(getattr(policy, "clairvoyant", False))
    hint_of = solo if clairvoyant else hints

    # python floats and lists: the loop below touches them once per event
    arr = arrival.tolist()
    dl = deadline.tolist()
    x = solo.tolist()
    hint_list = None if hint_of is None else [float(h) for h in hint_of]
    state = [PENDING] * n
    finish = [math.nan] * n
    sizes: list[int] = []

    idle = list(range(workers - 1, -1, -1))  # a stack: the lowest-numbered worker first
    # (end, seq, worker, start, members); seq breaks ties in dispatch order
    running: list[tuple[float, int, int, float, list[int]]] = []
    seq = 0
    wakeup = math.inf
    nxt = 0  # the next request to arrive
    now = 0.0
    last_event = 0.0

    def settle(ids: list[int], to: int, what: str) -> None:
        for rid in ids:
            if not (0 <= rid < n) or state[rid] != PENDING or rid >= nxt:
                raise SimulationError(f"{type(policy).__name__} {what} request {rid}, "
                                      "which is not queued")
            state[rid] = to

    while True:
        t_arr = arr[nxt] if nxt < n else math.inf
        t_done = running[0][0] if running else math.inf
        t_wake = wakeup if idle else math.inf
        now = min(t_arr, t_done, t_wake)
        if now == math.inf:
            break
        wakeup = next_wakeup_after(now, last_event, wakeup)
        last_event = now
        while running and running[0][0] <= now:
            end, _, w, start, members = heapq.heappop(running)
            for rid in members:
                state[rid] = COMPLETED
                finish[rid] = end
            policy.observe_batch([apps[rid] for rid in members], end - start)
            idle.append(w)
        while nxt < n and arr[nxt] <= now:
            hint = None if hint_list is None else hint_list[nxt]
            policy.enqueue(nxt, apps[nxt], arr[nxt], dl[nxt], hint)
            nxt += 1
        while idle and len(policy):
            decision = policy.decide(now)
            settle(decision.dropped, DROPPED, "dropped")
            settle(decision.rejected, REJECTED, "rejected")
            batch = decision.batch
            if not batch:
                w_at = policy.next_wakeup(now)
                if w_at is not None and len(policy):
                    if not w_at > now:
                        raise SimulationError(
                            f"{type(policy).__name__}.next_wakeup({now!r}) returned "
                            f"{w_at!r}, which is not in the future"
                        )
                    wakeup = min(wakeup, w_at)
                break
            if len(batch) > max_batch:
                raise SimulationError(f"{type(policy).__name__} dispatched a batch of "
                                      f"{len(batch)} > the maximum {max_batch}")
            for rid in batch:
                if not (0 <= rid < n) or state[rid] != PENDING or rid >= nxt:
                    raise SimulationError(f"{type(policy).__name__} dispatched request "
                                          f"{rid}, which is not queued")
                state[rid] = -1  # running: no longer queued, not yet completed
            w = idle.pop()
            exec_time = c[len(batch) - 1] * max(x[rid] for rid in batch)
            seq += 1
            heapq.heappush(running, (now + exec_time, seq, w, now, list(batch)))
            sizes.append(len(batch))
        if not running and nxt >= n and wakeup == math.inf and len(policy):
            drop_stranded(policy, state)
    return outcome_of(state, finish, sizes, last_event)


# ---------------------------------------------------------------------- through the core
class SimModel(NamedTuple):
    """The simulated model as the serving core sees a model's spec."""

    name: str
    max_batch_size: int
    step_kind: str | None = None
    variants: tuple = ()  # VariantSpec-likes (.name, .accuracy, .cost_scale), full first
    app_weights: dict | None = None


def warmup_profile(warmup_solo: Sequence[float], inflation: Sequence[float],
                   warmup_hints: Sequence[float] | None = None) -> list:  # fmt: skip
    """The ModelProfile fields a worker would send after warming the model up: the solo
    times of its example requests, c(b) as profiled, the work fit of a model whose
    per-request work report is its solo time (a = 0, k = 1), and the examples' cost
    hints where the model derives them (`warmup_hints`)."""
    hints = None if warmup_hints is None else [float(h) for h in warmup_hints]
    return [[float(t) for t in warmup_solo], [float(c) for c in inflation], [0.0, 1.0], None,
            hints]  # fmt: skip


def submit_arrivals(core, now: float, nxt: int, arr: list, dl: list, apps, hint_of,
                    record, tiers: list | None = None) -> int:  # fmt: skip
    """Submits to the serving core, as the frontend's descriptors, every request from
    `nxt` on that has arrived by `now`; returns the next request still to arrive.
    `tiers`: each request's priority tier (a ninth descriptor field where it is not 0)."""
    descs = []
    while nxt < len(arr) and arr[nxt] <= now:
        hint = None if hint_of is None else hint_of[nxt]
        if tiers is not None and tiers[nxt]:
            descs.append((nxt, 0, apps[nxt], arr[nxt], dl[nxt], hint, 0, 0, tiers[nxt]))
        else:
            descs.append((nxt, 0, apps[nxt], arr[nxt], dl[nxt], hint, 0, 0))
        nxt += 1
    if descs:
        record(("submit", (descs,)))
        core.submit(descs)
    return nxt


def simulate_serving(
    policy: str,
    arrival: Sequence[float],
    deadline: Sequence[float],
    solo: Sequence[float],
    apps: Sequence[str],
    inflation: Sequence[float],
    warmup_solo: Sequence[float],
    *,
    workers: int = 1,
    hints: Sequence[float] | None = None,
    warmup_hints: Sequence[float] | None = None,
    clairvoyant: bool = False,
    policy_params: dict | None = None,
    service: Sequence[tuple[float, float, float]] | None = None,
    trace: list | None = None,
    variants: Sequence | None = None,
    priorities: Sequence[int] | None = None,
    app_weights: dict | None = None,
) -> Outcome:
    """Runs every request through the runtime's own serving core (orloj_rt.serving) on
    `workers` identical workers, on a virtual clock.

    The core gets what the scheduler process gets: every worker's warm-up profile
    (`warmup_profile`: the solo times of `warmup_solo`, c(b), and a work fit), each
    request's descriptor at its arrival, and for each batch the worker's report: its
    execution time c(b) x max of the members' solo times, and each member's work (its
    solo time: the model reports per-request work, as early_exit and generate do). So
    the policy is built, primed and taught exactly as in `orloj-rt start`.

    `service`: measured samples of what a real server adds to the model's time, (start
    delay, execution extra, reply delay) per batch (bench/e2e_model_check.py measures
    them on a live server). Each batch draws one (a fixed seed): it starts `start delay`
    after its dispatch, runs c(b) x max X + `extra` (what its worker reports; never below
    0), frees its worker then, and its members are answered `reply delay` later. None
    (the default): the model alone, every delay and extra 0 (docs/simulation.md).

    `variants`: the model's variants (objects with .name, .accuracy, .cost_scale; the
    full model first): a batch that the core runs with variant v takes cost_scale_v times
    as long (each member's work too); the Outcome's `variant` says which served each
    request. `priorities`: each request's tier (the descriptors' priority field);
    `app_weights`: the model's app weights. All go to the core as the runtime's would.

    `trace`, if a list, receives every call made on the core, in order, as (name, args)
    tuples, and after each `dispatch` what it decided: ("decided", (batches as (worker,
    tokens), dropped, rejected)). tests/serving/test_replay.py replays it through the
    scheduler process's message handlers.
    """
    from orloj_rt.serving import ServingCore

    arrival, deadline, solo = checked_requests(arrival, deadline, solo, apps, workers)
    n = len(arrival)
    c = [float(v) for v in inflation]
    variants = tuple(variants or ())
    scale_of = {v.name: (1.0 if v.cost_scale is None else float(v.cost_scale)) for v in variants}
    index_of = {v.name: k for k, v in enumerate(variants)}
    tiers = None if priorities is None else [int(p) for p in priorities]
    if tiers is not None and len(tiers) != n:
        raise ValueError("priorities must have one entry per request")
    model = SimModel("sim", len(c), None, variants, dict(app_weights or {}))
    core = ServingCore([model], policy, policy_params, workers,
                       timer=lambda: 0.0)  # fmt: skip
    record = trace.append if trace is not None else (lambda _e: None)
    profile = warmup_profile(warmup_solo, c, warmup_hints)
    for w in range(workers):
        record(("worker_ready", (w, [profile])))
        core.worker_ready(w, [profile])
    arr = arrival.tolist()
    dl = deadline.tolist()
    x = solo.tolist()
    hint_of = x if clairvoyant else (None if hints is None else [float(h) for h in hints])
    state = [PENDING] * n
    finish = [math.nan] * n
    served = [-1] * n
    sizes: list[int] = []
    # (end, seq, w, start, ids, reply delay)
    running: list[tuple[float, int, int, float, list[int], float]] = []
    service_list = None if service is None else [tuple(map(float, s)) for s in service]
    service_rng = np.random.default_rng(0)
    seq = 0
    nxt = 0
    last_event = 0.0
    wakeup = math.inf

    def settle(ids: list[int], to: int, what: str) -> None:
        for rid in ids:
            if not (0 <= rid < n) or state[rid] != PENDING or rid >= nxt:
                raise SimulationError(f"{policy} {what} request {rid}, which is not queued")
            state[rid] = to

    while True:
        t_arr = arr[nxt] if nxt < n else math.inf
        t_done = running[0][0] if running else math.inf
        t_wake = wakeup if core.idle else math.inf
        now = min(t_arr, t_done, t_wake)
        if now == math.inf:
            break
        wakeup = next_wakeup_after(now, last_event, wakeup)
        last_event = now
        while running and running[0][0] <= now:  # completions first: they free workers
            end, _, w, start, members, reply, scale = heapq.heappop(running)
            for rid in members:
                state[rid] = COMPLETED
                finish[rid] = end + reply
            report = (w, 0, True, end - start, [x[rid] * scale for rid in members])
            record(("batch_done", report))
            core.batch_done(*report)
        nxt = submit_arrivals(core, now, nxt, arr, dl, apps, hint_of, record, tiers)
        record(("dispatch", (now,)))
        runs = core.dispatch(now)
        dropped, rejected, errors = core.take_discards()
        record(("decided", ([(r.worker, list(r.tokens)) for r in runs], dropped, rejected)))
        for run in runs:
            for rid in run.tokens:
                if not (0 <= rid < n) or state[rid] != PENDING or rid >= nxt:
                    raise SimulationError(f"{policy} dispatched request {rid}, which is "
                                          "not queued")  # fmt: skip
                state[rid] = -1  # running
            scale = 1.0
            if run.variant is not None:
                scale = scale_of[run.variant]
                for rid in run.tokens:
                    served[rid] = index_of[run.variant]
            exec_time = c[len(run.tokens) - 1] * max(x[rid] for rid in run.tokens) * scale
            start, reply = now, 0.0
            if service_list:
                delay, extra, reply = service_list[int(service_rng.integers(len(service_list)))]
                start, exec_time = now + delay, max(0.0, exec_time + extra)
            seq += 1
            heapq.heappush(running, (start + exec_time, seq, run.worker, start, run.tokens,
                                     reply, scale))  # fmt: skip
            sizes.append(len(run.tokens))
        if errors:
            raise SimulationError(f"{policy}: the core failed requests: {errors[:3]}")
        settle(dropped, DROPPED, "dropped")
        settle(rejected, REJECTED, "rejected")
        w_at = core.next_wakeup(now)
        if w_at is not None and w_at > now:
            wakeup = min(wakeup, w_at)
        queued = len(core.models[0].policy) if core.models[0].policy is not None else 0
        if not running and nxt >= n and wakeup == math.inf and queued:
            drop_stranded(core.models[0].policy, state)
    out = outcome_of(state, finish, sizes, last_event)
    if variants:
        out.variant = np.asarray(served, dtype=np.int16)
    return out

