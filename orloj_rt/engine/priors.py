"""Deterministic sample sets that seed a distribution before any measurement exists.

Both engines build `Distribution.from_mean_cov` from the same points, so that a prior is
identical in the compiled engine and in the pure twin.
"""

from __future__ import annotations

import math
from statistics import NormalDist

PRIOR_POINTS = 1000


def lognormal_points(mean: float, cov: float, n: int = PRIOR_POINTS) -> list[float]:
    """`n` evenly spaced quantiles of the lognormal with this mean and coefficient of
    variation; a single point when `cov` is 0."""
    if not (math.isfinite(mean) and mean > 0):
        raise ValueError(f"mean must be a positive finite time in seconds, got {mean!r}")
    if not (math.isfinite(cov) and cov >= 0):
        raise ValueError(f"cov (coefficient of variation) must be finite and >= 0, got {cov!r}")
    if cov == 0:
        return [float(mean)]
    sigma2 = math.log1p(cov * cov)
    sigma = math.sqrt(sigma2)
    mu = math.log(mean) - sigma2 / 2
    std = NormalDist()
    return [math.exp(mu + sigma * std.inv_cdf((i + 0.5) / n)) for i in range(n)]
