"""`orloj-step`: step-level batching with distribution-aware admission, dropping and ending.

The batch of an iterative model is re-formed at every step boundary (the step model is in
orloj_rt/policies/step_interface.py). orloj-step decides who joins, who is dropped from
the queue and which running members are ended, from each app's distribution F of solo
work (the whole request's solo time).

What a member's chance is. A member that has run k steps without finishing, with slack s
(deadline - now), finishes on time if every remaining step has b members when it needs at
most m = floor(s / (c(b) * step)) more steps. With N = ceil(X / step) the steps it needs,

    P(b) = P(N <= k + m | N > k) = (F((k + m) step) - F(k step)) / (1 - F(k step)),

the conditional distribution given the work done (`Distribution.conditional_cdf`). Its
*stay*, E[min(N - k, m) | N > k], is the steps it will still occupy a batch place: until
it is done or its slack runs out, after which it is ended.

What a member costs the others. While member i runs, every step of the batch takes
c(b) * step instead of c(b - 1) * step, so another member k loses dc = (c(b) - c(b - 1))
* step of slack for each step they share: at most i's stay, and at most the m_k steps k
can still run (the steps that matter are those of the case where k needs all of them).
The marginal value of i's place in a batch of b is its own chance minus what it takes:

    V_i = P_i(b) - sum over k != i of [P_k(s_k) - P_k(s_k - min(stay_i, m_k) dc)]

with every P_k at size b (the difference is exact in the step model when it crosses a
whole step, and 0 when the slack lost fits in what is left of one).

The decision at a step boundary:

1. **End** every running member whose chance is at most `end_epsilon` (0.01): first
   those hopeless even alone, then, the least likely first, those hopeless at the size of
   the batch; then, worst first, one at a time, every member whose V_i < 0: it costs the
   others more expected finishes than it can bring (a long member with little chance in a
   batch of tight ones).
2. **Drop** every queued request whose chance alone, now, is below `epsilon` (0.05).
3. **Admit** queued requests in decreasing order of P_j(b + 1) / stay_j, the expected
   finishes per step of batch place used (ties: the most slack first), each if V_j > 0 at
   the resulting size b + 1 (and P_j >= `theta`, 0 by default), until the batch is full
   (`max_batch`).

Every chance assumes that the batch keeps its size until the member leaves: pessimistic
when members are about to leave, optimistic when more will join. The next boundary
corrects it, one step later.

Why no fixed threshold. A reference policy that admits a request when its chance at the
resulting size is >= theta needs a theta that moves with the workload, the SLO and the
load (the issue found 0.5-0.9). The marginal test needs none: the bar a newcomer must pass
is the slack it takes from the members already running. It is near 0 when the batch is
small or its members have slack to spare, so everyone joins under capacity; it rises when
tight members share the batch, or when the batch is large (overload). Under overload the
admission order makes the batch's places go to the candidates that use them best, the
freshest for one app. docs/results.md measures it against a per-cell tuned theta.

Priorities (issue 17). A request of tier k weighs `tier_weights[k]` (default 10^k, as
orloj's, orloj_rt/policies/utility.py): its chance counts that many finishes in V_i, in
what it takes from the others, and in the admission order (w_j P_j(b + 1) / stay_j), so a
top-tier request joins before, and is ended after, lower ones. Weighted members are
remembered by id while they run (at most WEIGHT_MEMORY; beyond, the weights of members no
longer seen at a boundary are forgotten).

A runtime scheduler drives it through `StepPolicy` (orloj_rt/policies/step_interface.py):
`step_boundary(now, running)` at each step boundary of a worker, with the members still
running and the steps each has run. All arithmetic at a boundary is table look-ups: per
app, F at every whole step (`StepLaw`), rebuilt every REFRESH_SAMPLES observations; a
boundary costs O(b^2 + queue) in Python (b: the batch's members).

Apps. The per-app state (a distribution and its step tables) is bounded as orloj's is
(orloj_rt/engine/apps.py): at most `max_apps` live apps (beyond, requests share the
overflow app "~other"), and an app with nothing queued that has not been seen for
`app_idle_s` on the policy's clock (default 0: never) is forgotten when a new app
arrives. The runtime's scheduler switches both off and forgets idle apps itself.

Learning. A finished member reports its work (steps * step): an exact sample. An ended
member only says X > steps * step; adding nothing would bias F short (the long ones are
the ended ones), so it adds a draw from F given X > w, F^-1(F(w) + u (1 - F(w))), with u
from a deterministic low-discrepancy sequence. A dropped request never ran: no sample.
"""

from __future__ import annotations

import math

from orloj_rt.engine import DEFAULT_ALPHA, DEFAULT_MAX_BATCH, check_probability
from orloj_rt.engine.apps import (
    DEFAULT_APP_IDLE_S,
    DEFAULT_MAX_APPS,
    AppTable,
)
from orloj_rt.policies.step_base import DEFAULT_STEP, QueuedStepPolicy

DEFAULT_EPSILON = 0.05
DEFAULT_END_EPSILON = 0.01
DEFAULT_THETA = 0.0
ORDERS = ("density", "deadline")
#: The step tables are rebuilt after this many new samples (a rebuild is O(support/step)).
REFRESH_SAMPLES = 16
#: The most steps a request's support may span: the tables hold one entry per step.
MAX_TABLE_STEPS = 1_000_000

_FLOOR_TOLERANCE = 1e-9  # s / (c step) a hair below a whole number is that number
TAIL_EPS = 1e-9  # P(N > k) at or below this: the member has outlived the distribution
_GOLDEN = 0.6180339887498949


class StepLaw:
    """One app's distribution on the step grid, for O(1) probabilities at a boundary.

    g[j] = F(j * step), the chance that N <= j, for j = 0..top (g[top] = 1: top steps cover
    the support); h[j] = sum of (1 - g[t]) for t < j, so that
    E[min(N - k, m) | N > k] = (h[k + m] - h[k]) / (1 - g[k]).
    """

    __slots__ = ("dist", "samples", "g", "h", "top")

    def __init__(self, dist, step: float):
        top = int(math.ceil(dist.support()[1] / step)) + 1
        if top > MAX_TABLE_STEPS:
            raise ValueError(
                f"the step's solo work ({step!r} s) is too small for the distribution, whose "
                f"support reaches {dist.support()[1]!r} s: more than {MAX_TABLE_STEPS} steps"
            )
        g = [dist.cdf(j * step) for j in range(top + 1)]
        g[top] = 1.0
        h = [0.0] * (top + 2)
        for j in range(top + 1):
            h[j + 1] = h[j] + (1.0 - g[j])
        self.dist = dist
        self.samples = dist.samples_added
        self.g = g
        self.h = h
        self.top = top

    @classmethod
    def point(cls, n: int) -> StepLaw:
        """The law of a request known to need exactly n steps (the clairvoyant oracle's)."""
        law = cls.__new__(cls)
        law.dist = None
        law.samples = 0
        law.top = n
        law.g = [0.0] * n + [1.0]
        law.h = [float(j) for j in range(n + 1)] + [float(n)]
        return law

    def prob(self, k: int, m: int) -> float:
        """P(N <= k + m | N > k): done within m more steps after k."""
        if m <= 0:
            return 0.0
        tail = 1.0 - self.g[k] if k < self.top else 0.0
        if not tail > TAIL_EPS:
            return self._beyond_prob(m)
        j = k + m
        return ((1.0 if j >= self.top else self.g[j]) - self.g[k]) / tail

    def stay(self, k: int, m: int, skip: int = 0) -> float:
        """E[min(N - k - skip, m), or 0 if negative | N > k]: the steps still run, to the
        end or m, after `skip` steps whose outcome is unseen (RunningMember.unseen)."""
        if m <= 0:
            return 0.0
        tail = 1.0 - self.g[k] if k < self.top else 0.0
        if not tail > TAIL_EPS:
            return self._beyond_stay(m)
        end = self.top + 1
        return (self.h[min(k + skip + m, end)] - self.h[min(k + skip, end)]) / tail

    # A member that has outlived the distribution's support (or its last 1e-9 of mass) is
    # longer than anything seen, and the distribution says nothing of how much is left;
    # returning 0 would end it whatever its slack, and, since an ended member adds no
    # sample there, the app would never learn that longer requests exist. Beyond the
    # support its remaining steps are taken as memoryless with the distribution's mean:
    # "as far from done as a fresh request".
    def _mean_steps(self) -> float:
        return max(1.0, self.h[self.top + 1])  # sum of P(N > t) = E[N]

    def _beyond_prob(self, m: int) -> float:
        return 1.0 - (1.0 - 1.0 / self._mean_steps()) ** m if self._mean_steps() > 1 else 1.0

    def _beyond_stay(self, m: int) -> float:
        mu = self._mean_steps()
        return mu * self._beyond_prob(m) if mu > 1 else 1.0

    def beyond_mean_steps(self) -> float:
        """The mean remaining steps assumed beyond the support (above)."""
        return self._mean_steps()


#: weighted members remembered by id (see the module docstring)
WEIGHT_MEMORY = 4096


class OrlojStepPolicy(QueuedStepPolicy):
    name = "orloj-step"

    def __init__(
        self,
        max_batch: int = DEFAULT_MAX_BATCH,
        alpha: float = DEFAULT_ALPHA,
        inflation=None,
        step: float = DEFAULT_STEP,
        epsilon: float = DEFAULT_EPSILON,
        end_epsilon: float = DEFAULT_END_EPSILON,
        theta: float = DEFAULT_THETA,
        marginal: bool = True,
        order: str = "density",
        learn: bool = True,
        max_apps: int = DEFAULT_MAX_APPS,
        app_idle_s: float = DEFAULT_APP_IDLE_S,
        tier_weights=None,
    ):
        from orloj_rt.policies.utility import tier_weight_table

        super().__init__(max_batch, alpha, inflation, step)
        self._tier_w = tier_weight_table(tier_weights)
        self._weights: dict[int, float] = {}  # running weighted members: id -> weight
        self.epsilon = check_probability("epsilon", epsilon)
        self.end_epsilon = check_probability("end_epsilon", end_epsilon)
        self.theta = check_probability("theta", theta)
        if order not in ORDERS:
            raise ValueError(f"unknown admission order {order!r}; choose one of {ORDERS}")
        self.marginal = bool(marginal)
        self.order = order
        self.learn = bool(learn)
        self._apps = AppTable(max_apps, app_idle_s)  # the live apps: _dists' keys and more
        self._queued_by_app: dict[str, int] = {}  # live app -> its queued requests
        self._dists: dict = {}
        self._default = None
        self._laws: dict[str, StepLaw] = {}
        self._cs = [c * self._step for c in self._c]  # a step of b members takes _cs[b-1]
        self._u = 0.0

    def set_step_times(self, times) -> None:
        """The wall time of a step of b members, `times[b - 1]` (StepPolicy): deadlines
        are counted in these; the distributions stay in units of solo work."""
        times = [float(t) for t in times]
        if len(times) != self._max_batch or not all(t > 0 and math.isfinite(t) for t in times):
            raise ValueError(f"need {self._max_batch} finite step times > 0, got {times!r}")
        self._cs = times

    # ------------------------------------------------------------- apps
    @property
    def apps(self) -> list[str]:
        """The live apps (those this policy keeps state for)."""
        return self._apps.live()

    @property
    def apps_evicted(self) -> int:
        return self._apps.evicted

    def set_app_limits(self, max_apps: int, app_idle_s: float) -> None:
        """New limits (orloj_rt/engine/apps.py); (0, 0) hands them to the caller, which
        then forgets apps itself (`forget_app`), as the runtime's scheduler does."""
        self._apps.set_limits(max_apps, app_idle_s)

    def knows(self, app: str) -> bool:
        return app in self._apps

    def forget_app(self, app: str) -> bool:
        """Forgets `app` and all its state, if it is live and has nothing queued; says
        whether it did."""
        if app not in self._apps or app in self._queued_by_app:
            return False
        self._apps.remove(app)
        self._free(app)
        return True

    def _free(self, app: str) -> None:
        self._dists.pop(app, None)
        self._laws.pop(app, None)

    def _busy(self, app: str, _index: int) -> bool:
        return app in self._queued_by_app

    def _live(self, app: str, touch: bool = False) -> str:
        """The app whose state `app`'s requests use: itself once admitted, or the overflow
        app when the cap is reached. A new app first makes the idle apps that are due
        forgotten."""
        t = self._apps
        if app in t.index:
            if touch:
                t.touch(app)
            return app
        for name, _ in t.sweep(self._busy):
            self._free(name)
        return t.admit(app)[0]

    def _app_of(self, app, arrival: float) -> str:
        self._apps.tick(arrival)
        name = self._live(app, touch=True)
        self._queued_by_app[name] = self._queued_by_app.get(name, 0) + 1
        return name

    def _left(self, req) -> None:
        n = self._queued_by_app.get(req.app, 0) - 1
        if n > 0:
            self._queued_by_app[req.app] = n
        else:
            self._queued_by_app.pop(req.app, None)

    # ------------------------------------------------------------- distributions
    def set_default_distribution(self, dist) -> None:
        """Called before serving with the prior of solo work; apps seen later copy it."""
        self._default = dist.copy()

    def set_distribution(self, app: str, dist) -> None:
        """Gives `app` its own distribution; idle eviction spares it from then on."""
        name = self._live(app, touch=True)
        self._dists[name] = dist.copy()
        self._laws.pop(name, None)
        if name == app:
            self._apps.pin(name)

    def distribution(self, app: str):
        """The distribution of `app`'s solo work that this policy has learned."""
        name = self._live(app)
        d = self._dists.get(name)
        if d is None:
            if self._default is None:
                raise ValueError(
                    "orloj-step needs a distribution: call set_default_distribution(dist) first"
                )
            d = self._dists[name] = self._default.copy()
        return d

    def law(self, app: str) -> StepLaw:
        """`app`'s step tables, rebuilt every REFRESH_SAMPLES new samples."""
        name = self._live(app)
        law = self._laws.get(name)
        if law is None or law.dist.samples_added - law.samples >= REFRESH_SAMPLES:
            law = self._laws[name] = StepLaw(self.distribution(name), self._step)
        return law

    def _law_of(self, req_id: int, app: str) -> StepLaw:
        """The law a request's chances come from: its app's (the oracle: its own)."""
        return self.law(app)

    def chance(self, app: str, steps: int, slack: float, b: int) -> float:
        """P(done by the deadline) for a member of `app` with `steps` done and `slack`
        left, if every remaining step has b members."""
        return self.law(app).prob(steps, self._steps_left(slack, b))

    def _steps_left(self, slack: float, b: int) -> int:
        return int(math.floor(slack / self._cs[b - 1] + _FLOOR_TOLERANCE))

    def observe_finished(self, app, steps) -> None:
        """Called when a member finished after `steps` steps: an exact sample."""
        if self.learn:
            self.distribution(self._live(app, touch=True)).add(steps * self._step)

    def observe_ended(self, app, steps) -> None:
        """Called when this policy ended a member: X > steps * step, a censored sample,
        replaced by a draw from the conditional tail so that F does not lose its tail."""
        if not self.learn:
            return
        app = self._live(app, touch=True)
        d = self.distribution(app)
        fw = d.cdf(steps * self._step)
        if not 1.0 - fw > TAIL_EPS:
            # it outlived every sample: a sample beyond w, at the memoryless
            # extrapolation's mean (StepLaw), so that F learns that longer requests exist
            d.add((steps + self.law(app).beyond_mean_steps()) * self._step)
            return
        self._u = (self._u + _GOLDEN) % 1.0
        d.add(d.quantile(fw + self._u * (1.0 - fw)))

    # ------------------------------------------------------------- the decision
    def enqueue(self, req_id, app, arrival, deadline, hint=None, priority=0) -> None:
        if priority and priority >= len(self._tier_w):
            raise ValueError(f"priority {priority!r} is out of range: a tier is an integer "
                             f"in 0..{len(self._tier_w) - 1} (tier_weights gives "
                             f"{len(self._tier_w)} tier(s))")
        super().enqueue(req_id, app, arrival, deadline, hint, priority)

    def _weight(self, rid: int) -> float:
        req = self._requests.get(rid)
        if req is not None:
            return self._tier_w[req.priority]
        return self._weights.get(rid, 1.0)

    def step_boundary(self, now, running):
        """Called at each step boundary of a worker: end, drop, admit (module docstring)."""
        self._apps.tick(now)
        # a member: [id, law, steps seen done, slack, steps unseen]: its chances count
        # the unseen steps as steps it may finish in (RunningMember.unseen)
        members = [[m.id, self._law_of(m.id, m.app), m.steps - m.unseen, m.deadline - now,
                    m.unseen] for m in running]  # fmt: skip
        if len(self._weights) > WEIGHT_MEMORY:
            here = {m.id for m in running}
            self._weights = {r: w for r, w in self._weights.items() if r in here}
        ended = self._end(members)
        dropped, candidates = self._scan(now, len(members))
        joined = self._admit(members, candidates)
        return self.decision(joined=joined, dropped=dropped, ended=ended)

    def _end(self, members: list) -> list[int]:
        """Removes from `members`, and returns, the members to end."""
        ended = []
        # the hopeless even alone, in one pass; then the lost at the batch's size, the
        # least likely first, one at a time (each one ended gives the others room)
        keep = []
        for mem in members:
            _, law, k, slack, u = mem
            if law.prob(k, u + self._steps_left(slack, 1)) <= self.end_epsilon:
                ended.append(mem[0])
            else:
                keep.append(mem)
        members[:] = keep
        b = len(members)
        while b > 1:
            chances = [law.prob(k, u + self._steps_left(slack, b))
                       for _, law, k, slack, u in members]  # fmt: skip
            low = min(range(b), key=chances.__getitem__)
            if chances[low] > self.end_epsilon:
                break
            ended.append(members.pop(low)[0])
            b -= 1
        while self.marginal and b > 1:
            cs = self._cs[b - 1]
            dc = cs - self._cs[b - 2]  # the slack each step of a member costs the others
            own = []
            stays = []
            left = []
            for _, law, k, slack, u in members:
                m = self._steps_left(slack, b)
                left.append(m)
                own.append(law.prob(k, u + m))
                stays.append(law.stay(k, m, u))
            worst = -1
            worst_value = 0.0
            wts = [self._weights.get(mem[0], 1.0) for mem in members] if self._weights \
                else None
            for i in range(b):
                # what the others would gain without i: the steps they share with it run
                # faster, for at most its stay and at most their own steps left
                taken = 0.0
                stay_i = stays[i]
                for j in range(b):
                    if j != i:
                        _, law, k, slack, u = members[j]
                        shared = stay_i if stay_i < left[j] else left[j]
                        gain = law.prob(k, u + self._floor((slack + shared * dc) / cs)) - own[j]
                        taken += gain * wts[j] if wts is not None else gain
                value = (own[i] * wts[i] if wts is not None else own[i]) - taken
                if value < worst_value:
                    worst_value = value
                    worst = i
            if worst < 0:
                break
            ended.append(members.pop(worst)[0])
            b -= 1
        return ended

    @staticmethod
    def _floor(x: float) -> int:
        return int(math.floor(x + _FLOOR_TOLERANCE))

    def _scan(self, now: float, b: int) -> tuple[list[int], list]:
        """One pass over the queue: drops the requests whose chance alone, now, is below
        epsilon, and returns the others as candidates in admission order."""
        dropped = []
        candidates = []
        full = b >= self._max_batch
        for key, rid in self._queue.head(len(self._requests)):
            req = self._requests[rid]
            law = self._law_of(rid, req.app)
            slack = req.deadline - now
            if law.prob(0, self._steps_left(slack, 1)) < self.epsilon:
                dropped.append(rid)
                continue
            if full:
                continue
            if self.order == "density":
                m = self._steps_left(slack, min(b + 1, self._max_batch))
                stay = law.stay(0, m)
                w = self._tier_w[req.priority] if req.priority else 1.0
                score = -w * law.prob(0, m) / stay if stay > 0.0 else 0.0
            else:
                score = key
            candidates.append((score, key, rid, law, slack))
        for rid in dropped:
            self._take(rid)
        # equal densities (chances that saturate at 1: a static model, or slack to spare)
        # go to the most slack first, which cannot block the batch's growth: the least
        # slack first would make every later newcomer fail the marginal test
        if self.order == "density":
            candidates.sort(key=lambda c: (c[0], -c[1], c[2]))
        else:
            candidates.sort(key=lambda c: (c[1], c[2]))
        return dropped, candidates

    def _admit(self, members: list, candidates: list) -> list[int]:
        """Admits candidates while the batch has places and each one's marginal value at
        the resulting size is positive."""
        b = len(members)
        joined = []
        for _, _, rid, law, slack in candidates:
            if b >= self._max_batch:
                break
            m = self._steps_left(slack, b + 1)
            p = law.prob(0, m)
            if not p > 0.0 or p < self.theta:
                continue
            w_new = self._weight(rid)
            if self.marginal and members:
                cs = self._cs[b]  # the step time with the newcomer
                dc = cs - self._cs[b - 1]
                stay_new = law.stay(0, m)
                taken = 0.0
                cb = self._cs[b - 1]
                for mid, mlaw, k, mslack, u in members:
                    # the member loses dc of slack for each step it shares with the
                    # newcomer: at most the newcomer's stay, at most its own steps left
                    m_k = self._steps_left(mslack, b)
                    shared = stay_new if stay_new < m_k else m_k
                    later = self._floor((mslack - shared * dc) / cb)
                    loss = mlaw.prob(k, u + m_k) - mlaw.prob(k, u + later)
                    taken += loss * self._weights.get(mid, 1.0) if self._weights else loss
                if not p * w_new > taken:
                    continue
            if w_new != 1.0:
                self._weights[rid] = w_new
            joined.append(rid)
            members.append([rid, law, 0, slack, 0])
            b += 1
        for rid in joined:
            self._take(rid)
        return joined


class ClairvoyantStepOraclePolicy(OrlojStepPolicy):
    """`oracle-step`: orloj-step knowing every request's true solo time (the simulator
    passes it as the `enqueue` hint). Each request's law is a point mass at its number of
    steps, so every chance is 0 or 1. An upper reference for step-level batching, as
    `oracle` is for whole batches; not a policy to ship."""

    name = "oracle-step"
    clairvoyant = True

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("learn", False)
        super().__init__(*args, **kwargs)
        self._needs: dict[int, int] = {}
        self._points: dict[int, StepLaw] = {}

    def enqueue(self, req_id, app, arrival, deadline, hint=None, priority=0) -> None:
        if hint is None or not float(hint) >= 0:
            raise ValueError(
                f"oracle-step needs each request's true solo time as its hint, got {hint!r}"
            )
        super().enqueue(req_id, app, arrival, deadline, hint)
        self._needs[int(req_id)] = max(1, math.ceil(float(hint) / self._step - _FLOOR_TOLERANCE))

    def _law_of(self, req_id: int, app: str) -> StepLaw:
        n = self._needs[req_id]
        law = self._points.get(n)
        if law is None:
            law = self._points[n] = StepLaw.point(n)
        return law
