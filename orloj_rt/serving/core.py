"""The serving core: everything the scheduler decides and learns, with no IO and no clock.

    scheduler process (runtime/scheduler.py)        simulator (sim/simulator.py,
                                                                sim/step_simulator.py)
      sockets, poll loop, hang watch, stats            virtual clock, modelled workers
                     \\                                   /
                      ServingCore: submit, worker_ready, dispatch, batch_done,
                      step_progress, step_updates, worker_lost, expire, next_wakeup
                                         |
                      ModelCore per model (model.py): policy and queue, priors, per-app
                      switch-over, learning from batch times and per-request work,
                      step co-ordination (steps.py), app limits

The scheduler process translates messages into these calls and their results into
messages; the simulator makes the same calls on a virtual clock, fed the reports a worker
would send (batch times, per-request work). So what the simulator measures is what the
runtime runs (a test replays one event sequence through both and compares decisions).

Calls, and when:
- `submit(descs)`: requests arrived (the frontend's Submit descriptors);
- `worker_ready(w, profiles)`: a worker warmed up (its first warm-up's profiles build the
  models' policies; a restarted worker sends none);
- `dispatch(now)`: ask every policy for a batch while a ready worker is idle (round robin
  over models, so that none starves): the batches to send;
- `step_updates(now)`: step-served models' decisions at the workers' next boundaries;
- `batch_done(w, model, ok, exec_s, work)`: a worker finished its batch: learn;
- `step_progress(msg)`: a worker reported a step boundary;
- `worker_lost(w)` / `worker_attached(w)`: a worker died / its restart was attached;
- `cancel(tokens)`: clients cancelled these requests: where each was;
- `expire(now)`: while no worker is ready, drop what can no longer finish;
- `take_discards()`: the requests dropped, rejected or failed since the last call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from orloj_rt.protocol import messages as msgs
from orloj_rt.serving.model import ModelCore

log = logging.getLogger("orloj_rt.scheduler")


class Dispatch(NamedTuple):
    """A whole batch for a worker: its members' tokens, ring slots and generations, and
    the model variant to run it with (its name; None for a model without variants)."""

    worker: int
    model: int
    tokens: list[int]
    slots: list[int]
    generations: list[int]
    variant: str | None = None


class WorkerCore:
    """What the core knows of one worker: ready, and the whole batch it runs."""

    __slots__ = ("index", "ready", "busy_batch", "busy_model", "busy_variant", "busy_since")

    def __init__(self, index: int) -> None:
        self.index = index
        self.ready = False
        self.busy_batch: list[int] | None = None  # tokens of the batch it runs
        self.busy_model = -1
        self.busy_variant: int | None = None  # the variant index it runs (None: full)
        self.busy_since = 0.0  # when its batch was dispatched


class ServingCore:
    def __init__(self, specs: Sequence, policy: str, policy_params: dict | None = None,
                 workers: int = 1,
                 timer: Callable[[], float] = time.perf_counter):  # fmt: skip
        """`timer` only measures how long decisions take (the decision-time histogram);
        no decision depends on it."""
        self.models = [ModelCore(i, spec, policy, policy_params, workers)
                       for i, spec in enumerate(specs)]  # fmt: skip
        self.workers = [WorkerCore(i) for i in range(workers)]
        self.idle: list[WorkerCore] = []
        self._rr = 0
        self._timer = timer
        self._dropped: list[int] = []
        self._rejected: list[int] = []
        self._errors: list = []

    # ------------------------------------------------------------------ arrivals
    def submit(self, descs) -> None:
        """Called with the frontend's descriptors (token, model, app, arrival, deadline,
        hint, slot, generation[, priority]): each is queued, or waits for its model's
        policy. The priority tier (0 if absent) goes to the policy."""
        for d in descs:
            mq = self.models[d[1]]
            if mq.policy is None:
                mq.waiting.append(d)
                continue
            self._enqueue(mq, d)
            if mq.steps is not None:
                mq.steps.arrived = True

    def _enqueue(self, mq: ModelCore, d) -> None:
        token, _m, app, arrival, deadline, hint, slot, gen = d[:8]
        priority = d[8] if len(d) > 8 else 0
        try:
            app, classes = mq.file(app, hint, arrival)
            mq.policy.enqueue(token, app, arrival, deadline, hint, priority)
        except (ValueError, TypeError, KeyError) as exc:
            self._errors.append([token, f"the scheduler could not queue the request: {exc}"])
            return
        mq.slots[token] = (slot, gen, app, deadline, hint, classes)

    def cancel(self, tokens) -> list[list]:
        """Clients cancelled these requests: [token, where] for each. "queued": it left
        its queue (or the wait for its model's policy) and never runs; "running": a
        worker runs it (a whole batch runs on, its result to be discarded; a step member
        is ended at its worker's next boundary); "unknown": the core holds it no more."""
        out = []
        for token in tokens:
            where = "unknown"
            for mq in self.models:
                entry = mq.slots.get(token)
                if entry is None:
                    if any(d[0] == token for d in mq.waiting):
                        mq.waiting = [d for d in mq.waiting if d[0] != token]
                        where = "queued"
                        break
                    continue
                try:
                    mq.policy.remove(token)
                except KeyError:
                    where = "running"
                    if mq.steps is not None:
                        mq.steps.cancel(token)
                else:
                    del mq.slots[token]
                    where = "queued"
                break
            out.append([token, where])
        return out

    # ------------------------------------------------------------------ workers
    def worker_ready(self, worker: int, profiles) -> None:
        """Worker `worker` is ready; `profiles` (one ModelProfile's fields per model, or
        None) build the policies of the models that have none yet."""
        w = self.workers[worker]
        for mq, fields in zip(self.models, profiles or [None] * len(self.models),
                              strict=True):  # fmt: skip
            if mq.policy is not None:
                continue
            if fields is None:
                log.error("worker %d sent no profile for model %s, which has no policy "
                          "yet; its requests wait for a worker that does", worker,
                          mq.name)  # fmt: skip
                continue
            mq.configure(msgs.ModelProfile(*fields))
            waiting, mq.waiting = mq.waiting, []
            for d in waiting:
                self._enqueue(mq, d)
        if not w.ready:
            w.ready = True
            self.idle.append(w)

    def worker_attached(self, worker: int) -> None:
        """A restarted worker's channel is there; it gets nothing before `worker_ready`."""
        self.workers[worker].ready = False

    def worker_lost(self, worker: int) -> tuple[list[int], list[str]]:
        """Worker `worker` is gone: nothing more goes to it. Returns the tokens it held (its
        whole batch, its step members) and a description of each part."""
        w = self.workers[worker]
        w.ready = False
        if w in self.idle:
            self.idle.remove(w)
        tokens, w.busy_batch = w.busy_batch or [], None
        what = []
        if tokens:
            mq = self.models[w.busy_model]
            for t in tokens:  # answered with an error: not in time (a floor frees its share)
                entry = mq.slots.pop(t, None)
                if entry is not None:
                    mq.outcome(entry[2], False, w.busy_variant)
            what.append(f"a batch of {len(tokens)} request(s) of {mq.name}")
        for mq in self.models:  # the members it ran step by step, and those on the way
            if mq.steps is not None:
                members = mq.steps.lose(worker)
                if members:
                    tokens = tokens + members
                    what.append(f"{len(members)} step member(s) of {mq.name}")
        return tokens, what

    def batch_done(self, worker: int, model: int, ok: bool, exec_s: float,
                   work: list | None) -> bool:  # fmt: skip
        """Worker `worker` finished its batch (`ok`: it ran) in `exec_s` seconds, with
        per-member `work` where the model reports it. False if it ran none."""
        w = self.workers[worker]
        tokens = w.busy_batch
        w.busy_batch = None
        if w.ready and w not in self.idle:
            self.idle.append(w)
        if tokens is None:
            return False
        mq = self.models[model]
        apps = []
        hinted = [] if mq.hints is not None else None  # (hint, classes) per member
        end = w.busy_since + exec_s  # when it finished, as far as the core can tell
        for t in tokens:
            entry = mq.slots.pop(t, None)
            if entry is not None:
                apps.append(entry[2])
                mq.outcome(entry[2], ok and end <= entry[3], w.busy_variant)
                if hinted is not None:
                    hinted.append(None if entry[5] is None else (entry[4], entry[5]))
        if ok:
            mq.batches += 1
            mq.batched_requests += len(tokens)
            if w.busy_variant is not None:
                mq.variant_batches[w.busy_variant] += 1
            if len(apps) == len(tokens):  # else members were taken out: their apps unknown
                mq.learn(apps, exec_s, work, hinted, w.busy_variant)
        return True

    def variant_of(self, worker: int) -> str | None:
        """The name of the variant worker `worker` runs (or ran last): what served the
        members of its batch; None for a model without variants."""
        w = self.workers[worker]
        if w.busy_model < 0:
            return None
        return self.models[w.busy_model].variant_name(w.busy_variant)

    def step_progress(self, msg: msgs.StepProgress) -> str | None:
        """A worker's step boundary; an error text if it names no step-served model."""
        if not 0 <= msg.model < len(self.models):
            return f"step progress for unknown model {msg.model}"
        co = self.models[msg.model].steps
        if co is None:
            return f"step progress for model {self.models[msg.model].name}, which is not " \
                "served step by step"  # fmt: skip
        co.on_progress(msg)
        return None

    # ------------------------------------------------------------------ decisions
    def dispatch(self, now: float) -> list[Dispatch]:
        """While a ready worker is idle: each model's policy in turn (round robin from
        the one after the last to dispatch) until one gives a batch. Drops and rejections
        collect for `take_discards`."""
        out: list[Dispatch] = []
        n = len(self.models)
        while self.idle:
            dispatched = False
            for k in range(n):
                mq = self.models[(self._rr + k) % n]
                if mq.policy is None or mq.steps is not None or not len(mq.policy):
                    continue
                t0 = self._timer()
                d = mq.policy.decide(now)
                mq.decision_time.observe(self._timer() - t0)
                self._take(mq, d.dropped, self._dropped)
                self._take(mq, d.rejected, self._rejected)
                if d.batch:
                    variant = d[3] if len(d) > 3 else None
                    run = self._form(mq, d.batch, self.idle.pop(0), now, variant)
                    if run is not None:
                        out.append(run)
                    self._rr = (self._rr + k + 1) % n
                    dispatched = True
                    break
            if not dispatched:
                break
        return out

    def step_updates(self, now: float) -> list[tuple[int, msgs.StepUpdate]]:
        """Each step-served model's decision for every ready worker that reported a
        boundary since the last call, or that runs nothing of it while requests wait."""
        out = []
        for mq in self.models:
            co = mq.steps
            if co is None:
                continue
            for w in self.workers:
                if not w.ready or not co.wants_decision(w.index):
                    continue
                t0 = self._timer()
                update, answered = co.decide(w.index, now)
                mq.decision_time.observe(self._timer() - t0)
                self._dropped += answered
                if update is not None:
                    out.append((w.index, update))
            co.arrived = False
        return out

    def stepping(self, worker: int) -> list[str]:
        """The step-served models whose members worker `worker` runs now."""
        return [mq.name for mq in self.models
                if mq.steps is not None and not mq.steps.runs[worker].idle()]  # fmt: skip

    @staticmethod
    def _take(mq: ModelCore, tokens: list, into: list) -> None:
        for t in tokens:
            entry = mq.slots.pop(t, None)
            if entry is not None:
                mq.outcome(entry[2], False)
            into.append(t)

    def _form(self, mq: ModelCore, batch: list, w: WorkerCore, now: float = 0.0,
              variant: int | None = None) -> Dispatch | None:  # fmt: skip
        # the batch invariant is checked, not assumed: a bad policy answer fails its
        # members with an error instead of reaching a worker
        entries = [mq.slots.get(t) for t in batch]
        if len(batch) > mq.spec.max_batch_size or any(e is None for e in entries):
            log.error("policy %s returned an invalid batch of %d for model %s",
                      mq.policy_name, len(batch), mq.name)  # fmt: skip
            for t in batch:
                mq.slots.pop(t, None)
                self._errors.append([t, "internal error: the scheduler formed an invalid batch"])
            self.idle.insert(0, w)
            return None
        w.busy_batch = list(batch)
        w.busy_model = mq.index
        if mq.variants and not (variant is None or 0 <= variant < len(mq.variants)):
            log.error("policy %s chose variant %r of model %s, which has %d; the full "
                      "model runs", mq.policy_name, variant, mq.name, len(mq.variants))
            variant = None
        w.busy_variant = variant if mq.variants else None
        w.busy_since = now
        return Dispatch(w.index, mq.index, list(batch), [e[0] for e in entries],
                        [e[1] for e in entries],
                        mq.variant_name(w.busy_variant))  # fmt: skip

    def next_wakeup(self, now: float) -> float | None:
        """The earliest time a policy wants another look while a worker is idle (a
        batching delay), or None."""
        if not self.idle:
            return None
        wake = None
        for mq in self.models:
            if mq.policy is not None and len(mq.policy):
                w = mq.policy.next_wakeup(now)
                if w is not None and (wake is None or w < wake):
                    wake = w
        return wake

    def expire(self, now: float) -> bool:
        """No worker is ready (every one died and restarts), so no decision runs to drop
        what can no longer finish: drops the queued requests whose deadline has passed.
        Returns whether any request is still queued."""
        queued = False
        for mq in self.models:
            if mq.policy is None or not len(mq.policy):
                continue
            queued = True
            expired = [t for t, e in mq.slots.items() if e[3] <= now]
            for t in expired:
                try:
                    mq.policy.remove(t)
                except KeyError:
                    continue  # not queued (it runs)
                del mq.slots[t]
                self._dropped.append(t)
        return queued

    def any_ready(self) -> bool:
        return any(w.ready for w in self.workers)

    def take_discards(self) -> tuple[list[int], list[int], list]:
        """(dropped, rejected, errors) since the last call: each to be answered once."""
        out = (self._dropped, self._rejected, self._errors)
        self._dropped, self._rejected, self._errors = [], [], []
        return out

    # ------------------------------------------------------------------ upkeep
    def evict_idle(self, now: float) -> None:
        for mq in self.models:
            if mq.policy is not None:
                mq.evict_idle(now)

    def stats(self) -> dict:
        return {mq.name: mq.stats() for mq in self.models}
