"""`node_state`: a node's `NodeState` (routing_state.py), read off its serving core.

Read-only: it reads the attributes the serving core already keeps (orloj_rt/serving:
`ServingCore.workers`, `.models`; each `ModelCore`'s `slots`, `apps`, `inflation`,
`prior_mean`, `prior_cov`, policy) and changes nothing. The runtime's scheduler process
calls it every few milliseconds, and the cluster simulator (orloj_rt/sim/cluster.py) at
each publication.

What it publishes, per model (once its first worker's profile built its policy):

- per app (at most `max_apps`, the most queued first, then the most learned): the
  requests waiting, and its solo-time distribution on this node when it has its own
  (the policy's `distribution(app)` where the policy has one, as orloj does; else a
  lognormal with the app's learned mean and the prior's CoV once it has
  MIN_APP_SAMPLES solo times); an app of hint classes (`APP#h<k>`) counts as APP;
- the model's default distribution: the warm-up prior (lognormal, its mean and CoV);
- `queued` and `running` counts; `backlog`: the worker seconds its queue needs, each
  waiting request costing c(b) E[max of b] / b of its app's distribution, with b the
  queue per ready worker, at most the largest batch whose expected time fits in the mean
  slack (deadline - now) of the waiting requests (requests already past their deadline
  are left out: an SLO-aware policy drops them);

and per busy worker the expected seconds until it is free: the mean residual time of its
batch's time c(b) x (max of b solo times), given `now - busy_since[w]` elapsed, where
the caller knows when it dispatched (the simulator does); otherwise half the batch's
expected time. A worker running step members counts as busy for one step per member
left (approximate: step-served models are not what the routing was measured on).

Cost: one pass over the requests in flight (the core's `slots`) and the workers, plus
one distribution summary per app, cached and recomputed when the app's learned sample
count has grown by 1/8 (about 20-40 us for a node with a few dozen requests in flight and
one app; the figure in docs/cluster-routing.md comes from bench/cluster_routing.py
--state-cost).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping

from orloj_rt.cluster.routing_state import (
    BIN_EDGES,
    AppState,
    ModelState,
    NodeState,
    Summary,
    batch_cap,
    batch_factor,
)

CLASS_SEPARATOR = "#h"  # orloj_rt.serving.hints.CLASS_SEPARATOR (kept import-free here)
MIN_APP_SAMPLES = 32  # orloj_rt.serving.learning.MIN_APP_SAMPLES
DEFAULT_MAX_APPS = 64

# per core: {(model index, app): (samples when made, Summary)}, {model index: (prior, S)}
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _base_app(app: str) -> str:
    i = app.rfind(CLASS_SEPARATOR)
    return app if i < 0 else app[:i]


def _default_summary(cache: dict, mq) -> Summary:
    key = ("default", mq.index)
    hit = cache.get(key)
    prior = (mq.prior_mean, mq.prior_cov)
    if hit is None or hit[0] != prior:
        hit = cache[key] = (prior, Summary.lognormal(*prior))
    return hit[1]


def _app_summary(cache: dict, mq, app: str) -> Summary | None:
    """The app's own distribution on this node, or None while it has the prior."""
    rec = mq.apps.get(app)
    samples = 0 if rec is None else rec.samples
    if samples < MIN_APP_SAMPLES:
        return None
    key = (mq.index, app)
    hit = cache.get(key)
    if hit is not None and samples < hit[0] + max(1, hit[0] // 8):
        return hit[1]
    summary = None
    get = getattr(mq.policy, "distribution", None)
    if get is not None:
        try:
            summary = Summary.of(get(app))
        except (KeyError, ValueError):
            summary = None
    if summary is None and rec.sum > 0:
        summary = Summary.lognormal(rec.sum / samples, mq.prior_cov)
    cache[key] = (samples, summary)
    return summary


def _residual(dist: Summary, c: float, b: int, elapsed: float | None) -> float:
    """Expected seconds left of a batch of b whose time is c x max of b solo times, after
    `elapsed` seconds (None: unknown, half its expected time)."""
    if elapsed is None:
        return 0.5 * c * dist.expected_max(b)
    num = den = prev = 0.0
    for k, v in enumerate(dist.q):
        cur = BIN_EDGES[k + 1] ** b
        t = c * v
        if t > elapsed:
            num += (cur - prev) * (t - elapsed)
            den += cur - prev
        prev = cur
    if den <= 0:  # past every published quantile: it ends soon, by the model's account
        return 0.1 * c * dist.expected_max(b)
    return num / den


def _served(mq) -> int:
    """Requests of the model dispatched since the start: whole batches' members, or
    step-served members finished or ended."""
    if mq.steps is not None:
        return int(getattr(mq.steps, "finished", 0) + getattr(mq.steps, "ended", 0))
    return int(mq.batched_requests)


def node_state(core, node: str, now: float, *, speed: float = 1.0,
               busy_since: Mapping[int, float] | None = None,
               max_apps: int = DEFAULT_MAX_APPS) -> NodeState:  # fmt: skip
    """The `NodeState` of serving core `core` (orloj_rt.serving.ServingCore) at `now`
    (the core's clock): see the module docstring. `busy_since`: worker index -> when its
    running batch was dispatched, where known. Reads the core; changes nothing."""
    cache = _CACHE.get(core)
    if cache is None:
        cache = _CACHE[core] = {}
    ready = [w for w in core.workers if w.ready]
    nready = len(ready)
    running: dict[int, set] = {}
    for w in ready:
        if w.busy_batch is not None:
            running.setdefault(w.busy_model, set()).update(w.busy_batch)
    models: dict[str, ModelState] = {}
    busy_left: list[float] = []
    for mq in core.models:
        if mq.policy is None or not mq.inflation:
            continue
        default = _default_summary(cache, mq)
        c = mq.inflation
        mine = running.get(mq.index, ())
        counts: dict[str, int] = {}
        slack_sum, slack_n, nrun = 0.0, 0, 0
        stepping = mq.steps is not None
        for token, entry in mq.slots.items():
            if token in mine:
                nrun += 1
                continue
            app = _base_app(entry[2])
            counts[app] = counts.get(app, 0) + 1
            slack = entry[3] - now
            if slack > 0:
                slack_sum += slack
                slack_n += 1
        queued = sum(counts.values())
        if stepping:  # slots hold the running members too; the policy holds the queue
            inq = len(mq.policy)
            if queued > inq and queued:
                scale = inq / queued
                counts = {a: round(n * scale) for a, n in counts.items()}
            nrun, queued = queued - inq, inq
            slack_n = round(slack_n * (inq / max(1, len(mq.slots))))
        queued += len(mq.waiting)
        names = set(counts)
        names.update(_base_app(a) for a in mq.apps)
        if len(names) > max_apps:
            names = set(sorted(names, key=lambda a: (-counts.get(a, 0), a))[:max_apps])
        apps = {}
        for a in names:
            apps[a] = AppState(counts.get(a, 0), _app_summary(cache, mq, a))
        ms = ModelState(inflation=list(c), default=default, apps=apps, queued=queued,
                        running=nrun, alive=slack_n,
                        slack=slack_sum / slack_n if slack_n else 0.0,
                        served=_served(mq))  # fmt: skip
        if slack_n and nready:
            b = max(1, math.ceil(slack_n / nready))
            b = min(b, batch_cap(c, default, slack_sum / slack_n))
            ms.backlog = sum(n * batch_factor(c, ms.dist(a), b) for a, n in counts.items()
                             if n)  # fmt: skip
            ms.backlog *= slack_n / max(1, queued)  # the requests still worth running
        models[mq.name] = ms
    for w in ready:
        if w.busy_batch is not None:
            mq = core.models[w.busy_model]
            ms = models.get(mq.name)
            b = len(w.busy_batch)
            if ms is None or b == 0:
                busy_left.append(0.0)
                continue
            first = mq.slots.get(w.busy_batch[0])
            dist = ms.dist(_base_app(first[2])) if first is not None else ms.default
            cb = ms.inflation[min(b, len(ms.inflation)) - 1]
            since = None if busy_since is None else busy_since.get(w.index)
            busy_left.append(_residual(dist, cb, b, None if since is None else now - since))
        elif core.stepping(w.index) if hasattr(core, "stepping") else False:
            left = 0.0
            for mq in core.models:
                ms = models.get(mq.name)
                if mq.steps is not None and ms is not None:
                    left = max(left, getattr(mq.steps, "step_s", 0.0) * max(1, ms.running))
            busy_left.append(left)
    return NodeState(node=node, stamp=float(now), workers=nready, busy_left=busy_left,
                     models=models, speed=float(speed))  # fmt: skip
