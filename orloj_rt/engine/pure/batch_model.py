"""Batch latency: the pure-Python twin of csrc/engine/batch_model.hpp.

A batch B of size b runs for about c(b) * max_i X_i, where X_i is member i's solo time and
c(b) >= 1 the model's batch inflation. So, with members drawn from per-app distributions,

    P(T_B <= t) = prod_i F_app(i)(t / c(b))
    E[T_B]      = c(b) * integral_0^inf (1 - prod_i F_app(i)(x)) dx
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from orloj_rt.engine.pure.distribution import Distribution, ipow
from orloj_rt.engine.quadrature import GAUSS, points_for_degree

DEFAULT_ALPHA = 0.15
DEFAULT_MAX_BATCH = 32


class Inflation:
    """The batch-inflation table c(1..max_batch) of one model."""

    __slots__ = ("_c",)

    def __init__(self, max_batch: int = DEFAULT_MAX_BATCH, alpha: float = DEFAULT_ALPHA):
        if not isinstance(max_batch, int) or not (1 <= max_batch <= 4096):
            raise ValueError(f"max_batch must be an integer in [1, 4096], got {max_batch!r}")
        if not (math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"alpha must be finite and >= 0, got {alpha!r}")
        self._c = [1.0 + alpha * (b - 1) for b in range(1, max_batch + 1)]

    @classmethod
    def from_table(cls, table: Sequence[float]) -> Inflation:
        """A profiled table: table[b - 1] = c(b), each finite and > 0."""
        c = [float(v) for v in table]
        if not c:
            raise ValueError("an inflation table needs at least c(1)")
        for b, v in enumerate(c, 1):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"inflation c({b}) must be finite and > 0, got {v!r}")
        obj = cls.__new__(cls)
        obj._c = c
        return obj

    @property
    def max_batch(self) -> int:
        return len(self._c)

    @property
    def table(self) -> list[float]:
        return list(self._c)

    def c(self, b: int) -> float:
        if not isinstance(b, int) or b < 1:
            raise ValueError(f"batch size must be an integer >= 1, got {b!r}")
        if b > len(self._c):
            raise ValueError(
                f"batch size {b} is above the model's maximum batch size {len(self._c)}"
            )
        return self._c[b - 1]

    def __reduce__(self):
        return (Inflation.from_table, (self._c,))

    def __repr__(self) -> str:
        return f"Inflation(max_batch={len(self._c)}, c(max)={self._c[-1]:.4g})"


def group_members(dists: Sequence[Distribution]) -> list[tuple[Distribution, int]]:
    """(distribution, count) pairs in order of first appearance; checks one common grid."""
    if len(dists) == 0:
        raise ValueError("empty batch: a batch needs at least one member")
    groups: list[list] = []
    for d in dists:
        for g in groups:
            if g[0] is d:
                g[1] += 1
                break
        else:
            if groups and not groups[0][0].same_grid(d):
                raise ValueError("batch members' distributions must share one grid")
            groups.append([d, 1])
    return [(g[0], g[1]) for g in groups]


def batch_cdf(t: float, dists: Sequence[Distribution], inflation: Inflation) -> float:
    """P(T_B <= t) for a batch whose members' distributions are `dists`."""
    groups = group_members(dists)
    c = inflation.c(len(dists))
    t = float(t)
    if math.isnan(t):
        raise ValueError("time is NaN")
    x = t / c
    p = 1.0
    for d, n in groups:
        p *= ipow(d.cdf(x), n)
    return p


def batch_mean(dists: Sequence[Distribution], inflation: Inflation) -> float:
    """E[T_B]: exact for one app (closed form), Gauss-Legendre on each piece otherwise."""
    groups = group_members(dists)
    b = len(dists)
    c = inflation.c(b)
    if len(groups) == 1:
        return c * groups[0][0].expected_max(b)
    return c * mixed_expected_max(groups)


def mixed_expected_max(groups: Sequence[tuple[Distribution, int]]) -> float:
    """E[max] over members from several distributions.

    Between consecutive breakpoints (every in-bin support end of every group) each CDF is
    linear, so the product of powers is a polynomial of degree b there.
    """
    b = 0
    points = {0.0}
    x_end = 0.0
    for d, n in groups:
        b += n
        d._ready()
        for k in range(d._first, d._last + 1):
            if d._w[k] > 0.0:
                points.add(d._blo[k])
                points.add(d._bhi[k])
        if d._bhi[d._last] > x_end:
            x_end = d._bhi[d._last]
    xs = sorted(points)
    nodes, weights = GAUSS[points_for_degree(b)]
    total = 0.0
    for i in range(len(xs) - 1):
        a = xs[i]
        z = xs[i + 1]
        if z > x_end:
            break
        half = 0.5 * (z - a)
        mid = 0.5 * (z + a)
        acc = 0.0
        for xi, wi in zip(nodes, weights, strict=True):
            x = mid + half * xi
            g = 1.0
            for d, n in groups:
                g *= ipow(d._cdf(x), n)
            acc += wi * (1.0 - g)
        total += half * acc
    return total
