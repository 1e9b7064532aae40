"""What whole-batch and step-level serving learn alike: when an app's own distribution
replaces the warm-up prior, and the prior itself."""

from __future__ import annotations

import math

MIN_APP_SAMPLES = 32  # solo times an app needs before its own distribution replaces the prior
PRIOR_MIN_COV = 0.05  # a prior is never sharper than this (warm-up sees few inputs)


def prior_of(times: list[float]) -> tuple[float, float]:
    """(mean, CoV) of the warm-up's solo times: the lognormal prior every app starts from.
    Non-positive and non-finite times are ignored; ValueError if none is left."""
    times = [t for t in times if t > 0 and math.isfinite(t)]
    if not times:
        raise ValueError("the warm-up measured no solo time")
    mean = sum(times) / len(times)
    var = sum((t - mean) ** 2 for t in times) / len(times)
    return mean, max(math.sqrt(var) / mean, PRIOR_MIN_COV)
