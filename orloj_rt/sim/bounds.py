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

`windowed_finish_rate_bound` makes the same argument see bursts and unequal workers, and
`hinted_finish_rate_bound` makes it per request, for policies that know each request's
cost hint: what the hint says of the solo time (its posterior law) replaces the law.
"""

from __future__ import annotations

import math
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

    def window(starts, end, span):
        size = (end - starts).astype(np.float64)
        lp = np.min(size[:, None] * mus[None, :] + span[:, None] * rate[None, :], axis=1)
        return np.minimum(lp, size * cap)

    return float(min(cap, _least_split(t, slo, windows, window) / len(t)))


def _least_split(arrivals, slo, windows, window) -> float:
    """The least, over splits of the requests (in arrival order) into windows at every
    k-th arrival (k = N / `windows`, rounded up), of the sum of the windows' bounds, by
    dynamic programming. `window(starts, end, span)` bounds the finishes of the windows
    [start, end) for an array of starts, span being each one's last arrival - first
    arrival + 2 `slo`."""
    n = len(arrivals)
    step = max(1, -(-n // windows))
    cuts = np.asarray(list(range(0, n, step)) + [n])
    best = np.full(len(cuts), np.inf)
    best[0] = 0.0
    for j in range(1, len(cuts)):
        starts = cuts[:j]
        span = arrivals[cuts[j] - 1] - arrivals[starts] + 2.0 * slo
        best[j] = float(np.min(best[:j] + window(starts, cuts[j], span)))
    return float(best[-1])


def hinted_finish_rate_bound(
    law: Sequence[float],
    hints: Sequence[float],
    hint_cv: float,
    slo: float,
    arrivals: Sequence[float],
    inflation: Sequence[float],
    *,
    workers: int = 1,
    law_weights: Sequence[float] | None = None,
    windows: int = 400,
    grid: int = 600,
) -> float:
    """An upper bound on the expected finish rate of every policy that knows each request's
    cost hint (and the laws), but not its solo time, on `workers` workers of speed 1: the
    windowed bound above, made per request. Request j, arriving at `arrivals[j]` with
    deadline arrival + `slo`, has hint h_j = X_j Z_j: its solo time times an independent
    LogNormal factor of mean 1 and CoV `hint_cv` (the simulator's hints,
    orloj_rt/sim/workloads.py), X_j drawn from `law` (points, with `law_weights`, uniform
    by default). Given its hint, X_j has the posterior law F_j (law_weights times the
    likelihood exp(-z^2 / 2), z = (ln h_j - ln x + sigma^2 / 2) / sigma), and that is all
    a policy can know of it until its batch ends.

    - A batch B of b dispatched with the members' solo times unknown finishes each member
      with probability at most P(c(b) max X <= S) = prod_j F_j(S / c(b)), so at most
      b prod_j q_j <= sum_j q_j^b members in expectation (the mean of the b numbers q_j^b
      is at least their geometric mean): member j is credited p_j(b) = F_j(S / c(b))^b.
    - The batch keeps its worker busy, counted up to S, for E[min(c(b) max X, S)] = the
      integral over [0, S] of 1 - prod_j F_j(t / c(b)) >= the integral of 1 - (1/b)
      sum_j F_j(t / c(b))^b = sum_j t_j(b), t_j(b) = E[min(c(b) M_j, S)] / b, M_j the
      max of b independent draws of F_j: member j is charged t_j(b).
    - Both are exact when the members' laws are equal (the windowed bound's terms); where
      they differ, the credits sum to more than the batch's expected finishes and the
      charges to less than its expected time, which only raises the bound.
    - So, window by window as in `windowed_finish_rate_bound`, the expected finishes of
      window w are at most the linear program: maximise sum y_j(b) p_j(b) over y >= 0
      with sum_j,b y_j(b) t_j(b) <= W (e_w - a_w + 2S) and sum_b y_j(b) <= 1 per request;
      by weak duality, for every lambda >= 0 at most lambda W (e_w - a_w + 2S) + sum_j
      max(0, max_b p_j(b) - lambda t_j(b)). The least over a grid of lambda is taken,
      and the least sum over splits into windows of every k-th arrival.

    It holds in expectation over the solo times given the hints, with F_j from the law's
    points (so it is computed for the hints one run drew, like a finish rate); the
    clairvoyant oracle is not bound by it, nor is a policy that runs a request twice or
    stops a batch it started. It ignores the time to gather a batch (a request is
    credited as if its batch-mates were like it), so it is loose where like requests are
    few at a time."""
    x = np.asarray(law, dtype=np.float64)
    h = np.asarray(hints, dtype=np.float64)
    t = np.asarray(arrivals, dtype=np.float64)
    w = np.full(len(x), 1.0) if law_weights is None else np.asarray(law_weights, np.float64)
    if len(x) == 0 or len(t) == 0 or len(w) != len(x) or len(h) != len(t):
        raise ValueError("the bound needs law points (and as many weights), and one hint "
                         "per arrival")  # fmt: skip
    if not (np.all(x > 0) and np.all(w >= 0) and w.sum() > 0 and np.all(h > 0)):
        raise ValueError("law points and hints must be > 0, weights >= 0 (not all 0)")
    if not (hint_cv > 0 and slo > 0 and workers >= 1):
        raise ValueError("the bound needs hint_cv > 0, slo > 0 and at least one worker")
    order = np.argsort(x)
    x, w = x[order], w[order] / w.sum()
    credit, charge = _hinted_member_terms(x, w, h, hint_cv, slo,
                                          np.asarray(inflation, np.float64))
    return _per_request_bound(credit, charge, t, slo, workers, windows, grid)


def _per_request_bound(credit, charge, arrivals, slo, workers, windows, grid) -> float:
    """The windowed linear programs' dual of `hinted_finish_rate_bound`, from each
    request's credit p_j(b) and charge t_j(b) (rows: requests in arrival order)."""
    lams = np.concatenate([[0.0], float(np.max(credit / charge)) * np.geomspace(1e-4, 1.0, grid)])
    gain = np.empty((len(credit), len(lams)))  # max(0, max_b p - lambda t), per request, lambda
    for k, lam in enumerate(lams):
        gain[:, k] = np.maximum(0.0, np.max(credit - lam * charge, axis=1))
    cum = np.concatenate([np.zeros((1, len(lams))), np.cumsum(gain, axis=0)])

    def window(starts, end, span):
        return np.min(cum[end][None, :] - cum[starts] + workers * span[:, None] * lams, axis=1)

    return _least_split(arrivals, slo, windows, window) / len(arrivals)


def _hinted_member_terms(x, w, hints, hint_cv, slo, inflation, chunk=64):
    """Per request (rows) and batch size b (columns): the credit F_j(S / c(b))^b and the
    charge E[min(c(b) M_j, S)] / b of `hinted_finish_rate_bound`, F_j the posterior law
    on the sorted points x given the request's hint."""
    sigma2 = math.log1p(hint_cv * hint_cv)
    sigma = math.sqrt(sigma2)
    lx = np.log(x)
    credit = np.empty((len(hints), len(inflation)))
    charge = np.empty_like(credit)
    for lo in range(0, len(hints), chunk):
        z = (np.log(hints[lo:lo + chunk])[:, None] - lx[None, :] + sigma2 / 2.0) / sigma
        loglik = -0.5 * z * z
        post = w[None, :] * np.exp(loglik - loglik.max(axis=1, keepdims=True))
        cdf = np.minimum(np.cumsum(post / post.sum(axis=1, keepdims=True), axis=1), 1.0)
        rows = slice(lo, lo + len(cdf))
        credit[rows], charge[rows] = _posterior_terms(x, cdf, slo, inflation)
    return credit, charge


def _posterior_terms(x, cdf, slo, inflation):
    """The credit and charge of each row's law: `cdf[j, k]` = F_j(x[k]), x sorted. With
    m_k = min(c(b) x_k, S), E[min(c(b) M, S)] = m_last - sum_k F(x_k)^b (m_k+1 - m_k)."""
    capped = np.minimum(inflation[:, None] * x[None, :], slo)  # m_k per b: b x points
    below = np.searchsorted(x, slo / inflation, side="right")  # points with c(b) x <= S
    at = np.concatenate([np.zeros((len(cdf), 1)), cdf], axis=1)[:, below]  # F_j(S / c(b))
    credit = np.empty((len(cdf), len(inflation)))
    charge = np.empty_like(credit)
    steps = np.diff(capped, axis=1, append=capped[:, -1:])  # m_k+1 - m_k, 0 at the last
    power = np.ones_like(cdf)
    for i in range(len(inflation)):  # batch size i + 1: powers by multiplication
        np.multiply(power, cdf, out=power)
        charge[:, i] = (capped[i, -1] - power @ steps[i]) / (i + 1)
        credit[:, i] = at[:, i] ** (i + 1)
    return credit, charge
