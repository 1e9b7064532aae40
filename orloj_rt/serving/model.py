"""One model's serving state, free of IO: its policy and queue, and what it learns.

`ModelCore` is what the scheduler process and the simulator hold per model (through
`ServingCore`, core.py). No sockets, no clocks: every time is an argument.

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
model: at most `max_apps` live apps (`--max-apps`, default 256, the overflow app
included); beyond, a new app's requests are filed under the overflow app "~other" and
served like any others. An app with nothing in flight (queued or running) that has not
been seen for `app_idle_s` (60 s) is forgotten everywhere: here, and in the policy
(`forget_app`; the policy's own limits are switched off, so that the two never disagree).
The `stats` reply lists at most `STATS_MAX_APPS` apps per model, the busiest, and counts
the others.

Variants and weights (issue 17, orloj_rt/policies/utility.py): a model's `spec.variants`
(the full model first) and `spec.app_weights` go to the policies that use them
(VARIANT_POLICIES); each batch's variant is remembered per worker, and what a batch
teaches goes to that variant (its own per-app distributions: `_AppLearning` records per
(app, variant)). Policies that adapt fairness get every request's outcome
(`outcome`): in time or not.
"""

from __future__ import annotations

import heapq
import logging
import math

from orloj_rt.engine.apps import DEFAULT_MAX_APPS, OVERFLOW_APP, RUNTIME_APP_IDLE_S, AppTable
from orloj_rt.policies import HINTED, VARIANT_POLICIES, serving_mode
from orloj_rt.protocol import messages as msgs
from orloj_rt.protocol.stats import DECISION_BUCKETS_S, MAX_APPS_PER_MODEL, Histogram
from orloj_rt.serving.hints import (
    DEFAULT_HINT_CLASSES,
    HINT_TUNING,
    HintBook,
    HintClasses,
    check_classes,
    class_app,
)
from orloj_rt.serving.learning import MIN_APP_SAMPLES, prior_of
from orloj_rt.serving.steps import StepCoordinator, step_prior

log = logging.getLogger("orloj_rt.scheduler")

#: the `stats` reply's per-app section lists this many apps per model at most (the most
#: samples first, then by name) and counts the others, as /metrics caps its app labels
STATS_MAX_APPS = MAX_APPS_PER_MODEL


class _AppLearning:
    __slots__ = ("samples", "learned", "installed", "sum", "last")

    def __init__(self, distribution_cls) -> None:
        self.samples = 0
        self.learned = distribution_cls()  # until installed in the policy
        self.installed = False
        self.sum = 0.0
        self.last = 0.0


class ModelCore:
    """One model's policy, its queued requests' ring slots, and what was learned."""

    def __init__(self, index: int, spec, policy: str, policy_params: dict | None = None,
                 workers: int = 1):  # fmt: skip
        self.index = index
        self.spec = spec
        self.name = spec.name
        self.policy_name, self.step_level = serving_mode(spec, policy)
        if self.policy_name != policy:
            log.info("model %s has no steps: policy %s serves it in whole batches as %s",
                     self.name, policy, self.policy_name)  # fmt: skip
        params = dict(policy_params or {})
        # scheduler options carried with the policy's parameters (`--max-apps`); the rest
        # go to the policy
        self.app_table = AppTable(params.pop("max_apps", DEFAULT_MAX_APPS),
                                  params.pop("app_idle_s", RUNTIME_APP_IDLE_S))  # fmt: skip
        # cost-hint classes (hints.py), for the policies that use them
        classes = check_classes(params.pop("hint_classes", DEFAULT_HINT_CLASSES))
        self.hints = HintBook(classes) if classes and self.policy_name in HINTED else None
        if self.hints is not None and self.policy_name == "orloj":
            params.setdefault("pools", True)  # what lets classes batch short with short
        # orloj's settings once hints class requests (hints.py), but those the params set
        self._hint_tuning = ({k: v for k, v in HINT_TUNING.items() if k not in params}
                             if self.hints is not None and self.policy_name == "orloj"
                             else {})  # fmt: skip
        # variants (the full model first; () for none) and app weights, for the policies
        # that choose variants and weigh apps; the others run the full model
        self.variants = tuple(getattr(spec, "variants", None) or ())
        self.app_weights = dict(getattr(spec, "app_weights", None) or {})
        if self.policy_name == "orloj":
            # orloj honours priority tiers (utility.py); priorities=false turns them off
            params.setdefault("priorities", True)
        if self.policy_name in VARIANT_POLICIES:
            if len(self.variants) > 1:
                params.setdefault("variants", self.variants)
            if self.app_weights:
                params.setdefault("app_weights", self.app_weights)
        if self.policy_name == "orloj" and getattr(spec, "min_accuracy", 0.0):
            params.setdefault("min_accuracy", spec.min_accuracy)
        self.policy_params = params
        self.policy = None  # built when the first worker's profile arrives
        self._outcome = None  # the policy's observe_outcome, if it wants outcomes
        self.steps: StepCoordinator | None = None  # step-level batching (step_level)
        self.workers = workers
        self.inflation: list[float] = []
        self.work_fit: tuple[float, float] | None = None
        self.prior_mean = 0.0
        self.prior_cov = 0.0
        self.waiting: list = []  # descriptors that arrived before any worker was ready
        # token -> (slot, generation, app, deadline, hint, classes), queued or running;
        # `app` is the live app it is filed under (itself, a hint class of it, or
        # OVERFLOW_APP); `classes` the HintClasses its hint was classed by, or None
        self.slots: dict[int, tuple] = {}
        self.apps: dict[str, _AppLearning] = {}  # live apps only (app_table)
        # (app, variant > 0) -> what that variant learned of the app
        self.variant_apps: dict[tuple[str, int], _AppLearning] = {}
        self.batches = 0
        self.batched_requests = 0
        self.variant_batches = [0] * max(1, len(self.variants))  # batches run per variant
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
        if getattr(self.policy, "wants_outcomes", False):
            self._outcome = self.policy.observe_outcome
        mean, cov = prior_of(list(profile.solo_times))
        self.prior_mean, self.prior_cov = mean, cov
        self._seed_hints(profile.hints, profile.solo_times)
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
        self.prior_mean, self.prior_cov = mean, cov
        self._seed_hints(profile.hints, [float(step_s) * w for w in works])
        self.policy.set_default_distribution(Distribution.from_mean_cov(mean, cov))
        self.steps = StepCoordinator(self.name, self.index, self.policy, self.slots,
                                     float(step_s), inflation, self.work_fit,
                                     self.workers)  # fmt: skip
        log.info("model %s: step-level batching, policy %s, one step %.3f ms alone, "
                 "c(%d) = %.2f, prior mean %.1f steps (cov %.2f)", self.name,
                 self.policy_name, step_s * 1e3, len(inflation), inflation[-1],
                 mean / step_s, cov)  # fmt: skip

    def _seed_hints(self, hints, values) -> None:
        """The warm-up examples' (hint, solo) pairs seed every app's hint classes."""
        if self.hints is None or not hints or len(hints) != len(values):
            return
        self.hints.seed = [(float(h), float(v)) for h, v in zip(hints, values, strict=True)
                           if h is not None and math.isfinite(h) and v > 0]  # fmt: skip

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
        return t.admit(app)[0]

    def file(self, app, hint, now: float) -> tuple[str, HintClasses | None]:
        """(the live app a request of `app` with cost `hint` arriving at `now` is filed
        under, the HintClasses that classed it or None): its app (`live_app`), or with a
        hint and classes, the class of its hint (hints.py)."""
        app = self.live_app(app, now)
        if self.hints is None or hint is None or app == OVERFLOW_APP:
            return app, None
        hc = self.hints.get(app)
        hc.observe(float(hint))  # a (re)fit marks every class stale: rebuilt when next used
        k = hc.class_of(float(hint))
        if k is None:
            return app, hc
        name = class_app(app, k)
        fresh = name not in self.app_table.index
        live = self.live_app(name, now)
        if live != name:
            return live, hc  # no room for the class: the overflow app
        if fresh or k in hc.stale:
            hc.stale.discard(k)
            self._install_class(name, hc.buckets()[k])
        return name, hc

    def _install_class(self, name: str, values: list[float]) -> None:
        """Class app `name` starts from the kept solo times (step-served: solo work) of
        its range: its own distribution if there are `MIN_APP_SAMPLES`, else the prior,
        and its learning record goes on from those samples."""
        from orloj_rt.engine import Distribution

        if self._hint_tuning:  # the first class: orloj tuned for hint classes
            for key, value in self._hint_tuning.items():
                getattr(self.policy, f"set_{key}")(value)
            self._hint_tuning = {}
        prior = Distribution.from_mean_cov(self.prior_mean, self.prior_cov)
        if self.steps is not None:
            self.steps.seed_app(name, values, prior)
            return
        rec = self.apps[name] = _AppLearning(Distribution)
        for v in values:
            rec.learned.add(v)
        rec.samples = len(values)
        rec.sum = float(sum(values))
        rec.last = values[-1] if values else 0.0
        if rec.samples >= MIN_APP_SAMPLES:
            self.policy.set_distribution(name, rec.learned)
            rec.installed, rec.learned = True, None
        else:
            self.policy.set_distribution(name, prior)

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
            for k in range(1, len(self.variants)):
                self.variant_apps.pop((name, k), None)
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

    def variant_name(self, index: int | None) -> str | None:
        """The name of variant `index` (a policy's Decision.variant); the full model's for
        None; None for a model without variants."""
        if not self.variants:
            return None
        return self.variants[index or 0].name

    def outcome(self, app: str, finished: bool, variant: int | None = None) -> None:
        """A request of live app `app` was answered, `finished` in time or not, by a batch
        of `variant` (None: it never ran, or the model has no variants): for a policy that
        adapts fairness or keeps an accuracy floor (per client app: a hint class counts
        as its app)."""
        if self._outcome is not None:
            base, sep, k = app.rpartition("#h")
            self._outcome(base if sep and k.isdigit() else app, finished, variant)

    def learn(self, apps: list[str], exec_s: float, work: list | None,
              hinted: list | None = None, variant: int | None = None) -> None:  # fmt: skip
        """Learns from a finished batch: its members' apps, its time, their work reports;
        `hinted`: each member's (hint, HintClasses) or None, to keep (hint, solo) pairs;
        `variant`: the variant it ran (None or 0: the full model)."""
        from orloj_rt.engine import Distribution

        policy = self.policy
        t = self.app_table  # an app in flight is live; one that is not is admitted
        apps = [a if a in t.index else self.live_app(a, t.clock) for a in apps]
        # a variant > 0 learns into records of its own, and its (hint, solo) pairs are not
        # kept: hint classes describe the full model
        at = {"variant": variant} if variant else {}
        records = self.variant_apps if variant else self.apps
        if variant:
            hinted = None
        policy.observe_batch(apps, exec_s, **at)
        solos = self.solo_times(len(apps), exec_s, work)
        if solos is None:
            return
        for i, (app, t) in enumerate(zip(apps, solos, strict=True)):
            if not (t > 0 and math.isfinite(t)):
                continue
            if hinted is not None and hinted[i] is not None:
                hint, classes = hinted[i]
                classes.pairs.append((hint, t))
            key = (app, variant) if variant else app
            st = records.get(key)
            if st is None:
                st = records[key] = _AppLearning(Distribution)
            st.samples += 1
            st.sum += t
            st.last = t
            if not st.installed:
                st.learned.add(t)
                if st.samples >= MIN_APP_SAMPLES:
                    policy.set_distribution(app, st.learned, **at)
                    st.installed = True
                    st.learned = None
                    if not variant:
                        log.info("model %s app %s: learned distribution replaces the prior "
                                 "(%d samples, mean %.3f ms)", self.name, app, st.samples,
                                 st.sum / st.samples * 1e3)  # fmt: skip
            elif len(apps) > 1:  # a batch of one was learned by observe_batch
                policy.observe_solo(app, t, **at)

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

    def _hint_section(self) -> dict:
        """Per hinted app (at most STATS_MAX_APPS, the most hints seen first): hints seen,
        fits, and its classes' hint ranges (each class's learning is in `apps`, as app
        `APP#h<k>`)."""
        if self.hints is None:
            return {}
        return {"hint_classes": self.hints.stats(STATS_MAX_APPS)}

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
                **self._hint_section(),
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
            **({"variant_batches": {v.name: n for v, n in
                                    zip(self.variants, self.variant_batches, strict=True)}}
               if self.variants else {}),  # fmt: skip
            **self._hint_section(),
            **self._app_section({
                app: {
                    "samples": st.samples,
                    "mean_solo_ms": st.sum / st.samples * 1e3 if st.samples else 0.0,
                    "source": "learned" if st.installed else "prior",
                }
                for app, st in self.apps.items()
            }),
        }
