"""The scheduling engine: distributions, batch latency, deadline queues and policies.

Two implementations share one interface:

- the compiled engine, `orloj_rt.engine._native` (C++ in csrc/engine, wrapped by Cython);
- the pure-Python twin, `orloj_rt.engine.pure`, the executable specification.

The compiled one is used when it is built, unless ORLOJ_RT_PURE=1. ORLOJ_RT_PURE=0 makes a
missing build an error instead of a silent fall back. `IMPL` says which one is active.

The engine imports neither torch nor ZeroMQ: the simulator and the scheduler process both
use it.
"""

from __future__ import annotations

import os

from orloj_rt.engine import pure
from orloj_rt.engine.interface import Decision, Policy
from orloj_rt.engine.pure.batch_model import DEFAULT_ALPHA, DEFAULT_MAX_BATCH
from orloj_rt.engine.pure.orloj import check_probability

_choice = os.environ.get("ORLOJ_RT_PURE", "")

native = None
if _choice != "1":
    try:
        from orloj_rt.engine import _native as native  # type: ignore[no-redef]
    except ImportError as exc:
        if _choice == "0":
            raise ImportError(
                "ORLOJ_RT_PURE=0 asks for the compiled engine, but orloj_rt.engine._native is "
                "not built: run `pip install -e .` (needs g++ and the Python headers)"
            ) from exc
        native = None

if native is not None:
    IMPL = "native"
    Distribution = native.Distribution
    Inflation = native.Inflation
    RequestQueue = native.RequestQueue
    OrlojPolicy = native.OrlojPolicy
    batch_cdf = native.batch_cdf
    batch_mean = native.batch_mean
    Policy.register(native.OrlojPolicy)
else:
    IMPL = "pure"
    Distribution = pure.Distribution  # type: ignore[misc]
    Inflation = pure.Inflation  # type: ignore[misc]
    RequestQueue = pure.RequestQueue  # type: ignore[misc]
    OrlojPolicy = pure.OrlojPolicy  # type: ignore[misc]
    batch_cdf = pure.batch_cdf
    batch_mean = pure.batch_mean

def inflation_table(max_batch: int, alpha: float, inflation=None) -> list[float]:
    """c(1..max_batch) as plain floats: from a profiled table, an `Inflation` (either
    engine's), or 1 + alpha (b - 1) when `inflation` is None."""
    if inflation is None:
        return pure.Inflation(max_batch, alpha).table
    if hasattr(inflation, "table"):
        return [float(v) for v in inflation.table]
    return pure.Inflation.from_table(inflation).table


IMPLEMENTATIONS = {"pure": pure}
if native is not None:
    IMPLEMENTATIONS["native"] = native

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_MAX_BATCH",
    "IMPL",
    "IMPLEMENTATIONS",
    "Decision",
    "Distribution",
    "Inflation",
    "OrlojPolicy",
    "Policy",
    "RequestQueue",
    "batch_cdf",
    "batch_mean",
    "check_probability",
    "inflation_table",
]
