"""Gauss-Legendre rules shared by both engines, so that both integrate with the same nodes.

A batch's execution time is c(b) times the maximum of its members' solo times. Between two
breakpoints of the members' piecewise-linear CDFs, the batch CDF is a polynomial of degree
b, which an m-point rule integrates exactly when 2m - 1 >= b.

The nodes come from Newton's method on the Legendre polynomials, in plain Python, so that
the engine (the compiled one and the pure twin alike) imports no numpy. The scheduler
process imports numpy all the same: its shared-memory rings do (runtime/shm_ring.py,
imported at start through runtime/proc.py), and so does the oracle policy
(policies/oracle.py, when the scheduler builds its policies). The decisions of orloj and
the baselines make no numpy calls, and nothing in the scheduler multiplies matrices, so
numpy's BLAS threads, started at import, stay idle there.
"""

from __future__ import annotations

import math

MAX_POINTS = 16


def _legendre(m: int, x: float) -> tuple[float, float]:
    """P_m(x) and P_m'(x) by the three-term recurrence."""
    p0, p1 = 1.0, x
    for k in range(2, m + 1):
        p0, p1 = p1, ((2 * k - 1) * x * p1 - (k - 1) * p0) / k
    if m == 0:
        return 1.0, 0.0
    dp = m * (x * p1 - p0) / (x * x - 1.0)
    return p1, dp


def gauss_legendre(m: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The m nodes on [-1, 1] in increasing order, and their weights."""
    nodes = [0.0] * m
    weights = [0.0] * m
    for i in range(m):
        x = math.cos(math.pi * (i + 0.75) / (m + 0.5))  # a classic first guess
        for _ in range(100):
            p, dp = _legendre(m, x)
            step = p / dp
            x -= step
            if abs(step) < 1e-16:
                break
        _, dp = _legendre(m, x)
        nodes[m - 1 - i] = x
        weights[m - 1 - i] = 2.0 / ((1.0 - x * x) * dp * dp)
    return tuple(nodes), tuple(weights)


#: GAUSS[m] = (nodes, weights) on [-1, 1], for m = 1..MAX_POINTS.
GAUSS = {m: gauss_legendre(m) for m in range(1, MAX_POINTS + 1)}


def points_for_degree(degree: int) -> int:
    """The number of Gauss points that integrate a polynomial of `degree` exactly (capped)."""
    return min(MAX_POINTS, (degree + 2) // 2)
