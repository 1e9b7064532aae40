"""The counters the processes exchange: fixed-bucket histograms (sent as snapshots in
`SchedulerStats` and the `stats` reply) and their buckets, and the cap on apps per model
in what is reported. /metrics (runtime/metrics.py) exports them."""

from __future__ import annotations

from bisect import bisect_left

# Upper bounds (Prometheus "le") of the fixed buckets; the implicit last bucket is +Inf.
# Latencies: 50 us .. 30 s, about three per decade: sub-millisecond serving and
# multi-second SLOs both resolve.
LATENCY_BUCKETS_S = (
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3,
    250e-3, 500e-3, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
# A scheduling decision takes microseconds (docs/engine.md): 1 us .. 10 ms.
DECISION_BUCKETS_S = (
    1e-6, 2.5e-6, 5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3,
    10e-3,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# A client names its app freely (wire.MAX_APP_LEN characters); a label value per app must
# not let one client grow the frontend's memory and every scrape without bound.
MAX_APPS_PER_MODEL = 64


def jain(values) -> float:
    """Jain's fairness index (sum x)^2 / (n sum x^2): 1 when all are equal, 1/n when one
    has everything (issue 17 reports it over apps' finish rates)."""
    values = [float(v) for v in values]
    sq = sum(v * v for v in values)
    if not values or sq == 0:
        return 1.0
    return sum(values) ** 2 / (len(values) * sq)


class Histogram:
    """Fixed buckets; `counts[i]` is the number of observations in (bounds[i-1], bounds[i]],
    the last one everything above bounds[-1]. Not cumulative: the exporter sums."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, x: float) -> None:
        self.counts[bisect_left(self.bounds, x)] += 1
        self.sum += x

    def snapshot(self) -> list:
        """[counts..., sum]: one flat msgpack-friendly list."""
        return [*self.counts, self.sum]
