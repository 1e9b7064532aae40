"""Expected utility per unit of time: orloj with priorities, app weights, fairness and
accuracy-scaling variants (issue 17), and the Loki-style threshold baseline.

A request that finishes in time earns its weight times the accuracy of the variant that
served it; its weight is

    app weight (the model's `app_weights`, 1 if unlisted)
    x tier weight (`tier_weights[priority]`; default 10^priority, tiers 0..7)
    x fairness multiplier (1, or adapted online with `fairness` > 0).

`make_policy("orloj", ...)` builds a `UtilityPolicy` when given variants, app weights,
tier weights, `priorities=True` or fairness, and the plain engine policy otherwise. The
serving core gives orloj `priorities=True` (so that tiers are honoured; with one engine
and no tiers its decisions are the engine's own: `--policy-param priorities=false` builds
the plain policy). The engine (both twins) scores a batch by its expected *weighted* finishes per
unit of expected batch time, and with apps of several weights also forms candidates from
the apps at or above each weight, so that a heavy request can be served before an older
light one when both cannot be (orloj_rt/engine/pure/orloj.py, step 2b).

Tiers. A request of app A and tier k > 0 is filed in the engine under the app `A!p<k>`,
which shares A's distributions (every distribution given or learned for A is copied to
it) and has A's weight times the tier's. Serving is not preemptive, so a higher-tier
request that arrives while a long lower-tier batch runs waits for it; while higher tiers
arrive and none is queued, a decision forms batches of at most the size whose expected
time is `reserve` (0.3) x their SLO (the engine's `set_batch_limit`; 0 turns it off).

Variants. One engine per variant, all holding the same queue; each has its own per-app
distributions: the serving core teaches variant v from the batches v ran
(`observe_batch(..., variant=v)`, `set_distribution(app, dist, variant=v)`); until a
variant has learned an app, it uses the full model's distribution scaled by its
`cost_scale` (declared, or when unknown the optimistic guess UNKNOWN_COST_SCALE until it
has learned). Each variant's capacity mu_v is max over b of b / E[T_b] among the batch
sizes whose expected time E[T_b] fits the horizon (`horizon` x the requests' typical SLO,
default 0.5: Nexus's and Loki's duty cycle). A decision:

1. drops what the cheapest variant cannot finish even alone (every other variant is at
   least as slow: nothing else could finish it);
2. chooses the variant (`choice`):
   - "capacity" (the default): the most accurate variant whose capacity covers the
     arrival rate (smoothed) and that drains the queue within the horizon, if its engine
     has a batch (`evaluate`, which changes no queue);
   - "price": every variant's batch, and the one with the most accuracy x expected
     weighted finishes less the price of its expected time, the price being 0 while the
     full model keeps up, else (acc_a - acc_b) / (1/mu_a - 1/mu_b) for the two variants
     whose capacities straddle the arrival rate, lifted while the queue exceeds `target`
     x what the sustainable variant drains in the horizon;
   - "rate" (for comparison): always the best utility rate, as under overload;
   - under overload in either (no variant keeps up, or the queue cannot drain within the
     horizon): the variant whose batch earns the most utility per unit of time,
     accuracy x the engine's score; the variants are evaluated cheapest first, and one s
     times as costly as one already evaluated is skipped when accuracy x 1/s of that
     one's score cannot win (with distributions scaled by cost, no batch of it does
     better);
3. removes the batch from every engine. `Decision.variant` is its index.
With `min_accuracy` (a floor on the mean accuracy of the answers in time), the batches of
a variant below the floor are cut to what the floor's budget allows before they compete
in step 2 (orloj_rt/policies/accuracy_floor.py); the serving core reports each answer's
variant (`observe_outcome`), which feeds the budget.
docs/simulation.md has the measurements behind the default (bench/utility.py).

Fairness (`fairness` = F > 0). Every FAIR_PERIOD outcomes (`observe_outcome(app, ok)`,
called by the serving core for each request answered, in time or not), each app's
relative finish rate r_a = finished / asked (exponentially decayed, half-life FAIR_HALF
outcomes of the app) is compared with the model's r; an app below r(1 - FAIR_BAND)
gets its multiplier raised by exp(F (r - r_a) / r), one above r(1 + FAIR_BAND) lowered
the same way (multipliers kept in [1/FAIR_CAP, FAIR_CAP]). F is the gain: 0 is off; a
larger F closes the gap faster and further, at the price of total finish rate (a starved
app is usually the costlier one). docs/simulation.md gives the measured trade.

`loki-threshold` (LokiThresholdPolicy) is the Loki-style baseline, as strong as we could
make it: it runs the whole model at one variant, the most accurate one whose profiled
capacity (as above, batches within `duty` x the SLO, default 0.5) covers the arrival rate
(times `headroom`, default 1) and which drains the queue within that time, else the
cheapest; within that variant it batches with orloj's engine. So it differs from
orloj+variants (choice "capacity") only under overload, where orloj compares the
variants' utility rates and loki-threshold runs the cheapest. It has no tiers.
"""

from __future__ import annotations

import math
import sys
from bisect import bisect_right
from collections.abc import Sequence

from orloj_rt.engine import DEFAULT_ALPHA, DEFAULT_MAX_BATCH, OrlojPolicy
from orloj_rt.engine.interface import Decision, Policy
from orloj_rt.policies.accuracy_floor import AccuracyFloor

#: the default tier weights: tier k weighs 10^k (tiers 0..MAX_TIER)
DEFAULT_TIER_BASE = 10.0
MAX_TIER = 7  # orloj_rt/protocol/wire.py MAX_PRIORITY
#: the cost scale a variant without a declared one is assumed to have until it learned
UNKNOWN_COST_SCALE = 0.5
#: the price's queue factor stays in [1, LIFT_CAP]; a price never lifts from below this
LIFT_CAP = 1e4
LIFT_FLOOR = 0.01
#: how orloj chooses a batch's variant (the module docstring): by the price of time, or
#: by capacity as loki-threshold does (a comparison, docs/simulation.md)
CHOICES = ("capacity", "price", "rate")
#: the reservation for higher tiers holds while their last request arrived within this
#: many of their SLOs
RESERVE_WINDOW = 10.0
FAIR_PERIOD = 64
FAIR_HALF = 2000.0
FAIR_BAND = 0.05
FAIR_CAP = 64.0
TIER_SEP = "!p"
#: points of a distribution's quantile function used to scale it
_SCALE_POINTS = 256


class VariantSpec:
    """A variant as the policy needs it: name, accuracy in [0, 1], cost scale or None."""

    __slots__ = ("name", "accuracy", "cost_scale")

    def __init__(self, name, accuracy, cost_scale):
        self.name = name
        self.accuracy = accuracy
        self.cost_scale = cost_scale


def checked_variants(variants) -> list[VariantSpec]:
    """Variants given as objects with .name/.accuracy/.cost_scale, or (name, cost_scale,
    accuracy) tuples: checked, the full model first; ValueError naming the field."""
    out = []
    for i, v in enumerate(variants or ()):
        if isinstance(v, (tuple, list)):
            if len(v) != 3:
                raise ValueError(f"variants[{i}]: expected (name, cost_scale, accuracy), got {v!r}")
            name, cost, acc = v
        else:
            name = getattr(v, "name", None)
            acc = getattr(v, "accuracy", None)
            cost = getattr(v, "cost_scale", None)
        if not isinstance(name, str) or not name:
            raise ValueError(f"variants[{i}].name: a variant needs a name, got {name!r}")
        if acc is None:
            raise ValueError(f"variants[{i}] ({name!r}).accuracy: missing; give its accuracy "
                             "in [0, 1]")
        acc = float(acc)
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"variants[{i}] ({name!r}).accuracy: {acc!r} is not in [0, 1]")
        if cost is not None:
            cost = float(cost)
            if not (cost > 0 and math.isfinite(cost)):
                raise ValueError(f"variants[{i}] ({name!r}).cost_scale: {cost!r} is not a "
                                 "positive number")
        out.append(VariantSpec(name, acc, cost))
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise ValueError(f"variants: a name is given twice in {names}")
    return out


def tier_weight_table(tier_weights) -> list[float]:
    """The weight of each tier: `tier_weights` checked, or the default 10^k."""
    if tier_weights is None:
        return [DEFAULT_TIER_BASE**k for k in range(MAX_TIER + 1)]
    if isinstance(tier_weights, (int, float)):
        tier_weights = [tier_weights]
    out = [float(w) for w in tier_weights]
    if not out or len(out) > MAX_TIER + 1:
        raise ValueError(f"tier_weights: give 1 to {MAX_TIER + 1} weights (tier 0 first), "
                         f"got {len(out)}")
    for k, w in enumerate(out):
        if not (w > 0 and math.isfinite(w)):
            raise ValueError(f"tier_weights[{k}]: {w!r} is not a positive number")
    return out


def check_priority(priority, tiers: int) -> int:
    if isinstance(priority, bool) or not isinstance(priority, int) or not (
        0 <= priority < tiers
    ):
        raise ValueError(f"priority {priority!r} is out of range: a tier is an integer in "
                         f"0..{tiers - 1} (tier_weights gives {tiers} tier(s))")
    return priority


def scaled(dist, scale: float):
    """A distribution of `scale` times `dist`'s solo times, on the same grid (from its
    quantile function, in the same engine)."""
    if scale == 1.0:
        return dist.copy()
    qs = [dist.quantile((i + 0.5) / _SCALE_POINTS) * scale for i in range(_SCALE_POINTS)]
    return type(dist).from_samples(qs, bins=dist.bins, lo=dist.lo, hi=dist.hi,
                                   window=dist.window)  # fmt: skip


def capacity(batch_times: Sequence[float], horizon: float) -> tuple[float, float]:
    """(requests per second, that batch's time): max over b of b / T_b among the batch
    sizes whose expected time T_b (batch_times[b - 1]) is at most `horizon`; (0, 0) if
    none fits."""
    best, t_best = 0.0, 0.0
    for b, t in enumerate(batch_times, 1):
        if 0 < t <= horizon and b / t > best:
            best, t_best = b / t, t
    return best, t_best


def capacity_index(batch_times: Sequence[float]):
    """`capacity` for every horizon at once, when the batch times are positive and
    nondecreasing in b (expected times are): (the times, and per prefix b = 1..k the best
    rate and its batch's time), so that capacity(batch_times, h) is entry k - 1 with k =
    bisect_right(times, h) (k = 0: (0, 0)). None when the times are not so ordered."""
    best, t_best, prev = 0.0, 0.0, 0.0
    rates, times = [], []
    for b, t in enumerate(batch_times, 1):
        if not (t > 0 and t >= prev):
            return None
        prev = t
        if b / t > best:
            best, t_best = b / t, t
        rates.append(best)
        times.append(t_best)
    return list(batch_times), rates, times


def variant_capacities(dist, scales: Sequence[float], inflation: Sequence[float],
                       horizon: float) -> list[float]:  # fmt: skip
    """Each cost scale's capacity (`capacity`) for solo times `dist` x scale, with batch
    inflation c(b) = inflation[b - 1]: what the variant choice computes from a learned
    distribution (bench/utility.py reports it for the workloads' laws)."""
    from orloj_rt.engine import IMPLEMENTATIONS

    mod = next(m for m in IMPLEMENTATIONS.values() if isinstance(dist, m.Distribution))
    infl = mod.Inflation.from_table([float(c) for c in inflation])
    out = []
    for s in scales:
        d = scaled(dist, s)
        out.append(capacity([mod.batch_mean([d] * b, infl)
                             for b in range(1, len(inflation) + 1)], horizon)[0])
    return out


def wants_utility(params: dict) -> bool:
    """Whether orloj's params ask for anything the plain engine policy lacks."""
    if len(params.get("variants") or ()) > 1:
        return True
    if any(w != 1.0 for w in (params.get("app_weights") or {}).values()):
        return True
    return bool(params.get("fairness")) or params.get("tier_weights") is not None \
        or params.get("horizon") is not None \
        or bool(params.get("priorities"))


class UtilityPolicy(Policy):
    """orloj maximising expected utility per unit of time (the module docstring)."""

    name = "orloj"

    def __init__(
        self,
        max_batch: int = DEFAULT_MAX_BATCH,
        alpha: float = DEFAULT_ALPHA,
        inflation: Sequence[float] | None = None,
        *,
        variants=(),
        app_weights: dict | None = None,
        tier_weights=None,
        priorities: bool = True,
        fairness: float = 0.0,
        horizon: float = 0.5,
        target: float = 0.5,
        eta: float = 0.05,
        choice: str = "capacity",
        reserve: float = 0.3,
        min_accuracy: float = 0.0,
        engine_cls=None,
        **engine_params,
    ):
        """`engine_cls`: the engine policy class (default: the active engine's
        OrlojPolicy; bench/sched_overhead.py times both engines)."""
        self._variants = checked_variants(variants)
        if not self._variants:
            self._variants = [VariantSpec(None, 1.0, 1.0)]
        self._has_variants = self._variants[0].name is not None
        kw = dict(max_batch=max_batch, alpha=alpha, **engine_params)
        if inflation is not None:
            kw["inflation"] = list(inflation)
        engine_cls = OrlojPolicy if engine_cls is None else engine_cls
        self._batch_mean = sys.modules[engine_cls.__module__].batch_mean
        self._engines = [engine_cls(**kw) for _ in self._variants]
        self._e0 = self._engines[0]
        self._c1 = float(self._e0.inflation.table[0])
        self._app_w = {str(a): float(w) for a, w in (app_weights or {}).items()}
        for a, w in self._app_w.items():
            if not (w > 0 and math.isfinite(w)):
                raise ValueError(f"app_weights.{a}: {w!r} is not a positive number")
        self._tier_w = tier_weight_table(tier_weights)
        self._priorities = bool(priorities)
        self._fairness = float(fairness)
        if not (self._fairness >= 0 and math.isfinite(self._fairness)):
            raise ValueError(f"fairness must be a number >= 0 (0 = off), got {fairness!r}")
        # base app -> the tiers it has engine apps for; request id -> its engine app
        self._tiers: dict[str, set[int]] = {}
        # per variant: the apps whose distribution it learned itself
        self._own: list[set[str]] = [set() for _ in self._variants]
        self._scale_est: list[float] = [
            v.cost_scale if v.cost_scale is not None else UNKNOWN_COST_SCALE
            for v in self._variants
        ]
        self._cheapest = min(range(len(self._variants)), key=lambda k: (self._scale_est[k], k))
        # fairness: decayed (asked, finished) per base app, and its multiplier
        self._fair: dict[str, list[float]] = {}
        self._mult: dict[str, float] = {}
        self._outcomes = 0
        self.last_variant: int | None = None
        # the variant choice: the typical SLO (smoothed) and each variant's full batch time
        self._horizon = float(horizon)
        if not self._horizon > 0:
            raise ValueError(f"horizon must be > 0 (a share of the SLO), got {horizon!r}")
        self._slo = 0.0
        self._rate = 0.0  # arrivals per second: 1 / the smoothed mean gap
        self._gap = 0.0
        self._last_arrival: float | None = None
        # per variant: the expected time of a batch of b (index b - 1), from one app's
        # distribution; and its capacity (requests per second) at the last horizon
        self._tb: list[list[float]] = [[] for _ in self._variants]
        self._tb_index: list = [None] * len(self._variants)  # capacity_index(self._tb[k])
        self._cap: list[float] = [0.0] * len(self._variants)
        self._cap_time: list[float] = [0.0] * len(self._variants)  # its batch's time
        self._cap_at = -1.0  # the horizon the capacities were computed for
        self._sus = 0  # the sustainable variant at the last price
        self._lift = 1.0  # the queue's factor on the price
        self._target = float(target)
        self._eta = float(eta)
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
        self._choice = choice
        # the reservation for higher tiers (the module docstring)
        self._reserve = float(reserve)
        if not (self._reserve >= 0.0 and math.isfinite(self._reserve)):
            raise ValueError(f"reserve must be a number >= 0 (0 = off), got {reserve!r}")
        self._tiered: set[int] = set()  # queued requests of a tier > 0
        self._top_slo = 0.0  # their SLO, smoothed
        self._top_last = -math.inf  # the last one's arrival
        self._limit = 0  # the batch limit the engines have now
        # the accuracy floor (accuracy_floor.py): only with variants to choose from
        self._floor = (AccuracyFloor(min_accuracy, [v.accuracy for v in self._variants])
                       if min_accuracy and len(self._variants) > 1 else None)  # fmt: skip
        self._by_cost = sorted(range(len(self._variants)),
                               key=lambda k: (self._scale_est[k], k))
        self._order = sorted(range(len(self._variants)),
                             key=lambda k: (-self._variants[k].accuracy, self._scale_est[k], k))
        # The plain path: one engine, no variants, no app weights, no fairness, and no
        # request of a tier > 0 yet: the decision is the engine's own, so decide and
        # remove are the engine's methods (no wrapper frame), and a tier-0 request goes
        # straight to the engine (its default weight, 1, is the request's). The first
        # request of a tier > 0 ends it for good (_leave_plain).
        self._plain = (len(self._engines) == 1 and not self._has_variants
                       and not self._app_w and not self._fairness)  # fmt: skip
        if self._plain:
            self.decide = self._e0.decide
            self.remove = self._e0.remove

    def __getattr__(self, name):
        # what the full model's engine says of itself (theta, max_apps, queued, ...)
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._e0, name)

    # ------------------------------------------------------------------ configuration
    @property
    def max_batch(self) -> int:
        return self._e0.max_batch

    @property
    def variants(self) -> list[VariantSpec]:
        return list(self._variants)

    @property
    def tier_weights(self) -> list[float]:
        return list(self._tier_w)

    @property
    def apps(self) -> list[str]:
        return [a for a in self._e0.apps if TIER_SEP not in a]

    def weight_of(self, app: str, priority: int = 0) -> float:
        """The weight a request of `app` and tier `priority` earns now."""
        return self._app_w.get(app, 1.0) * self._tier_w[priority] * self._mult.get(app, 1.0)

    def multiplier(self, app: str) -> float:
        """`app`'s fairness multiplier (1 when fairness is off or it is not adjusted)."""
        return self._mult.get(app, 1.0)

    def set_app_limits(self, max_apps: int, app_idle_s: float) -> None:
        for e in self._engines:
            e.set_app_limits(max_apps, app_idle_s)

    def knows(self, app: str) -> bool:
        return self._e0.knows(app)

    def forget_app(self, app: str) -> bool:
        names = [app] + [self._alias(app, k) for k in sorted(self._tiers.get(app, ()))]
        if any(self._e0.queued(n) for n in names if self._e0.knows(n)):
            return False
        for e in self._engines:
            for n in names:
                e.forget_app(n)
        self._tiers.pop(app, None)
        for own in self._own:
            own.discard(app)
        return True

    def set_patience(self, patience: float) -> None:
        """The engines' fallback patience (orloj_rt/engine/pure/orloj.py)."""
        for e in self._engines:
            e.set_patience(patience)

    def set_epsilon(self, epsilon: float) -> None:
        """The engines' drop threshold (orloj_rt/engine/pure/orloj.py)."""
        for e in self._engines:
            e.set_epsilon(epsilon)

    def set_price_share(self, price_share: float) -> None:
        """The engines' price share in their choice of a batch (step 3b of
        orloj_rt/engine/pure/orloj.py; not the variant choice's price)."""
        for e in self._engines:
            e.set_price_share(price_share)

    def next_wakeup(self, now: float) -> float | None:
        """The earliest time an engine's fallback held back by patience may run."""
        times = [w for w in (e.next_wakeup(now) for e in self._engines) if w is not None]
        return min(times) if times else None

    def set_default_distribution(self, dist) -> None:
        for k, e in enumerate(self._engines):
            d = scaled(dist, self._scale_est[k])
            e.set_default_distribution(d)
            self._full_batch_time(k, d)

    def _full_batch_time(self, k: int, dist) -> None:
        """Variant k's expected batch times for every size, from one app's distribution."""
        infl = self._e0.inflation
        mean = self._batch_mean
        self._tb[k] = [mean([dist] * b, infl) for b in range(1, self.max_batch + 1)]
        self._tb_index[k] = capacity_index(self._tb[k])
        self._cap_at = -1.0

    def _capacities(self, horizon: float) -> list[float]:
        """Each variant's throughput, max over b of b / T_b among the batches that take
        at most `horizon`, recomputed when the horizon moved by more than 10%."""
        if self._cap_at > 0 and abs(horizon - self._cap_at) <= 0.1 * self._cap_at:
            return self._cap
        for k, tb in enumerate(self._tb):
            index = self._tb_index[k]
            if index is None:
                self._cap[k], self._cap_time[k] = capacity(tb, horizon)
                continue
            n = bisect_right(index[0], horizon)  # the batches that fit: b = 1..n
            self._cap[k], self._cap_time[k] = (index[1][n - 1], index[2][n - 1]) if n \
                else (0.0, 0.0)
        self._cap_at = horizon
        return self._cap

    def set_distribution(self, app: str, dist, variant: int | None = None) -> None:
        """`app`'s distribution: of variant `variant` (learned from the batches it ran),
        or with None of the full model, which every variant that has not learned `app`
        follows, scaled by its cost."""
        if variant is not None and variant > 0:
            self._own[variant].add(app)
            self._install(variant, app, dist)
            self._full_batch_time(variant, dist)
            return
        self._install(0, app, dist)
        if len(self._engines) > 1:
            self._full_batch_time(0, dist)
        for k in range(1, len(self._engines)):
            if app not in self._own[k]:
                d = scaled(dist, self._scale_est[k])
                self._install(k, app, d)
                self._full_batch_time(k, d)

    def _install(self, k: int, app: str, dist) -> None:
        e = self._engines[k]
        e.set_distribution(app, dist)
        for t in self._tiers.get(app, ()):
            e.set_distribution(self._alias(app, t), dist)

    def distribution(self, app: str, variant: int = 0):
        return self._engines[variant].distribution(app)

    def observe_solo(self, app: str, solo_time: float, variant: int = 0) -> None:
        e = self._engines[variant]
        e.observe_solo(app, solo_time)
        for t in self._tiers.get(app, ()):
            e.observe_solo(self._alias(app, t), solo_time)

    def observe_batch(self, apps, exec_time, variant: int = 0) -> None:
        if len(apps) == 1:
            self.observe_solo(apps[0], float(exec_time) / self._c1, variant)

    # ------------------------------------------------------------------ the queue
    @staticmethod
    def _alias(app: str, tier: int) -> str:
        return app if tier == 0 else f"{app}{TIER_SEP}{tier}"

    def _file(self, app: str, priority: int) -> str:
        """The engine app of a request of `app` and tier `priority` (made on first use:
        `app`'s distributions, the tier's weight)."""
        if priority == 0 or not self._priorities:
            name = app
            if not self._e0.knows(app):
                w = self.weight_of(app, 0)
                for e in self._engines:
                    e.set_app_weight(app, w)  # also admits it, from the default prior
            return name
        tiers = self._tiers.setdefault(app, set())
        name = self._alias(app, priority)
        if priority not in tiers or not self._e0.knows(name):
            tiers.add(priority)
            w = self.weight_of(app, priority)
            for e in self._engines:
                e.set_distribution(name, e.distribution(app))
                e.set_app_weight(name, w)
        return name

    def _leave_plain(self) -> None:
        self._plain = False
        del self.decide, self.remove  # the class's methods again

    def enqueue(self, req_id, app, arrival, deadline, hint=None, priority=0) -> None:
        if self._plain:
            if priority == 0 and type(priority) is int:
                self._e0.enqueue(req_id, app, arrival, deadline, hint)
                return
            priority = check_priority(priority, len(self._tier_w))
            if self._priorities:
                self._leave_plain()
        priority = check_priority(priority, len(self._tier_w))
        name = self._file(app, priority)
        if priority and self._priorities:
            slo = float(deadline) - float(arrival)
            self._top_slo = 0.9 * self._top_slo + 0.1 * slo if self._top_slo else slo
            self._top_last = float(arrival)
            self._tiered.add(int(req_id))
        self._e0.enqueue(req_id, name, arrival, deadline, hint)
        if len(self._engines) > 1:
            for e in self._engines[1:]:
                e.enqueue(req_id, name, arrival, deadline, hint)
            arrival = float(arrival)
            slo = float(deadline) - arrival
            self._slo = 0.98 * self._slo + 0.02 * slo if self._slo else slo
            if self._last_arrival is not None:  # the mean gap, smoothed; the rate is 1 / it
                gap = max(arrival - self._last_arrival, 0.0)
                self._gap = 0.99 * self._gap + 0.01 * gap if self._gap else gap
                self._rate = 1.0 / self._gap if self._gap > 0 else 0.0
            self._last_arrival = arrival

    def remove(self, req_id) -> None:
        self._e0.remove(req_id)
        self._tiered.discard(req_id)
        for e in self._engines[1:]:
            e.remove(req_id)

    def __len__(self) -> int:
        return len(self._e0)

    def _take(self, ids, skip: int | None = None) -> None:
        """Removes `ids` from every engine but `skip` (which already let them go)."""
        if not ids:
            return
        if skip is None:
            self._e0.remove_many(ids, self._engines[1:])
            return
        rest = [e for k, e in enumerate(self._engines) if k != skip]
        if rest:
            rest[0].remove_many(ids, rest[1:])

    # ------------------------------------------------------------------ decisions
    def _reservation(self, now: float) -> None:
        """While requests of a tier > 0 arrive (the last within RESERVE_WINDOW of their
        SLOs) and none is queued, a batch takes at most `reserve` x their SLO (expected,
        full model): lower tiers' batches stay short enough for a higher-tier request
        arriving meanwhile to wait for them. Off (no limit) otherwise."""
        limit = 0
        if (self._reserve and not self._tiered and self._top_slo > 0
                and now - self._top_last <= RESERVE_WINDOW * self._top_slo):  # fmt: skip
            budget = self._reserve * self._top_slo
            limit = 1
            for b, t in enumerate(self._tb[0], 1):
                if t <= budget:
                    limit = b
        if limit != self._limit:
            self._limit = limit
            for e in self._engines:
                e.set_batch_limit(limit)

    def decide(self, now: float) -> Decision:
        if self._top_slo:
            self._reservation(float(now))
            d = self._decide(now)
            if self._tiered:
                for rid in d.batch:
                    self._tiered.discard(rid)
                for rid in d.dropped:
                    self._tiered.discard(rid)
            return d
        return self._decide(now)

    def _decide(self, now: float) -> Decision:
        if len(self._engines) == 1:
            d = self._e0.decide(now)
            v = 0 if self._has_variants else None
            self.last_variant = v
            return Decision(d.batch, d.dropped, [], v)
        auth = self._cheapest
        dropped = self._engines[auth].drop_hopeless(now)
        self._take(dropped, skip=auth)
        best_k, best_u, best_ids = self._choose(now)
        if not best_ids:
            self.last_variant = None
            return Decision([], list(dropped), [], None)
        self._take(best_ids)
        if self._floor is not None:
            self._floor.dispatched(best_k, len(best_ids))
        self.last_variant = best_k
        return Decision(list(best_ids), list(dropped), [], best_k)

    def price(self, n: int) -> float | None:
        """The price of a second of the worker's time, in utility (the module docstring):
        0 while the most accurate variant keeps up with the arrivals; between the two
        variants whose capacities straddle the arrival rate, what a second buys when it
        is spent serving requests with the cheaper one instead of the more accurate:
        (acc_a - acc_b) / (1/mu_a - 1/mu_b); None under overload (no variant keeps up,
        or the queue of `n` cannot drain within the horizon at the sustainable pace)."""
        budget = self._horizon * self._slo
        cap = self._capacities(budget)
        rate = self._rate
        order = self._order
        for i, k in enumerate(order):
            if cap[k] >= rate and cap[k] > 0:
                self._sus = k
                if n > cap[k] * budget:
                    return None
                if i == 0:
                    return 0.0
                a = order[i - 1]
                if cap[a] <= 0:
                    return 0.0
                d_acc = self._variants[a].accuracy - self._variants[k].accuracy
                d_time = 1.0 / cap[a] - 1.0 / cap[k]
                return d_acc / d_time if d_time > 0 else 0.0
        return None

    def _afford(self, k: int, score: float, ids):
        """A batch of variant k as the accuracy floor allows it: whole, or its first
        members (the score scaled by the share kept), or none."""
        if self._floor is None or not ids:
            return score, ids
        m = self._floor.allows(k, len(ids))
        if m >= len(ids):
            return score, ids
        return score * m / len(ids), list(ids)[:m]

    def _choose(self, now: float):
        """(variant, utility rate, ids): the variant whose batch gains the most,
        accuracy x expected weighted finishes less the price of its expected time
        (`price`); under overload, the most utility per unit of time."""
        n = len(self._e0)
        lam = None if self._choice == "rate" else self.price(n)
        if lam is not None and self._choice == "capacity":
            # the most accurate variant that keeps up with the arrivals and drains the
            # queue within the horizon, as loki-threshold chooses, if it has a batch
            budget = self._horizon * self._slo
            for k in self._order:
                if self._cap[k] >= self._rate and n <= self._cap[k] * budget:
                    score, ids = self._afford(k, *self._engines[k].evaluate(now))
                    if ids:
                        return k, score * self._variants[k].accuracy, ids
                    break
            lam = None
        if lam is not None:
            # the price also follows the queue (a dual ascent on the capacity): it
            # rises while more is queued than the sustainable variant drains in a share
            # of the horizon, and falls back to the fluid price below it
            target = self._target * self._cap[self._sus] * self._horizon * self._slo
            step = self._eta * (n / target - 1.0) if target > 0 else 0.0
            self._lift = min(LIFT_CAP, max(1.0, self._lift * math.exp(step)))
            lam = max(lam, LIFT_FLOOR) * self._lift
        best_k, best_g, best_ids, best_u = 0, -math.inf, [], 0.0
        if lam is None:
            # overload: the best utility rate. Cheapest first; a variant s times as
            # costly as one already evaluated (its distributions that one's scaled by s)
            # finishes each batch's members no more likely in s times the time, so its
            # rate is at most 1/s of that one's best: skipped when that cannot win.
            scales = self._scale_est
            work = 0.0  # the best score x cost scale so far
            for k in self._by_cost:
                if best_ids and self._variants[k].accuracy * work <= best_u * scales[k]:
                    continue
                score, ids = self._engines[k].evaluate(now)
                if not ids:
                    continue
                work = max(work, score * scales[k])  # (whole: it bounds costlier ones)
                score, ids = self._afford(k, score, ids)
                if not ids:
                    continue
                u = score * self._variants[k].accuracy
                if u > best_u or not best_ids:
                    best_k, best_u, best_ids = k, u, ids
            return best_k, best_u, best_ids
        for k, e in enumerate(self._engines):
            score, ids = self._afford(k, *e.evaluate(now))
            if not ids:
                continue
            u = score * self._variants[k].accuracy
            tb = self._tb[k]
            t = tb[min(len(ids), len(tb)) - 1] if tb else 1.0
            g = t * (u - lam)
            if g > best_g:
                best_k, best_g, best_ids, best_u = k, g, ids, u
        return best_k, best_u, best_ids

    # ------------------------------------------------------------------ fairness
    @property
    def wants_outcomes(self) -> bool:
        """Whether the serving core should call `observe_outcome` (fairness, a floor)."""
        return bool(self._fairness) or self._floor is not None

    def observe_outcome(self, app: str, finished: bool, variant: int | None = None) -> None:
        """A request of `app` was answered: `finished` in time or not (dropped, rejected,
        late), by a batch of `variant` (None: it never ran). Feeds fairness and the
        accuracy floor; a no-op with both off."""
        if self._floor is not None and variant is not None:
            self._floor.answered(variant, finished)
        if not self._fairness:
            return
        rec = self._fair.get(app)
        if rec is None:
            rec = self._fair[app] = [0.0, 0.0]
        decay = 0.5 ** (1.0 / FAIR_HALF)
        rec[0] = rec[0] * decay + 1.0
        rec[1] = rec[1] * decay + (1.0 if finished else 0.0)
        self._outcomes += 1
        if self._outcomes % FAIR_PERIOD == 0:
            self._adapt()

    def _adapt(self) -> None:
        asked = sum(r[0] for r in self._fair.values())
        done = sum(r[1] for r in self._fair.values())
        if asked <= 0 or len(self._fair) < 2:
            return
        mean = done / asked
        if mean <= 0:
            return
        changed = []
        for app, (a, d) in self._fair.items():
            if a <= 0:
                continue
            r = d / a
            if abs(r - mean) <= FAIR_BAND * mean:
                continue
            m = self._mult.get(app, 1.0) * math.exp(self._fairness * (mean - r) / mean)
            m = min(FAIR_CAP, max(1.0 / FAIR_CAP, m))
            self._mult[app] = m
            changed.append(app)
        for app in changed:
            self._reweigh(app)

    def _reweigh(self, app: str) -> None:
        names = [(app, 0)] + [(self._alias(app, t), t) for t in self._tiers.get(app, ())]
        for name, t in names:
            if not self._e0.knows(name):
                continue
            w = self.weight_of(app, t)
            for e in self._engines:
                e.set_app_weight(name, w)

    def relative_finish_rates(self) -> dict[str, float]:
        """Each app's decayed finished / asked (fairness on only)."""
        return {a: (d / n if n > 0 else 0.0) for a, (n, d) in self._fair.items()}


class LokiThresholdPolicy(UtilityPolicy):
    """Loki-style accuracy scaling (the module docstring): the whole model at the most
    accurate variant that keeps up, chosen from the arrival rate and the queue."""

    name = "loki-threshold"

    def __init__(self, *args, headroom: float = 1.0, duty: float = 0.5, **kwargs):
        kwargs.setdefault("priorities", False)
        super().__init__(*args, **kwargs)
        self._headroom = float(headroom)
        self._duty = float(duty)
        if not (self._headroom > 0 and 0 < self._duty <= 1):
            raise ValueError(f"headroom must be > 0 and duty in (0, 1], got {headroom!r}, "
                             f"{duty!r}")

    def pick(self) -> int:
        """The most accurate variant whose profiled capacity (batches within `duty` x
        the SLO, Nexus's and Loki's duty cycle) covers the arrival rate with `headroom`
        and whose queue drains within that time; the cheapest if none does."""
        n = len(self)
        horizon = self._duty * self._slo
        cap = self._capacities(horizon)
        for k in self._order:
            if cap[k] >= self._headroom * self._rate and n <= cap[k] * horizon:
                return k
        return self._cheapest

    def decide(self, now: float) -> Decision:
        if len(self._engines) == 1:
            return super().decide(now)
        k = self.pick()
        d = self._engines[k].decide(now)
        self._take(d.dropped, skip=k)
        self._take(d.batch, skip=k)
        self.last_variant = k if d.batch else None
        return Decision(list(d.batch), list(d.dropped), [], k if d.batch else None)


def orloj_factory(**params):
    """`orloj`: the engine's policy, or UtilityPolicy when the params ask for more."""
    if wants_utility(params):
        return UtilityPolicy(**params)
    for key in ("variants", "app_weights", "tier_weights", "fairness", "priorities"):
        params.pop(key, None)
    return OrlojPolicy(**params)
