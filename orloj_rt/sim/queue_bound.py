"""A bound that counts waiting: the finish rate of a Poisson stream on one worker that
never stops a batch, for every policy that does not know solo times.

The bounds of orloj_rt/sim/bounds.py let a request that arrives while the worker is busy
start at once; under light load they say little (a request that runs alone the moment
it arrives finishes with probability F(S), and they stop there). A worker that never
stops a batch makes a request that arrives during one wait for it, and the requests that
arrive during the same batch then wait for each other. This bound counts both, for:

- requests of one stream arriving as a Poisson process of `rate`, deadline arrival + S;
- one worker of speed 1, running a batch of b in c(b) x the max of its members' solo
  times, never stopping a batch and running each request once;
- solo times independent draws of one law (the sample's), which the policy may know,
  but not the draws until a batch ends;
- anything else on the worker: other streams or tiers only make batches longer. (A
  policy for the stream among others does no better than one for the stream alone that
  idles where the others ran: it can draw their solo times itself.)

**Groups.** The stream's requests that arrive during a batch of duration D are its
group; a member that has waited r when the batch ends has y = S - r left. From that
moment the group can do no better than as follows, whatever the policy does: its first
batch B (of k members; members from elsewhere in it only lengthen it) finishes member j
with probability P(c(k) M_k <= y_j), M_k the max of k solo times, and the members left
out start no earlier than when B ends. So, recursively, the group's expected finishes are
at most

    V_0(y) = sum_j F(y_j)                                   (each alone, at once)
    V_d(y) = max_B  sum_{j in B} P(c(|B|) M_|B| <= y_j) + E[V_{d-1}(y_rest - c(|B|) M_|B|)]

(V_1 in closed form: E[F(y - c(k) M_k)] per member left out, and for a size k the best B
takes the k members with the largest difference of the two terms; V_2 and V_3 try every
B and take the expectation over the duration at the lower ends of equal-probability
bins, which only overstates them.) The least of V_1, V_2, V_3 is used.

**Accounting.** A request that arrives while the worker idles finishes with probability
at most F(S). A batch of duration D therefore costs the stream psi(D) = rate D F(S) -
E[V(its group)] >= 0 expected finishes against that ideal, and a batch with k of the
stream's members lasts c(k) M_k, holds at most k F(S / c(k))^k expected finishes and
costs Psi(k) = E[psi(c(k) M_k)] (Wald: the members were chosen without their solo
times). With h = min_k Psi(k) / (k F(S / c(k))^k), over a long horizon H:

    finishes <= rate H F(S) - sum over batches of Psi(k) <= rate H F(S) - h finishes,
    so        finish rate <= F(S) / (1 + h).

Psi(k) is a Monte Carlo estimate (`samples` batches of each size k whose one-step
estimate is near the least; a group is a Poisson count of arrivals at uniform times in
its batch); the function returns the bound and its standard error. Times are rounded on
a grid of S / `steps` in the direction that favours the policy. It holds in expectation;
the clairvoyant oracle and cost hints are not bound by it, nor is a policy that stops a
batch or runs a request twice.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

#: groups larger than this get V_0
MAX_GROUP = 12
#: (least group, largest group, duration bins) for V_2 and V_3
TWO_STEP = (3, 8, 128)
THREE_STEP = (4, 7, 24)
#: batch sizes whose one-step estimate of h is within this factor of the least get V_2, V_3
REFINE = 1.25


class _Group:
    """Tables of one law, SLO and inflation: the group bounds V_1..V_3 of many groups at
    once (arrays of shape (..., m): the y of m members; y <= 0 can no longer finish)."""

    def __init__(self, x: np.ndarray, slo: float, inflation: Sequence[float], steps: int):
        self.x, self.inflation, self.steps = x, inflation, steps
        self.step = slo / steps
        grid = np.arange(steps + 1) * self.step
        self.f = self.cdf(grid)
        self.member, self.left = [], []  # per size k, on the grid of y
        for k in range(1, min(MAX_GROUP, len(inflation)) + 1):
            within = self.cdf(grid / inflation[k - 1]) ** k  # P(c(k) M_k <= y)
            mass = np.diff(within, prepend=0.0)  # of c(k) M_k in (u_(i-1), u_i] ...
            low = np.append(mass[1:], 0.0)  # ... placed at u_(i-1): a shorter batch
            low[0] += mass[0]
            self.member.append(within)
            self.left.append(np.convolve(low, self.f)[: len(grid)])  # E[F(y - c(k) M_k)]
        self._bins: dict[tuple[int, int], np.ndarray] = {}

    def cdf(self, t):
        return np.searchsorted(self.x, t, side="right") / len(self.x)

    def _at(self, table: np.ndarray, y: np.ndarray) -> np.ndarray:
        i = np.minimum(np.ceil(np.maximum(y, 0.0) / self.step).astype(np.int64), self.steps)
        return np.where(y > 0, table[i], 0.0)  # y rounded up: more time left

    def durations(self, k: int, bins: int) -> np.ndarray:
        """The lower ends of `bins` equal-probability bins of c(k) M_k."""
        if (k, bins) not in self._bins:
            levels = (np.arange(bins) / bins) ** (1.0 / k)
            lows = np.quantile(self.x, levels, method="lower")  # at most the quantile
            self._bins[k, bins] = self.inflation[k - 1] * lows
        return self._bins[k, bins]

    def value(self, y: np.ndarray, depth: int) -> np.ndarray:
        m = y.shape[-1]
        if m == 0:
            return np.zeros(y.shape[:-1])
        if m > MAX_GROUP:
            return self._at(self.f, y).sum(axis=-1)
        best = self.one_step(y)
        for d, (least, most, bins) in ((2, TWO_STEP), (3, THREE_STEP)):
            if d <= depth and least <= m <= most:
                best = np.minimum(best, self._lookahead(y, d, bins))
        return best

    def one_step(self, y: np.ndarray) -> np.ndarray:
        best = np.zeros(y.shape[:-1])
        for k in range(1, min(y.shape[-1], len(self.member)) + 1):
            a, g = self._at(self.member[k - 1], y), self._at(self.left[k - 1], y)
            gain = -np.sort(g - a, axis=-1)[..., :k].sum(axis=-1)
            best = np.maximum(best, g.sum(axis=-1) + gain)
        return best

    def _lookahead(self, y: np.ndarray, depth: int, bins: int) -> np.ndarray:
        m = y.shape[-1]
        if depth == 1 or m <= 2:  # two members: V_1 is exact
            return self.one_step(y)
        best = np.zeros(y.shape[:-1])
        for k in range(1, min(m, len(self.member)) + 1):
            a = self._at(self.member[k - 1], y)
            after = self.durations(k, bins).reshape((1,) * (y.ndim - 1) + (bins, 1))
            for first in itertools.combinations(range(m), k):
                rest = [j for j in range(m) if j not in first]
                v = a[..., list(first)].sum(axis=-1)
                if rest:
                    later = y[..., None, rest] - after
                    v = v + self._lookahead(later, depth - 1, bins).mean(axis=-1)
                best = np.maximum(best, v)
        return best


def waiting_finish_rate_bound(
    solo_sample: Sequence[float],
    slo: float,
    rate: float,
    inflation: Sequence[float],
    *,
    samples: int = 200_000,
    seed: int = 0,
    steps: int = 2000,
    depth: int = 3,
) -> tuple[float, float]:
    """The bound of this module: (bound, its Monte Carlo standard error) on the long-run
    finish rate of a Poisson stream of `rate` with SLO `slo` on one worker whose batch of
    b lasts inflation[b - 1] x the max of b solo times of the law `solo_sample`. `depth`
    1..3: how far the group bound looks ahead (3 is the tightest and slowest)."""
    x = np.sort(np.asarray(solo_sample, dtype=np.float64))
    if len(x) == 0 or not (slo > 0 and rate > 0) or not inflation:
        raise ValueError("the bound needs a sample of solo times, slo > 0, rate > 0 and "
                         "an inflation table")  # fmt: skip
    if depth not in (1, 2, 3):
        raise ValueError(f"depth must be 1, 2 or 3, got {depth!r}")
    group = _Group(x, slo, inflation, steps)
    f_slo = float(group.f[-1])
    rng = np.random.default_rng(seed)

    def estimate(k: int, d: int) -> tuple[float, float]:
        held = k * float(group.cdf(slo / inflation[k - 1])) ** k
        if held == 0.0:  # no batch of k can finish anything
            return math.inf, 0.0
        dur = inflation[k - 1] * x[rng.integers(0, len(x), (samples, k))].max(axis=1)
        count = rng.poisson(rate * dur)
        value = np.zeros(samples)
        for m in np.unique(count[count > 0]):
            rows = np.flatnonzero(count == m)
            y = slo - rng.random((len(rows), m)) * dur[rows, None]
            for s in range(0, len(rows), 1000):  # bounded memory for V_3
                value[rows[s : s + 1000]] = group.value(y[s : s + 1000], d)
        cost = (count * f_slo - value) / held
        return float(cost.mean()), float(cost.std()) / math.sqrt(samples)

    costs = {k: estimate(k, 1) for k in range(1, len(inflation) + 1)}
    least = min(h for h, _ in costs.values())
    if depth > 1 and not math.isinf(least):
        for k in [k for k, (h, _) in costs.items() if h <= REFINE * least]:
            costs[k] = estimate(k, depth)
    h, se = min(costs.values())
    if math.isinf(h):  # nothing can finish even alone
        return 0.0, 0.0
    bound = f_slo / (1.0 + h)
    return bound, bound * se / (1.0 + h)
