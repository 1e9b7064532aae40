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
    levels = np.arange(1, n + 1) / n

    def cdf(t: float) -> float:
        return float(np.searchsorted(x, t, side="right")) / n

    best = 0.0
    for b, cb in enumerate(inflation, 1):
        # E[max of b] of the empirical law: sum_i x_(i) ((i/n)^b - ((i-1)/n)^b)
        weights = levels**b - (levels - 1.0 / n) ** b
        e_max = float(np.dot(x, weights))
        rate = b * cdf(slo / cb) ** b / (cb * e_max)
        best = max(best, rate)
    return min(cdf(slo), workers * best * time_per_request)
