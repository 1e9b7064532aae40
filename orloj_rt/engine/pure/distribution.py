"""Execution-time distributions: the pure-Python twin of csrc/engine/histogram.hpp.

A `Distribution` is a histogram of per-request solo execution times on a fixed grid:

    bin 0            [0, lo)                 underflow
    bins 1..K-2      log-spaced over [lo, hi)
    bin K-1          [hi, inf)               overflow

Every bin keeps three decayed sums of its samples: weight, sum, and sum of squares, and
the smallest and largest sample it has seen. Inside a bin, the mass is spread uniformly
over mean +- sqrt(3) * std (the uniform law with the bin's own mean and variance), clipped
to the bin's edges and to its observed extremes, so that no mass lies beyond the largest
sample (the overflow bin has no upper edge). So the CDF is piecewise linear,
continuous where the samples spread, and exact for a point mass (a bin whose samples are
all equal). A plain grid of 64 bins is 29% wide per bin; the in-bin moments keep a static
model with a 2% spread sharp instead of smearing it over a whole bin.

Forgetting is exponential: the k-th newest sample weighs (1 - 1/window)^k. `add_many`
gives a whole set of samples one common weight (a prior is one observation of the past),
and does not advance the decay clock.

Every arithmetic step here is written in the order the compiled engine performs it, so
that the two agree bit for bit (the tests check within 1e-9).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable

DEFAULT_BINS = 64
DEFAULT_LO = 1e-5  # seconds: 10 us
DEFAULT_HI = 60.0  # seconds
DEFAULT_WINDOW = 2000  # samples; 0 keeps every sample forever
MIN_BINS = 8
MAX_BINS = 4096
_RESCALE_AT = 1e100  # the growing sample weight is renormalised before it overflows
_POINT_MASS_REL = 1e-12  # an in-bin spread narrower than this (relative) is a point mass

# Versions are unique across every distribution of the process, so that a policy's cache
# can never mistake a replaced distribution (a copy) for the one it cached.
_versions = itertools.count(1)

_edge_cache: dict[tuple[int, float, float], tuple[float, ...]] = {}


def grid_edges(bins: int, lo: float, hi: float) -> tuple[float, ...]:
    """The K+1 bin edges: 0, lo, ..., hi, inf (computed once per grid)."""
    key = (bins, lo, hi)
    edges = _edge_cache.get(key)
    if edges is None:
        dlog = math.log(hi / lo) / (bins - 2)
        e = [0.0] * (bins + 1)
        for i in range(1, bins - 1):
            e[i] = lo * math.exp((i - 1) * dlog)
        e[1] = lo
        e[bins - 1] = hi
        e[bins] = math.inf
        edges = _edge_cache[key] = tuple(e)
    return edges


def check_grid(bins: int, lo: float, hi: float) -> None:
    if not isinstance(bins, int) or not (MIN_BINS <= bins <= MAX_BINS):
        raise ValueError(f"bins must be an integer in [{MIN_BINS}, {MAX_BINS}], got {bins!r}")
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(
            f"the grid needs 0 < lo < hi, finite, in seconds; got lo={lo!r}, hi={hi!r}"
        )


def check_time(x: float, what: str = "time") -> float:
    x = float(x)
    if math.isnan(x):
        raise ValueError(f"{what} is NaN")
    if x < 0:
        raise ValueError(f"{what} is negative ({x!r}); execution times are >= 0 seconds")
    if math.isinf(x):
        raise ValueError(f"{what} is infinite")
    return x


def ipow(x: float, n: int) -> float:
    """x**n for an integer n >= 0 by repeated squaring (the compiled engine does the same)."""
    result = 1.0
    base = x
    while n:
        if n & 1:
            result *= base
        n >>= 1
        if n:
            base *= base
    return result


class Distribution:
    """A histogram of solo execution times (seconds) with CDF, quantile and mean."""

    __slots__ = (
        "_bins", "_lo", "_hi", "_window", "_keep", "_edges", "_inv_dlog",
        "_w", "_s", "_q", "_mn", "_mx", "_g", "_g_last", "_n", "_version",
        "_clean", "_cumw", "_blo", "_bhi", "_binv", "_first", "_last", "_emax",
    )  # fmt: skip

    def __init__(
        self,
        bins: int = DEFAULT_BINS,
        lo: float = DEFAULT_LO,
        hi: float = DEFAULT_HI,
        window: int = DEFAULT_WINDOW,
    ):
        check_grid(bins, lo, hi)
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"window must be an integer >= 0 (0: never forget), got {window!r}")
        if window == 1:
            raise ValueError("window must be 0 (never forget) or at least 2 samples")
        self._bins = bins
        self._lo = float(lo)
        self._hi = float(hi)
        self._window = window
        self._keep = 1.0 - 1.0 / window if window else 1.0
        self._edges = grid_edges(bins, self._lo, self._hi)
        self._inv_dlog = (bins - 2) / math.log(self._hi / self._lo)
        self._w = [0.0] * bins
        self._s = [0.0] * bins
        self._q = [0.0] * bins
        self._mn = [math.inf] * bins  # extremes never decay: they only bound the spread
        self._mx = [-math.inf] * bins
        self._g = 1.0  # the weight the next sample gets
        self._g_last = 1.0  # the weight the newest sample got
        self._n = 0
        self._version = 0
        self._clean = False
        self._emax: list[float] = []

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_samples(cls, samples: Iterable[float], **grid) -> Distribution:
        d = cls(**grid)
        d.add_many(samples)
        return d

    @classmethod
    def from_mean_cov(cls, mean: float, cov: float, **grid) -> Distribution:
        """A lognormal prior with this mean (seconds) and coefficient of variation."""
        from orloj_rt.engine.priors import lognormal_points

        return cls.from_samples(lognormal_points(mean, cov), **grid)

    def copy(self) -> Distribution:
        d = Distribution(self._bins, self._lo, self._hi, self._window)
        d._w = list(self._w)
        d._s = list(self._s)
        d._q = list(self._q)
        d._mn = list(self._mn)
        d._mx = list(self._mx)
        d._g = self._g
        d._g_last = self._g_last
        d._n = self._n
        d._touch()
        return d

    def to_state(self) -> dict:
        """A msgpack/JSON-friendly snapshot; `from_state` rebuilds it in either engine."""
        return {
            "bins": self._bins, "lo": self._lo, "hi": self._hi, "window": self._window,
            "w": list(self._w), "s": list(self._s), "q": list(self._q),
            "mn": list(self._mn), "mx": list(self._mx),
            "g": self._g, "g_last": self._g_last, "n": self._n,
        }  # fmt: skip

    @classmethod
    def from_state(cls, state: dict) -> Distribution:
        d = cls(state["bins"], state["lo"], state["hi"], state["window"])
        if not (len(state["w"]) == len(state["s"]) == len(state["q"]) == d._bins):
            raise ValueError("distribution state: w, s and q must each have `bins` entries")
        d._w = [float(v) for v in state["w"]]
        d._s = [float(v) for v in state["s"]]
        d._q = [float(v) for v in state["q"]]
        d._mn = [float(v) for v in state["mn"]]
        d._mx = [float(v) for v in state["mx"]]
        if not (len(d._mn) == len(d._mx) == d._bins):
            raise ValueError("distribution state: mn and mx must each have `bins` entries")
        d._g = float(state["g"])
        d._g_last = float(state["g_last"])
        d._n = int(state["n"])
        d._touch()
        return d

    def __reduce__(self):
        return (Distribution.from_state, (self.to_state(),))

    # ----------------------------------------------------------------- properties
    @property
    def bins(self) -> int:
        return self._bins

    @property
    def lo(self) -> float:
        return self._lo

    @property
    def hi(self) -> float:
        return self._hi

    @property
    def window(self) -> int:
        return self._window

    @property
    def edges(self) -> tuple[float, ...]:
        return self._edges

    @property
    def version(self) -> int:
        """Increases with every change; policies use it to refresh their caches."""
        return self._version

    @property
    def samples_added(self) -> int:
        return self._n

    @property
    def count(self) -> float:
        """The effective number of samples: total weight over the newest sample's weight."""
        if not self._n:
            return 0.0
        acc = 0.0
        for w in self._w:
            acc += w
        return acc / self._g_last

    def same_grid(self, other: Distribution) -> bool:
        return (self._bins, self._lo, self._hi) == (other.bins, other.lo, other.hi)

    # ----------------------------------------------------------------- updates
    def bin_of(self, x: float) -> int:
        e = self._edges
        if x < self._lo:
            return 0
        if x >= self._hi:
            return self._bins - 1
        k = 1 + int(math.floor(math.log(x / self._lo) * self._inv_dlog))
        if k < 1:
            k = 1
        elif k > self._bins - 2:
            k = self._bins - 2
        while x < e[k]:
            k -= 1
        while x >= e[k + 1]:
            k += 1
        return k

    def _put(self, x: float, g: float) -> None:
        k = self.bin_of(x)
        self._w[k] += g
        self._s[k] += g * x
        self._q[k] += g * x * x
        if x < self._mn[k]:
            self._mn[k] = x
        if x > self._mx[k]:
            self._mx[k] = x

    def add(self, x: float) -> None:
        """Adds one measured solo time (seconds); older samples decay by one step."""
        x = check_time(x, "execution time")
        self._put(x, self._g)
        self._g_last = self._g
        if self._keep < 1.0:
            self._g = self._g / self._keep
            if self._g > _RESCALE_AT:
                self._rescale()
        self._n += 1
        self._touch()

    def add_many(self, samples: Iterable[float]) -> None:
        """Adds samples that all weigh what the next `add` would (one observation)."""
        xs = [check_time(x, "execution time") for x in samples]
        if not xs:
            return
        for x in xs:
            self._put(x, self._g)
        self._g_last = self._g
        self._n += len(xs)
        self._touch()

    def _rescale(self) -> None:
        f = 1.0 / self._g
        for k in range(self._bins):
            self._w[k] *= f
            self._s[k] *= f
            self._q[k] *= f
        self._g_last *= f
        self._g = 1.0

    def _touch(self) -> None:
        self._version = next(_versions)
        self._clean = False

    # ----------------------------------------------------------------- the model
    def _rebuild(self) -> None:
        K = self._bins
        cumw = [0.0] * (K + 1)
        blo = [0.0] * K
        bhi = [0.0] * K
        binv = [0.0] * K
        first = -1
        last = -1
        acc = 0.0
        for k in range(K):
            w = self._w[k]
            cumw[k] = acc
            acc = acc + w
            if w > 0.0:
                if first < 0:
                    first = k
                last = k
                m = self._s[k] / w
                var = self._q[k] / w - m * m
                if var < 0.0:
                    var = 0.0
                h = math.sqrt(3.0 * var)
                a = m - h
                b = m + h
                if a < self._mn[k]:
                    a = self._mn[k]
                if b > self._mx[k]:
                    b = self._mx[k]
                if not (b - a > _POINT_MASS_REL * b):
                    # a point mass: clamp the mean into the observed range
                    if m < self._mn[k]:
                        m = self._mn[k]
                    if m > self._mx[k]:
                        m = self._mx[k]
                    a = m
                    b = m
                    binv[k] = 0.0
                else:
                    binv[k] = 1.0 / (b - a)
                blo[k] = a
                bhi[k] = b
        cumw[K] = acc
        self._cumw = cumw
        self._blo = blo
        self._bhi = bhi
        self._binv = binv
        self._first = first
        self._last = last
        self._emax = []
        self._clean = True

    def _ready(self) -> None:
        if self._n == 0:
            raise ValueError(
                "empty distribution: it has no samples yet; add measurements or build it "
                "with Distribution.from_samples / from_mean_cov"
            )
        if not self._clean:
            self._rebuild()

    def cdf(self, t: float) -> float:
        """P(X <= t) for a solo execution time X."""
        t = float(t)
        if math.isnan(t):
            raise ValueError("time is NaN")
        self._ready()
        return self._cdf(t)

    def _cdf(self, x: float) -> float:
        # x >= 0 or any finite value; the caller has called _ready()
        k = self.bin_of(x)
        w = self._w[k]
        if w > 0.0:
            if x >= self._bhi[k]:
                frac = 1.0
            elif x <= self._blo[k]:
                frac = 0.0
            else:
                frac = (x - self._blo[k]) * self._binv[k]
                if frac > 1.0:
                    frac = 1.0
            return (self._cumw[k] + w * frac) / self._cumw[self._bins]
        return self._cumw[k] / self._cumw[self._bins]

    def conditional_cdf(self, w: float, t: float) -> float:
        """P(X <= w + t | X > w): the chance that a request which has done `w` seconds of
        solo work without finishing finishes within `t` more.

        (F(w + t) - F(w)) / (1 - F(w)), clamped to [0, 1]. 0 when t <= 0, and 0 when the
        model has no mass beyond w (a request that outlived every sample has no modelled
        chance: a step scheduler ends it).
        """
        w = float(w)
        t = float(t)
        if math.isnan(w) or math.isnan(t):
            raise ValueError("time is NaN")
        self._ready()
        fw = self._cdf(w)
        tail = 1.0 - fw
        if not tail > 0.0:
            return 0.0
        if not t > 0.0:
            return 0.0
        p = (self._cdf(w + t) - fw) / tail
        if p < 0.0:
            p = 0.0
        elif p > 1.0:
            p = 1.0
        return p

    def quantile(self, p: float) -> float:
        """The smallest t with P(X <= t) >= p, for p in [0, 1]."""
        p = float(p)
        if not (0.0 <= p <= 1.0):
            raise ValueError(f"a quantile needs p in [0, 1], got {p!r}")
        self._ready()
        return self._quantile(p)

    def _quantile(self, p: float) -> float:
        K = self._bins
        target = p * self._cumw[K]
        if target <= 0.0:
            return self._blo[self._first]
        j = bisect.bisect_left(self._cumw, target, 1, K + 1)
        if j > K:
            j = K
        k = j - 1
        while self._w[k] <= 0.0:  # only when rounding put target on a flat stretch
            k += 1
        frac = (target - self._cumw[k]) / self._w[k]
        if frac < 0.0:
            frac = 0.0
        elif frac > 1.0:
            frac = 1.0
        return self._blo[k] + frac * (self._bhi[k] - self._blo[k])

    def mean(self) -> float:
        """The model's mean: the samples' mean, unless an in-bin spread was clipped."""
        self._ready()
        acc = 0.0
        for k in range(self._first, self._last + 1):
            w = self._w[k]
            if w > 0.0:
                acc += w * (0.5 * (self._blo[k] + self._bhi[k]))
        return acc / self._cumw[self._bins]

    def support(self) -> tuple[float, float]:
        """The smallest and largest time with positive density (or mass)."""
        self._ready()
        return self._blo[self._first], self._bhi[self._last]

    def expected_max(self, n: int) -> float:
        """E[max of n independent solo times], exactly for the piecewise-linear model."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        self._ready()
        if len(self._emax) <= n:
            self._emax = self._emax_table(max(n, 2 * len(self._emax), 8))
        return self._emax[n]

    def _emax_table(self, nmax: int) -> list[float]:
        """E[max of n] for n = 0..nmax in one pass over the pieces of the CDF.

        On a linear piece from F0 to F1 of width h, the integral of F^n is
        h * S_n / (n + 1) with S_n = sum_j F1^j F0^(n-j) = F1^n + F0 * S_(n-1),
        which has no cancellation when F1 is close to F0.
        """
        integ = [0.0] * (nmax + 1)  # integral of F^n over [0, x_end]
        total = self._cumw[self._bins]
        prev_end = 0.0
        x_end = 0.0
        for k in range(self._first, self._last + 1):
            w = self._w[k]
            if w <= 0.0:
                continue
            f0 = self._cumw[k] / total
            f1 = self._cumw[k + 1] / total
            a = self._blo[k]
            b = self._bhi[k]
            gap = a - prev_end
            width = b - a
            p0 = 1.0  # f0^n
            p1 = 1.0  # f1^n
            s = 1.0  # S_n
            for n in range(1, nmax + 1):
                p0 = p0 * f0
                p1 = p1 * f1
                s = p1 + f0 * s
                integ[n] += gap * p0 + width * (s / (n + 1))
            prev_end = b
            x_end = b
        out = [0.0] * (nmax + 1)
        for n in range(1, nmax + 1):
            out[n] = x_end - integ[n]
        return out

    def __repr__(self) -> str:
        if self._n == 0:
            return f"Distribution(bins={self._bins}, empty)"
        return (
            f"Distribution(bins={self._bins}, samples={self._n}, mean={self.mean():.6g}s, "
            f"p99={self.quantile(0.99):.6g}s)"
        )
