"""An upper bound on the finish rate of every policy that does not know solo times.

A policy that is not clairvoyant dispatches a batch without knowing its members' solo
times: they are independent of everything it has seen, and are revealed only when the
batch completes. A member dispatched with slack s <= S (the SLO) finishes in a batch of b
with probability P(c(b) * max X <= s) <= F(S / c(b))^b, so a batch of b yields at most
b F(S / c(b))^b expected finishes and keeps a worker busy for c(b) E[max of b] in
expectation. Only work done before the last deadline counts, so each of the W workers
is usefully busy for at most the span T = (last arrival + S). Summing over batches
(Wald's identity; the number of batches is a stopping time), for N requests:

    E[finish rate] <= min( F(S),  W T / N * max_b  b F(S / c(b))^b / (c(b) E[max of b]) )

and T / N is about 1 / L at load L. F(S) bounds a request that runs alone the moment it
arrives. The bound ignores queueing and the time to gather a batch, so it is loose under
light load; under overload it says how far any non-clairvoyant policy, orloj included,
can get. Cost hints break its premise (they tell something about X), and so does the
clairvoyant oracle.

F and E[max] come from a sample of the solo-time law (its empirical distribution), and
the bound holds in expectation: one run's finish rate can exceed it by its own noise (a
few percent at 4,000 requests).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def finish_rate_bound(
    solo_sample: Sequence[float],
    slo: float,
    time_per_request: float,
    inflation: Sequence[float],
    workers: int = 1,
) -> float:
    """The bound above for SLO `slo`, from a sample of solo times. `time_per_request` is
    T / N, the span over the number of requests: 1 / load in the long run."""
    x = np.sort(np.asarray(solo_sample, dtype=np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("the bound needs a sample of solo times")

    def cdf(t: float) -> float:
        return float(np.searchsorted(x, t, side="right")) / n

    best = 0.0
    for b, cb in enumerate(inflation, 1):
        e_max = float(np.dot(x, _max_weights(n, b)))
        rate = b * cdf(slo / cb) ** b / (cb * e_max)
        best = max(best, rate)
    return min(cdf(slo), workers * best * time_per_request)


def _max_weights(n: int, b: int) -> np.ndarray:
    """P(the max of b draws of an n-point empirical law is its i-th smallest point):
    (i/n)^b - ((i-1)/n)^b, so that E[g(max of b)] = sum_i g(x_(i)) times these."""
    levels = np.arange(1, n + 1) / n
    return levels**b - (levels - 1.0 / n) ** b


def _member_terms(x: np.ndarray, slo: float, speed: float, inflation: Sequence[float]):
    """Per batch size b, on a worker of `speed`: the most a member can finish, F(S s /
    c(b))^b, and the worker time it is charged, E[min(c(b) max of b / s, S)] / b."""
    n = len(x)
    finish, charge = [], []
    for b, cb in enumerate(inflation, 1):
        busy = float(np.dot(np.minimum(cb * x / speed, slo), _max_weights(n, b)))
        finish.append((np.searchsorted(x, slo * speed / cb, side="right") / n) ** b)
        charge.append(busy / b)
    return np.asarray(finish), np.asarray(charge)


def windowed_finish_rate_bound(
    solo_sample: Sequence[float],
    slo: float,
    arrivals: Sequence[float],
    speeds: Sequence[float],
    inflation: Sequence[float],
    *,
    windows: int = 400,
    grid: int = 2001,
) -> float:
    """An upper bound on the expected finish rate of every policy that does not know solo
    times, routers and node policies together (a central queue over all workers
    included), for requests arriving at `arrivals` with deadline arrival + `slo`, served
    by one worker per entry of `speeds` (a worker of speed s runs a batch of b in
    c(b) x max of b / s), solo times independent draws of the law `solo_sample`.

    The argument of `finish_rate_bound`, made to see bursts and unequal workers:

    - Split the requests, in arrival order, into windows. A request of window w, arriving
      in [a_w, e_w], can finish only in a batch started in I_w = [a_w, e_w + S). On a
      worker, the batches started in I_w, each counted for min(duration, S), sum to at
      most |I_w| + S = e_w - a_w + 2S: all but the last end before it starts.
    - Charge a batch's min(duration, S) to its b members equally. A member of a batch of
      b on a worker of speed s finishes with probability at most p(s, b) = F(S s /
      c(b))^b, and is charged t(s, b) = E[min(c(b) max of b / s, S)] / b in expectation
      (the members' solo times are independent of the decision to start the batch:
      Wald). A member never served finishes nothing and is charged nothing.
    - So the expected finishes of window w are at most the linear program: maximise
      sum y(s, b) p(s, b) over y >= 0 with sum_b y(s, b) t(s, b) <= W_s (e_w - a_w + 2S)
      for each speed s (W_s its workers) and sum y <= n_w. By weak duality, for every
      mu >= 0 that is at most mu n_w + (e_w - a_w + 2S) sum_s W_s max_b (p(s, b) -
      mu)^+ / t(s, b); the least over a grid of mu in [0, 1] is taken, and n_w max p
      caps it.
    - Windows are chosen from the arrival times alone (never from solo times), so the sum
      over any split bounds the expected finishes: the least sum over splits at every
      k-th arrival (k = N / `windows`, rounded up) is found by dynamic programming.

    It holds in expectation over the solo times, as `finish_rate_bound` does; a policy
    that knows something of the solo times (the oracle, cost hints) is not bound by it,
    nor is one that runs a request more than once or stops a batch it started."""
    x = np.sort(np.asarray(solo_sample, dtype=np.float64))
    t = np.asarray(arrivals, dtype=np.float64)
    if len(x) == 0 or len(t) == 0:
        raise ValueError("the bound needs a sample of solo times and at least one arrival")
    if not (slo > 0 and len(speeds) > 0 and min(speeds) > 0):
        raise ValueError("the bound needs slo > 0 and at least one worker of speed > 0")
    mus = np.linspace(0.0, 1.0, grid)
    rate = np.zeros(grid)  # sum_s W_s max_b (p - mu)^+ / t, per mu
    counts: dict[float, int] = {}
    for s in speeds:
        counts[float(s)] = counts.get(float(s), 0) + 1
    cap = 0.0  # the most any one member can finish: max p(s, b)
    for s, w in counts.items():
        p, c = _member_terms(x, slo, s, inflation)
        rate += w * np.max(np.maximum(p[None, :] - mus[:, None], 0.0) / c[None, :], axis=1)
        cap = max(cap, float(p.max()))
    n = len(t)
    step = max(1, -(-n // windows))
    cuts = np.asarray(list(range(0, n, step)) + [n])
    best = np.full(len(cuts), np.inf)
    best[0] = 0.0
    for j in range(1, len(cuts)):
        starts = cuts[:j]
        size = (cuts[j] - starts).astype(np.float64)
        span = t[cuts[j] - 1] - t[starts] + 2.0 * slo
        lp = np.min(size[:, None] * mus[None, :] + span[:, None] * rate[None, :], axis=1)
        best[j] = float(np.min(best[:j] + np.minimum(lp, size * cap)))
    return float(min(cap, best[-1] / n))
