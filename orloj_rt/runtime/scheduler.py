"""The scheduler process: one policy per model, the workers' dispatcher, online learning.

    frontend --Submit--> scheduler --RunBatch--> worker i      (one channel each)
             <--Discard / SchedulerStats--   <--WorkerReady / BatchDone--

Single-threaded and event-driven. Whenever a worker is idle, it asks the models' policies
for a batch (round robin over the models with queued work, so that no model starves) and
sends the batch's ring slots to that worker. Requests a policy drops or rejects go back to
the frontend in one `Discard` per scheduling pass.

Learning, per model:
- c(b), the batch inflation, comes from the first worker's warm-up profile; the policy is
  built with it when that worker is ready (requests that arrive earlier wait).
- The prior execution-time distribution comes from the warm-up's solo times (a lognormal
  with their mean and spread). Every app starts from it.
- Each finished batch gives per-request solo times: from the model's per-request work
  report where it has one (solo_i = T / c(b) * (a + k w_i) / (a + k max w), with a, k
  fitted at warm-up), else only from batches of one (solo = T / c(1)).
- An app keeps the prior until it has `MIN_APP_SAMPLES` solo times of its own; then its
  learned distribution replaces the prior in the policy, and later samples go to the
  policy directly (`observe_solo`). `observe_batch` is called for every batch, for the
  policies that learn from batch times (OrlojPolicy learns batches of one through it).

Apps (docs/runtime.md#apps): any client names its app, so the per-app state of a model
(the policy's, and the learning records and stats here) is bounded by one `AppTable` per
model, owned here: at most `max_apps` live apps (`--max-apps`, default 256, the overflow
app included); beyond, a new app's requests are filed under the overflow app "~other" and
served like any others. An app with nothing in flight (queued or running) that has not
been seen for `app_idle_s` (60 s) is forgotten everywhere: here, and in the policy
(`forget_app`; the policy's own limits are switched off, so that the two never disagree).
The sweep runs once per stats tick, and when a new app finds the table full. The `stats`
reply lists at most `STATS_MAX_APPS` apps per model, the busiest, and counts the others.

Step-level batching (runtime/step_scheduling.py): a model with steps under a step policy
(orloj-step, fcfs-step, ...) is not dispatched in batches. Each worker runs its members
step by step and reports every boundary (`StepProgress`) without waiting; the model's
`StepCoordinator` asks the step policy about the worker's next boundary and sends the
answer (`StepUpdate`: who joins, who is ended), which the worker applies when it gets
there. A model without steps under a step policy is served in whole batches by the
policy's whole-batch counterpart (orloj-step -> orloj, fcfs-step -> fifo, edf-step -> edf).

Worker crashes (docs/reliability.md): a worker's channel closing is how the scheduler
learns that it died. It dispatches nothing more to it, and sends the batch it was running
to the frontend (`WorkerLost`), which re-queues or answers each member. The supervisor's
`AttachWorker` brings the restarted worker's channel; it gets batches after its
`WorkerReady` (a restarted worker sends no profile: the first warm-up's is kept). While
no worker at all is ready, requests whose deadline passes are dropped here, since no
policy decision runs to drop them. A worker that hangs instead of dying (it has a batch or
step members and has said nothing for `hang_timeout_s`) is reported to the supervisor
(`WorkerHung`), which kills it; from there it is a crash like any other.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import select
import socket
import time
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle

from orloj_rt.engine.apps import DEFAULT_MAX_APPS, OVERFLOW_APP, RUNTIME_APP_IDLE_S, AppTable
from orloj_rt.runtime import messages as msgs
from orloj_rt.runtime.channel import Channel, ChannelClosed
from orloj_rt.runtime.metrics import DECISION_BUCKETS_S, MAX_APPS_PER_MODEL, Histogram
from orloj_rt.runtime.proc import InstanceConfig, child_main, send_to_parent, settle_memory
from orloj_rt.runtime.step_scheduling import (
    StepCoordinator,
    serving_mode,
    step_prior,
)

log = logging.getLogger("orloj_rt.scheduler")

MIN_APP_SAMPLES = 32  # solo times an app needs before its own distribution replaces the prior
PRIOR_MIN_COV = 0.05  # a prior is never sharper than this (warm-up sees few inputs)
STATS_INTERVAL_S = 1.0
MIN_WAKEUP_MS = 0.2  # a policy whose wake-up time has passed cannot make the loop spin
EXPIRE_SWEEP_S = 0.05  # while no worker is ready: how often expired requests are dropped
#: the `stats` reply's per-app section lists this many apps per model at most (the most
#: samples first, then by name) and counts the others, as /metrics caps its app labels
STATS_MAX_APPS = MAX_APPS_PER_MODEL
#: while a worker runs members step by step, its reports are read this often (and whenever
#: something else wakes the scheduler), not as each arrives: see `_update_quiet`
STEP_TICK_S = 0.001


class _AppLearning:
    __slots__ = ("samples", "learned", "installed", "sum", "last")

    def __init__(self, distribution_cls) -> None:
        self.samples = 0
        self.learned = distribution_cls()  # until installed in the policy
        self.installed = False
        self.sum = 0.0
        self.last = 0.0


class _ModelQueue:
    """One model's policy, its queued requests' ring slots, and what was learned."""

    def __init__(self, index: int, entry, config: InstanceConfig):
        self.index = index
        self.spec = entry.spec
        self.name = entry.spec.name
        self.policy_name, self.step_level = serving_mode(entry.spec, config.policy)
        if self.policy_name != config.policy:
            log.info("model %s has no steps: policy %s serves it in whole batches as %s",
                     self.name, config.policy, self.policy_name)  # fmt: skip
        params = dict(config.policy_params)
        # scheduler options carried with the policy's parameters (`--max-apps`); the rest
        # go to the policy
        self.app_table = AppTable(params.pop("max_apps", DEFAULT_MAX_APPS),
                                  params.pop("app_idle_s", RUNTIME_APP_IDLE_S))  # fmt: skip
        self.policy_params = params
        self.policy = None  # built when the first worker's profile arrives
        self.steps: StepCoordinator | None = None  # step-level batching (step_level)
        self.workers = len(config.devices)
        self.inflation: list[float] = []
        self.work_fit: tuple[float, float] | None = None
        self.prior_mean = 0.0
        self.waiting: list = []  # descriptors that arrived before any worker was ready
        # token -> (slot, generation, app, deadline), queued or running; `app` is the live
        # app it is filed under (itself, or OVERFLOW_APP)
        self.slots: dict[int, tuple[int, int, str, float]] = {}
        self.apps: dict[str, _AppLearning] = {}  # live apps only (app_table)
        self.batches = 0
        self.batched_requests = 0
        # orloj_scheduler_decision_seconds (docs/metrics.md), sent in SchedulerStats
        self.decision_time = Histogram(DECISION_BUCKETS_S)

    def configure(self, profile: msgs.ModelProfile) -> None:
        from orloj_rt.engine import Distribution
        from orloj_rt.policies import make_policy

        self.inflation = [float(c) for c in profile.inflation]
        if profile.work_fit is not None:
            a, k = profile.work_fit
            self.work_fit = (float(a), float(k))
        if self.step_level:
            self._configure_steps(profile)
            return
        self.policy = make_policy(
            self.policy_name,
            max_batch=self.spec.max_batch_size,
            inflation=self.inflation,
            **self.policy_params,
        )
        self._own_app_limits()
        times = [t for t in profile.solo_times if t > 0 and math.isfinite(t)]
        mean = sum(times) / len(times)
        var = sum((t - mean) ** 2 for t in times) / len(times)
        cov = max(math.sqrt(var) / mean, PRIOR_MIN_COV)
        self.prior_mean = mean
        self.policy.set_default_distribution(Distribution.from_mean_cov(mean, cov))
        log.info(
            "model %s: policy %s, prior mean %.3f ms (cov %.2f), c(%d) = %.2f%s",
            self.name, self.policy_name, mean * 1e3, cov, len(self.inflation),
            self.inflation[-1],
            f", solo ~ {self.work_fit[0] * 1e3:.3f} + {self.work_fit[1] * 1e3:.3f} ms/unit"
            if self.work_fit else "",
        )  # fmt: skip

    def _configure_steps(self, profile: msgs.ModelProfile) -> None:
        """The step policy, from the warm-up's step profile: the solo time of one step is
        the policy's `step`, c(b) of a step its inflation, the examples' steps its prior."""
        from orloj_rt.engine import Distribution
        from orloj_rt.policies import make_policy

        if not profile.steps:
            raise ValueError(f"model {self.name}: the worker sent no step profile")
        step_s, inflation, works = profile.steps
        inflation = [float(c) for c in inflation]
        self.policy = make_policy(self.policy_name, max_batch=self.spec.max_batch_size,
                                  inflation=inflation, step=float(step_s),
                                  **self.policy_params)  # fmt: skip
        self._own_app_limits()
        mean, cov = step_prior(float(step_s), works)
        self.prior_mean = mean
        self.policy.set_default_distribution(Distribution.from_mean_cov(mean, cov))
        self.steps = StepCoordinator(self.name, self.index, self.policy, self.slots,
                                     float(step_s), inflation, self.work_fit,
                                     self.workers)  # fmt: skip
        log.info("model %s: step-level batching, policy %s, one step %.3f ms alone, "
                 "c(%d) = %.2f, prior mean %.1f steps (cov %.2f)", self.name,
                 self.policy_name, step_s * 1e3, len(inflation), inflation[-1],
                 mean / step_s, cov)  # fmt: skip

    # ------------------------------------------------------------------ apps
    def _own_app_limits(self) -> None:
        """The policy's own app limits off: this table decides, and calls `forget_app`."""
        limits = getattr(self.policy, "set_app_limits", None)
        if limits is not None:
            limits(0, 0)

    def live_app(self, app, now: float):
        """The live app that a request of `app` arriving at `now` is filed under: `app`,
        admitted if there is room (after forgetting the idle apps that are due), else
        OVERFLOW_APP."""
        t = self.app_table
        t.tick(now)
        if app in t.index:
            t.touch(app)
            return app
        if not t.has_room(app):
            self.evict_idle(now)
            if not t.has_room(app):
                app = OVERFLOW_APP
                if app in t.index:
                    t.touch(app)
                    return app
        t.add(app)
        return app

    def evict_idle(self, now: float) -> int:
        """Forgets every app with nothing in flight not seen for `app_idle_s`: its
        learning record, its step record and its state in the policy. O(1) when none is
        due; otherwise one pass over the requests in flight."""
        t = self.app_table
        t.tick(now)
        in_flight = None

        def busy(name, _index) -> bool:
            nonlocal in_flight
            if in_flight is None:
                in_flight = {e[2] for e in self.slots.values()}
            return name in in_flight

        gone = t.sweep(busy)
        forget = getattr(self.policy, "forget_app", None)
        for name, _ in gone:
            self.apps.pop(name, None)
            if self.steps is not None:
                self.steps.apps.pop(name, None)
            if forget is not None:
                forget(name)
        return len(gone)

    def solo_times(self, b: int, exec_s: float, work: list | None) -> list[float] | None:
        """Per-member solo-time estimates for a finished batch, or None if it gives none."""
        c = self.inflation[b - 1] if b <= len(self.inflation) else self.inflation[-1]
        if work is not None and len(work) == b:
            top = max(work)
            if top <= 0:
                return None
            a, k = self.work_fit if self.work_fit is not None else (0.0, 1.0)
            base = exec_s / c
            denom = a + k * top
            if denom <= 0:
                return None
            return [base * (a + k * w) / denom for w in work]
        if b == 1:
            return [exec_s / c]
        return None

    def learn(self, apps: list[str], exec_s: float, work: list | None) -> None:
        from orloj_rt.engine import Distribution

        policy = self.policy
        t = self.app_table  # an app in flight is live; one that is not is admitted
        apps = [a if a in t.index else self.live_app(a, t.clock) for a in apps]
        policy.observe_batch(apps, exec_s)
        solos = self.solo_times(len(apps), exec_s, work)
        if solos is None:
            return
        for app, t in zip(apps, solos, strict=True):
            if not (t > 0 and math.isfinite(t)):
                continue
            st = self.apps.get(app)
            if st is None:
                st = self.apps[app] = _AppLearning(Distribution)
            st.samples += 1
            st.sum += t
            st.last = t
            if not st.installed:
                st.learned.add(t)
                if st.samples >= MIN_APP_SAMPLES:
                    policy.set_distribution(app, st.learned)
                    st.installed = True
                    st.learned = None
                    log.info("model %s app %s: learned distribution replaces the prior "
                             "(%d samples, mean %.3f ms)", self.name, app, st.samples,
                             st.sum / st.samples * 1e3)  # fmt: skip
            elif len(apps) > 1:  # a batch of one was learned by observe_batch
                policy.observe_solo(app, t)

    def _app_section(self, apps: dict) -> dict:
        """The per-app part of the stats: at most STATS_MAX_APPS apps (the most samples
        first, then by name), a count of the others, and the table's state."""
        shown = apps
        if len(apps) > STATS_MAX_APPS:
            top = heapq.nsmallest(STATS_MAX_APPS, apps.items(),
                                  key=lambda kv: (-kv[1]["samples"], kv[0]))  # fmt: skip
            shown = dict(top)
        t = self.app_table
        return {
            "apps": shown,
            "apps_omitted": len(apps) - len(shown),  # apps with records not listed
            "apps_live": len(t),  # the apps with state, the overflow app included
            "max_apps": t.max_apps,
            "apps_evicted": t.evicted,  # forgotten after being idle
        }

    def stats(self) -> dict:
        if self.steps is not None:
            st = self.steps.stats()
            return {
                "queued": (len(self.policy) if self.policy is not None else 0)
                + len(self.waiting),
                "policy": self.policy_name,
                "batches": st["steps"],  # steps, for a step-level model
                "mean_batch_size": st["mean_members"],
                "prior_mean_ms": self.prior_mean * 1e3,
                "inflation_max": self.steps.inflation[-1],
                "decision_s": self.decision_time.snapshot(),
                "steps": st,
                **self._app_section(self.steps.app_stats()),
            }
        return {
            "policy": self.policy_name,
            "queued": (len(self.policy) if self.policy is not None else 0) + len(self.waiting),
            "batches": self.batches,
            "mean_batch_size": self.batched_requests / self.batches if self.batches else 0.0,
            "prior_mean_ms": self.prior_mean * 1e3,
            "inflation_max": self.inflation[-1] if self.inflation else None,
            "decision_s": self.decision_time.snapshot(),  # bucket counts..., sum
            **self._app_section({
                app: {
                    "samples": st.samples,
                    "mean_solo_ms": st.sum / st.samples * 1e3 if st.samples else 0.0,
                    "source": "learned" if st.installed else "prior",
                }
                for app, st in self.apps.items()
            }),
        }


class _WorkerState:
    __slots__ = ("index", "channel", "pid", "ready", "busy_batch", "busy_model",
                 "last_heard", "hang_reported")  # fmt: skip

    def __init__(self, index: int, channel: Channel) -> None:
        self.index = index
        self.channel = channel
        self.pid = 0
        self.ready = False
        self.busy_batch: list | None = None  # tokens of the batch it runs
        self.busy_model = -1
        # when it last had news for us or we for it (a batch, an update, a report): the
        # hang watch measures its silence from here
        self.last_heard = 0.0
        self.hang_reported = 0  # the pid already reported hung (WorkerHung goes once)


class Scheduler:
    def __init__(self, config: InstanceConfig, conn: Connection, frontend_sock, worker_socks):
        self.config = config
        self.conn = conn
        self.models = [_ModelQueue(i, e, config) for i, e in enumerate(config.models)]
        self.frontend = Channel(frontend_sock, "scheduler<->frontend")
        self.workers = [
            _WorkerState(i, Channel(s, f"scheduler<->worker {i}"))
            for i, s in enumerate(worker_socks)
        ]
        self.idle: list[_WorkerState] = []
        self._rr = 0
        self._next_batch_id = 1
        self._dropped: list[int] = []
        self._rejected: list[int] = []
        self._errors: list = []
        self._stopping = False
        self._next_stats = 0.0
        self._next_sweep = 0.0
        self._quiet: dict[int, _WorkerState] = {}  # fd -> a stepping worker, read per tick

        # type -> handler, per peer; an unknown type has its own explicit branch
        self._frontend_handlers = {msgs.Submit: self._on_submit}
        self._worker_handlers = {
            msgs.WorkerReady: self._on_worker_ready,
            msgs.BatchDone: self._on_batch_done,
            msgs.StepProgress: self._on_step_progress,
        }
        self._parent_handlers = {
            msgs.Shutdown: self._on_shutdown,
            msgs.AttachWorker: self._on_attach_worker,
        }
        self._channels = {self.frontend.fileno(): (self.frontend, self._frontend_handlers)}
        for w in self.workers:
            self._channels[w.channel.fileno()] = (w.channel, self._worker_handlers)

    # ------------------------------------------------------------------ loop
    def run(self) -> None:
        send_to_parent(self.conn, msgs.ChildReady("scheduler", 0, os.getpid(), {}))
        settle_memory()
        self.poller = poller = select.poll()
        for fd in self._channels:
            poller.register(fd, select.POLLIN)
        parent_fd = self.conn.fileno()
        poller.register(parent_fd, select.POLLIN)
        channels = self._channels
        while not self._stopping:
            events = poller.poll(self._poll_timeout_ms())
            if len(events) > 1:  # the supervisor first: a Shutdown explains closed channels
                events.sort(key=lambda e: e[0] != parent_fd)
            for fd, ev in events:
                if fd == parent_fd:
                    self._drain_parent()
                    continue
                entry = channels.get(fd)
                if entry is not None:
                    self._service(entry[0], entry[1], ev)
            for w in list(self._quiet.values()):  # stepping workers: their reports so far
                if w.channel.sock is not None:
                    self._service(w.channel, self._worker_handlers, select.POLLIN)
            if not self.idle and not any(w.ready for w in self.workers):
                self._expire_unservable(time.monotonic())
            elif self._next_sweep:
                self._next_sweep = 0.0
            self._schedule()
            self._update_quiet()
            now = time.monotonic()
            if now >= self._next_stats:
                self._next_stats = now + STATS_INTERVAL_S
                for mq in self.models:
                    if mq.policy is not None:
                        mq.evict_idle(now)
                self._send_stats()
                self._watch_hangs(now)
        self._close()

    def _poll_timeout_ms(self) -> float:
        """Until a policy wants another look (a batching delay), else the stats tick."""
        now = time.monotonic()
        wake = self._next_stats
        if not self.idle and self._next_sweep and self._next_sweep < wake:
            wake = self._next_sweep  # no worker is ready and requests are queued
        if self.idle:
            for mq in self.models:
                if mq.policy is not None and len(mq.policy):
                    w = mq.policy.next_wakeup(now)
                    if w is not None and w < wake:
                        wake = w
        if self._quiet and now + STEP_TICK_S < wake:
            wake = now + STEP_TICK_S
        return max(MIN_WAKEUP_MS, (wake - now) * 1000.0)

    def _update_quiet(self) -> None:
        """A worker that runs members step by step, and no whole batch, reports every
        boundary; waking up for each report would cost that worker a wake-up of this
        process per step (on a small machine the woken process often takes the waker's
        CPU: 100-200 us measured per report). So its channel is polled without POLLIN
        (a report wakes nobody; a close still does, as POLLHUP) and read each time this
        loop runs: at least every STEP_TICK_S, and at once when a request arrives."""
        for w in self.workers:
            fd = w.channel.fileno()
            quiet = (w.ready and w.busy_batch is None and w.channel.sock is not None
                     and any(mq.steps is not None and not mq.steps.runs[w.index].idle()
                             for mq in self.models))  # fmt: skip
            if quiet == (fd in self._quiet):
                continue
            if quiet:
                self._quiet[fd] = w
            else:
                del self._quiet[fd]
            if self._channels.get(fd, (None,))[0] is w.channel:
                self.poller.modify(fd, self._mask(w.channel))

    def _mask(self, ch: Channel) -> int:
        fd = ch.fileno()
        return ((0 if fd in self._quiet else select.POLLIN)
                | (select.POLLOUT if ch.wants_write else 0))  # fmt: skip

    def _service(self, ch: Channel, handlers: dict, ev: int) -> None:
        try:
            if ev & select.POLLOUT and ch.flush():
                self.poller.modify(ch.fileno(), self._mask(ch))
            if ev & (select.POLLIN | select.POLLHUP | select.POLLERR):
                for parts in ch.recv():
                    self._handle(ch, handlers, parts)
        except ChannelClosed:
            # the frontend closes first at every shutdown; a worker's close is news
            level = logging.INFO if ch is self.frontend or self._stopping else logging.WARNING
            log.log(level, "%s closed by its peer", ch.name)
            self.poller.unregister(ch.fileno())
            del self._channels[ch.fileno()]
            self._quiet.pop(ch.fileno(), None)
            for w in self.workers:
                if w.channel is ch:
                    self._lose_worker(w, self._exit_reason(w))

    def _handle(self, ch: Channel, handlers: dict, parts: list) -> None:
        try:
            msg = msgs.decode(parts[0])
        except (msgs.UnknownMessage, ValueError, TypeError) as exc:
            log.error("ignored a malformed message on %s: %s", ch.name, exc)
            return
        handler = handlers.get(type(msg))
        if handler is None:
            log.error("no handler for %s on %s; ignored", type(msg).__name__, ch.name)
            return
        handler(msg)

    def _send(self, ch: Channel, parts: list) -> bool:
        try:
            ch.send(parts)
        except ChannelClosed:
            return False
        if ch.wants_write:
            self.poller.modify(ch.fileno(), self._mask(ch))
        return True

    def _drain_parent(self) -> None:
        try:
            while self.conn.poll():
                msg = msgs.decode(self.conn.recv_bytes())
                handler = self._parent_handlers.get(type(msg))
                if handler is None:
                    log.error("supervisor sent unexpected %s; ignored", type(msg).__name__)
                    continue
                handler(msg)
        except (EOFError, OSError):
            self._stopping = True

    # ------------------------------------------------------------------ handlers
    def _on_submit(self, msg: msgs.Submit) -> None:
        for d in msg.requests:
            token, model, app, arrival, deadline, hint, slot, generation = d
            mq = self.models[model]
            if mq.policy is None:
                mq.waiting.append(d)
                continue
            self._enqueue(mq, token, app, arrival, deadline, hint, slot, generation)
            if mq.steps is not None:
                mq.steps.arrived = True

    def _enqueue(self, mq: _ModelQueue, token, app, arrival, deadline, hint, slot, gen) -> None:
        try:
            app = mq.live_app(app, arrival)
            mq.policy.enqueue(token, app, arrival, deadline, hint)
        except (ValueError, TypeError, KeyError) as exc:
            self._errors.append([token, f"the scheduler could not queue the request: {exc}"])
            return
        mq.slots[token] = (slot, gen, app, deadline)

    def _on_worker_ready(self, msg: msgs.WorkerReady) -> None:
        w = self.workers[msg.worker]
        w.pid = msg.pid
        # a restarted worker sends no profiles: the first warm-up's stay in force
        for mq, fields in zip(self.models, msg.profiles or [None] * len(self.models),
                              strict=True):  # fmt: skip
            if mq.policy is None:
                if fields is None:
                    log.error("worker %d sent no profile for model %s, which has no policy "
                              "yet; its requests wait for a worker that does", msg.worker,
                              mq.name)  # fmt: skip
                    continue
                mq.configure(msgs.ModelProfile(*fields))
                waiting, mq.waiting = mq.waiting, []
                for d in waiting:
                    token, _m, app, arrival, deadline, hint, slot, generation = d
                    self._enqueue(mq, token, app, arrival, deadline, hint, slot, generation)
        if not w.ready:
            w.ready = True
            self.idle.append(w)
        log.info("worker %d (pid %d, %s) ready", msg.worker, msg.pid, msg.device)
        send_to_parent(self.conn, msgs.ChildReady("worker", msg.worker, msg.pid,
                                                  {"device": msg.device}))  # fmt: skip

    def _on_batch_done(self, msg: msgs.BatchDone) -> None:
        w = self.workers[msg.worker]
        w.last_heard = time.monotonic()
        tokens = w.busy_batch
        w.busy_batch = None
        if w.ready and w not in self.idle:
            self.idle.append(w)
        if tokens is None:
            log.error("worker %d reported batch %d, which it was not running",
                      msg.worker, msg.batch_id)  # fmt: skip
            return
        mq = self.models[msg.model]
        apps = []
        for t in tokens:
            entry = mq.slots.pop(t, None)
            if entry is not None:
                apps.append(entry[2])
        if msg.ok:
            mq.batches += 1
            mq.batched_requests += len(tokens)
            if len(apps) == len(tokens):  # else members were taken out: their apps unknown
                mq.learn(apps, msg.exec_s, msg.work)

    def _on_step_progress(self, msg: msgs.StepProgress) -> None:
        if not 0 <= msg.model < len(self.models):
            log.error("step progress for unknown model %d; ignored", msg.model)
            return
        co = self.models[msg.model].steps
        if co is None:
            log.error("step progress for model %s, which is not served step by step",
                      self.models[msg.model].name)  # fmt: skip
            return
        if 0 <= msg.worker < len(self.workers):
            self.workers[msg.worker].last_heard = time.monotonic()
        co.on_progress(msg)

    def _on_shutdown(self, msg: msgs.Shutdown) -> None:
        self._stopping = True

    # ------------------------------------------------------------------ dispatch
    def _schedule(self) -> None:
        if self.idle:
            now = time.monotonic()
            n = len(self.models)
            while self.idle:
                dispatched = False
                for k in range(n):
                    mq = self.models[(self._rr + k) % n]
                    if mq.policy is None or mq.steps is not None or not len(mq.policy):
                        continue
                    t0 = time.perf_counter()
                    d = mq.policy.decide(now)
                    mq.decision_time.observe(time.perf_counter() - t0)
                    self._take(mq, d.dropped, self._dropped)
                    self._take(mq, d.rejected, self._rejected)
                    if d.batch:
                        self._dispatch(mq, d.batch, self.idle.pop(0))
                        self._rr = (self._rr + k + 1) % n
                        dispatched = True
                        break
                if not dispatched:
                    break
        self._schedule_steps()
        if self._dropped or self._rejected or self._errors:
            discard = msgs.Discard(self._dropped, self._rejected, self._errors,
                                   "rejected by the scheduling policy")  # fmt: skip
            self._dropped, self._rejected, self._errors = [], [], []
            self._send(self.frontend, [msgs.encode(discard)])

    def _schedule_steps(self) -> None:
        """Each step-served model's decision for every ready worker that reported a
        boundary since the last pass, or that runs nothing of it while requests wait."""
        now = None
        for mq in self.models:
            co = mq.steps
            if co is None:
                continue
            for w in self.workers:
                if not w.ready or not co.wants_decision(w.index):
                    continue
                if now is None:
                    now = time.monotonic()
                t0 = time.perf_counter()
                update, answered = co.decide(w.index, now)
                mq.decision_time.observe(time.perf_counter() - t0)
                self._dropped += answered
                if update is None:
                    continue
                w.last_heard = now
                if not self._send(w.channel, [msgs.encode(update)]):
                    self._lose_worker(w, "its channel is closed")
            co.arrived = False

    @staticmethod
    def _take(mq: _ModelQueue, tokens: list, into: list) -> None:
        for t in tokens:
            mq.slots.pop(t, None)
            into.append(t)

    def _dispatch(self, mq: _ModelQueue, batch: list, w: _WorkerState) -> None:
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
            return
        batch_id = self._next_batch_id
        self._next_batch_id += 1
        run = msgs.RunBatch(batch_id, mq.index, list(batch), [e[0] for e in entries],
                            [e[1] for e in entries])  # fmt: skip
        w.busy_batch = list(batch)
        w.busy_model = mq.index
        w.last_heard = time.monotonic()
        if not self._send(w.channel, [msgs.encode(run)]):
            self._lose_worker(w, "its channel is closed")  # the frontend re-queues the batch

    # ------------------------------------------------------------------ worker crashes
    def _exit_reason(self, w: _WorkerState) -> str:
        if w.pid and w.hang_reported == w.pid:
            return (f"it hung and was killed after {self.config.hang_timeout_s:g} s without "
                    "a report (--hang-timeout)")  # fmt: skip
        return "it exited"

    def _lose_worker(self, w: _WorkerState, reason: str) -> None:
        """Worker `w` is gone: nothing more is dispatched to it, and the batch it was
        running goes to the frontend (`WorkerLost`), which alone knows which members are
        still unanswered, to be re-queued or answered. Idempotent."""
        ch = w.channel
        fd = ch.fileno()
        entry = self._channels.get(fd)
        if entry is not None and entry[0] is ch:
            self.poller.unregister(fd)
            del self._channels[fd]
        if self._quiet.get(fd) is w:
            del self._quiet[fd]
        ch.close()
        w.ready = False
        if w in self.idle:
            self.idle.remove(w)
        tokens, w.busy_batch = w.busy_batch or [], None
        what = []
        if tokens:
            mq = self.models[w.busy_model]
            for t in tokens:
                mq.slots.pop(t, None)
            what.append(f"a batch of {len(tokens)} request(s) of {mq.name}")
        for mq in self.models:  # the members it ran step by step, and those on the way
            if mq.steps is not None:
                members = mq.steps.lose(w.index)
                if members:
                    tokens = tokens + members
                    what.append(f"{len(members)} step member(s) of {mq.name}")
        if not tokens:
            return
        log.warning("worker %d (pid %d) is gone (%s) with %s; the frontend re-queues or "
                    "answers them", w.index, w.pid, reason, " and ".join(what))  # fmt: skip
        lost = msgs.WorkerLost(w.index, w.pid, tokens, f"{reason} while running its batch")
        self._send(self.frontend, [msgs.encode(lost)])

    def _watch_hangs(self, now: float) -> None:
        """Reports to the supervisor each worker that holds work and has been silent for
        longer than `hang_timeout_s`: a whole batch with no BatchDone, or step members with
        no StepProgress. Checked once per stats tick, so a hang is seen within
        `hang_timeout_s + STATS_INTERVAL_S`. A legitimately long batch looks the same:
        the timeout must exceed the longest batch a model may run."""
        limit = self.config.hang_timeout_s
        if not limit > 0:
            return
        for w in self.workers:
            if w.channel.sock is None or w.pid == 0 or w.hang_reported == w.pid:
                continue
            silent = now - w.last_heard
            if silent <= limit:
                continue
            if w.busy_batch is not None:
                what = f"a batch of {len(w.busy_batch)} of {self.models[w.busy_model].name}"
            else:
                stepping = [mq.name for mq in self.models
                            if mq.steps is not None and not mq.steps.runs[w.index].idle()]
                if not stepping:
                    continue
                what = f"step members of {', '.join(stepping)}"
            w.hang_reported = w.pid
            log.error("worker %d (pid %d) has run %s for %.1f s without a report; asking the "
                      "supervisor to kill it (--hang-timeout %g s)", w.index, w.pid, what,
                      silent, limit)  # fmt: skip
            send_to_parent(self.conn, msgs.WorkerHung(w.index, w.pid, silent, what))

    def _drain_dead(self, ch: Channel) -> None:
        """Handles what a dead worker sent before it died (a BatchDone), up to its EOF."""
        for _ in range(1000):  # bounded: a dead peer reaches EOF after what it wrote
            if ch.sock is None:
                return
            try:
                batch = ch.recv()
            except (ChannelClosed, OSError):
                return
            if not batch:
                return
            for parts in batch:
                self._handle(ch, self._worker_handlers, parts)

    def _on_attach_worker(self, msg: msgs.AttachWorker) -> None:
        # NOTE: the descriptor follows the message on the pipe: take it before anything else
        fd = recv_handle(self.conn)
        w = self.workers[msg.worker]
        if w.channel.sock is not None:  # its death not handled yet: what it sent counts
            self._drain_dead(w.channel)
            self._lose_worker(w, self._exit_reason(w))
        w.channel = Channel(socket.socket(fileno=fd), f"scheduler<->worker {msg.worker}")
        w.pid = msg.pid
        w.ready = False  # until its WorkerReady: nothing is dispatched to it before
        self._channels[w.channel.fileno()] = (w.channel, self._worker_handlers)
        self.poller.register(w.channel.fileno(), select.POLLIN)
        log.info("worker %d: restarted as pid %d (restart %d); it gets batches once ready",
                 msg.worker, msg.pid, msg.epoch)  # fmt: skip

    def _expire_unservable(self, now: float) -> None:
        """No worker is ready (every one died and restarts), so no decision runs to drop
        what can no longer finish: drop the queued requests whose deadline has passed."""
        if now < self._next_sweep:
            return
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
        self._next_sweep = now + EXPIRE_SWEEP_S if queued else 0.0

    def _send_stats(self) -> None:
        stats = msgs.SchedulerStats({mq.name: mq.stats() for mq in self.models})
        self._send(self.frontend, [msgs.encode(stats)])

    def _close(self) -> None:
        self.frontend.close()
        for w in self.workers:
            w.channel.close()
        log.info("stopped")


def run_scheduler_process(
    config: InstanceConfig, conn: Connection, frontend_sock, worker_socks: list
) -> None:
    """Entry point of the scheduler process (spawned by the supervisor).

    `frontend_sock` and `worker_socks` are this process's ends of the socket pairs to the
    frontend and to each worker."""

    def body() -> None:
        Scheduler(config, conn, frontend_sock, worker_socks).run()

    child_main("scheduler", 0, config, conn, body)
