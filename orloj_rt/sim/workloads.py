"""Synthetic and trace workloads for the simulator: solo times, arrivals, deadlines.

Every definition here is exact on purpose, so that others can reproduce our figures; it is
written out in docs/simulation.md. Times are in *time units*: a request's mean solo
execution time is 1 unit.

Solo execution time X (each kind normalised by its true mean, so that E[X] = 1):

    static      Normal(1, 0.02): CoV 0.02, truncated at 0.01
    bimodal     early exit: 70% short, 0.3 * (1 + Normal(0, 0.05)),
                            30% long,  1.0 * (1 + Normal(0, 0.10)),
                truncated at 0.01, then divided by 0.51 (= 0.7 * 0.3 + 0.3 * 1.0)
    lognormal   LogNormal with mean 1 and CoV 1: sigma^2 = ln 2, mu = -sigma^2 / 2
    trace       a numeric CSV column plus a constant offset (default 8), divided by the
                column's mean plus the offset over the whole file; requests draw rows
                uniformly with replacement, or in file order with trace arrivals
    encoder     a variable-length encoder whose cost follows its length: L tokens,
                ceil(LogNormal with median 32 and CoV 1), clipped to 1..512; solo time
                (8 + L) * (1 + Normal(0, 0.05)), truncated at 0.01, divided by the mean
                of that law (`encoder_mean()`: 10^6 draws of a fixed seed)

Arrivals at load L (the mean gap is 1/L units):

    poisson     exponential gaps
    gamma       Gamma gaps with coefficient of variation `arrival_cv`
    trace       the gaps between consecutive timestamps of a CSV column, from a seeded
                start row (wrapping around), multiplied so that the file's mean gap is 1/L

The first request arrives one gap after time 0. Deadline = arrival + SLO.

Cost hints (optional, `hint_cv`): a per-request number known at arrival that predicts the
solo time, like an input length or a length predictor's output. Here the hint is the true
solo time times an independent LogNormal factor with mean 1 and coefficient of variation
`hint_cv` (0.3: a good predictor; 1.0: a poor one); for `encoder` it is the request's
length L times that factor (`hint_cv` 0: the length itself, as a server derives it from
the input, docs/models.md). Policies that cannot use hints ignore
them; the prior sample gets hints drawn the same way, so that a policy can learn what a
hint says about the solo time.

Random streams: `numpy.random.SeedSequence(seed).spawn(5)` gives five independent
generators: the arrivals, the request costs, the policies' prior sample, the requests'
hint noise and the prior's hint noise. Turning hints on changes nothing else.

Multi-app cells (`app_mix`, orloj_rt/sim/mix.py): one arrival stream at load L, each
request's app drawn independently by the apps' shares; app i's request costs are its law
(the workload kind's, mean 1) times its `mean`, and its deadline is arrival + slo x mean.
The prior sample is the mixture: each draw picks an app by share, then that app's law.
Streams: `SeedSequence(seed).spawn(6 + 2k)` for k apps: the arrivals are the first (as
above; the next four go unused), the sixth picks the apps (the requests', then the prior
sample's), then app i's request costs come from stream 6 + 2i and its prior draws from
7 + 2i (counting from 0).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import numpy as np

from orloj_rt.sim.mix import AppSpec

SOLO_KINDS = ("static", "bimodal", "lognormal", "trace", "encoder")
ARRIVAL_KINDS = ("poisson", "gamma", "trace")
#: `WorkloadSpec.solo` of a multi-app cell: each app has its own law (`app_mix`)
MIX = "mix"

STATIC_COV = 0.02
BIMODAL_SHORT_SHARE = 0.7
BIMODAL_SHORT, BIMODAL_SHORT_COV = 0.3, 0.05
BIMODAL_LONG, BIMODAL_LONG_COV = 1.0, 0.10
BIMODAL_MEAN = BIMODAL_SHORT_SHARE * BIMODAL_SHORT + (1 - BIMODAL_SHORT_SHARE) * BIMODAL_LONG
LOGNORMAL_COV = 1.0
TRACE_OFFSET = 8.0
ENCODER_MEDIAN_TOKENS, ENCODER_TOKENS_COV, ENCODER_MAX_TOKENS = 32.0, 1.0, 512
ENCODER_OFFSET, ENCODER_JITTER = 8.0, 0.05  # per-request fixed cost (in tokens), noise
# Jitter is Gaussian; truncating at a small positive time keeps every solo time > 0 (a
# 0.3 short mode would need a 20-sigma draw to reach it, so the means do not move).
MIN_SOLO = 0.01

#: The trace that the benchmark's `azure-conv` workload replays (beside the project).
DEFAULT_TRACE = Path(__file__).resolve().parents[2].parent / "shared/data/azure-llm-2023/conv.csv"
DEFAULT_TIME_COL = "TIMESTAMP"
DEFAULT_COST_COL = "GeneratedTokens"


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything that defines the requests of one simulation (see the module docstring)."""

    solo: str = "lognormal"
    slo: float = 5.0  # in units of the mean solo time
    load: float = 2.0  # arrivals per unit of time
    requests: int = 4000
    seed: int = 0
    arrival: str = "poisson"
    arrival_cv: float = 1.0  # for gamma arrivals
    trace: str | None = None  # CSV file for trace costs and trace arrivals
    time_col: str = DEFAULT_TIME_COL
    cost_col: str = DEFAULT_COST_COL
    trace_offset: float = TRACE_OFFSET
    apps: int = 1  # requests are spread round-robin over apps "app0", "app1", ...
    prior_samples: int = 20_000
    hint_cv: float | None = None  # cost hints' noise (see the module docstring); None: none
    # a multi-app cell (orloj_rt/sim/mix.py): each app's law, SLO and share of arrivals;
    # `solo` is then "mix" and `slo` unused
    app_mix: tuple[AppSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.app_mix:
            self._check_mix()
        elif self.solo not in SOLO_KINDS:
            raise ValueError(f"unknown workload {self.solo!r}; choose one of {SOLO_KINDS}")
        if self.arrival not in ARRIVAL_KINDS:
            raise ValueError(f"unknown arrival {self.arrival!r}; choose one of {ARRIVAL_KINDS}")
        if not (self.slo > 0 and math.isfinite(self.slo)):
            raise ValueError(f"the SLO multiple must be > 0, got {self.slo!r}")
        if not (self.load > 0 and math.isfinite(self.load)):
            raise ValueError(f"the load must be > 0 arrivals per time unit, got {self.load!r}")
        if self.requests < 1:
            raise ValueError(f"need at least one request, got {self.requests!r}")
        if self.arrival == "gamma" and not self.arrival_cv > 0:
            raise ValueError(f"gamma arrivals need --arrival-cv > 0, got {self.arrival_cv!r}")
        uses_trace = self.solo == "trace" or any(a.workload == "trace" for a in self.app_mix)
        if (uses_trace or self.arrival == "trace") and not self.trace:
            raise ValueError("trace costs or trace arrivals need a trace file (--trace FILE)")
        if self.apps < 1:
            raise ValueError(f"need at least one app, got {self.apps!r}")
        if self.prior_samples < 1:
            raise ValueError(f"the prior needs at least one sample, got {self.prior_samples!r}")
        if self.hint_cv is not None and not (self.hint_cv >= 0 and math.isfinite(self.hint_cv)):
            raise ValueError(f"hint_cv must be a finite CoV >= 0, got {self.hint_cv!r}")

    def _check_mix(self) -> None:
        if self.solo != MIX:
            raise ValueError(f"an app mix needs solo={MIX!r} (each app has its own law), "
                             f"got {self.solo!r}")
        if not all(isinstance(a, AppSpec) for a in self.app_mix):
            raise ValueError("app_mix must hold AppSpec objects (orloj_rt.sim.mix.parse_apps)")
        names = [a.name for a in self.app_mix]
        if len(set(names)) != len(names):
            raise ValueError(f"app names must be distinct, got {names}")
        total = sum(a.share for a in self.app_mix)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"the apps' shares must sum to 1, got {total!r}")
        if self.apps != 1:
            raise ValueError("apps (round-robin app tags) and app_mix exclude each other")
        if self.hint_cv is not None:
            raise ValueError("cost hints (--hint-cv) are not supported in a multi-app cell")


@dataclass
class Requests:
    """The generated requests, ordered by arrival. Arrays are indexed by request id."""

    arrival: np.ndarray
    deadline: np.ndarray
    solo: np.ndarray  # true solo execution time (units)
    app: list[str]
    prior: np.ndarray  # an independent sample of the solo-time law, for the policies
    spec: WorkloadSpec = field(repr=False, default_factory=WorkloadSpec)
    hint: np.ndarray | None = None  # per-request cost hints, when the spec asks for them
    prior_hint: np.ndarray | None = None  # the prior sample's hints

    def __len__(self) -> int:
        return len(self.arrival)


# ------------------------------------------------------------------------ trace files
@lru_cache(maxsize=8)
def _read_column(path: str, column: str, kind: str) -> np.ndarray:
    """A CSV column as floats; `kind` "time" parses ISO timestamps into seconds."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(
                f"{path}: no column {column!r}; the columns are {reader.fieldnames}"
            )
        raw = [row[column] for row in reader]
    if not raw:
        raise ValueError(f"{path}: no rows")
    if kind == "time":
        try:
            values = [float(v) for v in raw]
        except ValueError:
            # ISO timestamps with up to 7 fractional digits (Azure's); keep microseconds
            values = [datetime.fromisoformat(v.strip()[:26]).timestamp() for v in raw]
    else:
        values = [float(v) for v in raw]
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{path}: column {column!r} has values that are not finite")
    return arr


def trace_costs(spec: WorkloadSpec) -> np.ndarray:
    """The trace's cost column plus the offset, normalised to mean 1 over the whole file."""
    col = _read_column(str(spec.trace), spec.cost_col, "number") + spec.trace_offset
    if np.any(col <= 0):
        raise ValueError(f"{spec.trace}: {spec.cost_col} + offset must be > 0 for every row")
    return col / col.mean()


def trace_gaps(spec: WorkloadSpec) -> np.ndarray:
    """The trace's inter-arrival gaps (in file order), scaled to a mean gap of 1/load."""
    ts = _read_column(str(spec.trace), spec.time_col, "time")
    gaps = np.diff(ts)
    if len(gaps) < 1 or np.any(gaps < 0):
        raise ValueError(f"{spec.trace}: {spec.time_col} must be non-decreasing, >= 2 rows")
    mean = gaps.mean()
    if not mean > 0:
        raise ValueError(f"{spec.trace}: every timestamp in {spec.time_col} is the same")
    return gaps / (mean * spec.load)


# ------------------------------------------------------------------------ solo times
def sample_solo(spec: WorkloadSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """n independent solo times of the workload's law (mean 1)."""
    return sample_law(spec.solo, spec, rng, n)


def sample_law(kind: str, spec: WorkloadSpec, rng: np.random.Generator, n: int) -> np.ndarray:
    """n independent solo times of law `kind` (mean 1); `spec` gives the trace's file."""
    if kind == "static":
        x = rng.normal(1.0, STATIC_COV, n)
        return np.maximum(x, MIN_SOLO)
    if kind == "bimodal":
        short = rng.random(n) < BIMODAL_SHORT_SHARE
        jitter = rng.normal(0.0, 1.0, n)
        x = np.where(
            short,
            BIMODAL_SHORT * (1.0 + BIMODAL_SHORT_COV * jitter),
            BIMODAL_LONG * (1.0 + BIMODAL_LONG_COV * jitter),
        )
        return np.maximum(x, MIN_SOLO) / BIMODAL_MEAN
    if kind == "lognormal":
        sigma2 = math.log1p(LOGNORMAL_COV**2)
        return rng.lognormal(-sigma2 / 2.0, math.sqrt(sigma2), n)
    if kind == "encoder":
        return encoder_draw(rng, n)[0]
    costs = trace_costs(spec)
    return costs[rng.integers(0, len(costs), n)]


def encoder_draw(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n requests of the `encoder` law: (solo times, mean 1; their lengths in tokens)."""
    sigma2 = math.log1p(ENCODER_TOKENS_COV**2)
    raw = rng.lognormal(math.log(ENCODER_MEDIAN_TOKENS), math.sqrt(sigma2), n)
    length = np.clip(np.ceil(raw), 1, ENCODER_MAX_TOKENS)
    x = (ENCODER_OFFSET + length) * (1.0 + ENCODER_JITTER * rng.normal(0.0, 1.0, n))
    return np.maximum(x / encoder_mean(), MIN_SOLO), length


@lru_cache(maxsize=1)
def encoder_mean() -> float:
    """The mean of the `encoder` law before normalising (10^6 draws of seed 12345)."""
    rng = np.random.default_rng(12345)
    sigma2 = math.log1p(ENCODER_TOKENS_COV**2)
    raw = rng.lognormal(math.log(ENCODER_MEDIAN_TOKENS), math.sqrt(sigma2), 1_000_000)
    length = np.clip(np.ceil(raw), 1, ENCODER_MAX_TOKENS)
    return float(np.mean(ENCODER_OFFSET + length))


# ------------------------------------------------------------------------ arrivals
def sample_arrivals(spec: WorkloadSpec, rng: np.random.Generator, n: int) -> tuple[np.ndarray, int]:
    """Arrival times of n requests, and the first trace row used (0 unless trace)."""
    if spec.arrival == "poisson":
        gaps = rng.exponential(1.0 / spec.load, n)
        start = 0
    elif spec.arrival == "gamma":
        shape = 1.0 / spec.arrival_cv**2
        gaps = rng.gamma(shape, 1.0 / (spec.load * shape), n)
        start = 0
    else:
        all_gaps = trace_gaps(spec)
        start = int(rng.integers(0, len(all_gaps)))
        gaps = np.take(all_gaps, np.arange(start, start + n), mode="wrap")
    return np.cumsum(gaps), start


def noisy_hints(solo: np.ndarray, cv: float, rng: np.random.Generator) -> np.ndarray:
    """Each solo time (or length) times an independent LogNormal factor with mean 1 and
    CoV `cv`."""
    if cv == 0:
        return solo.copy()
    sigma2 = math.log1p(cv * cv)
    return solo * rng.lognormal(-sigma2 / 2.0, math.sqrt(sigma2), len(solo))


def generate(spec: WorkloadSpec) -> Requests:
    """The requests of one simulation, and the policies' prior sample."""
    if spec.app_mix:
        return generate_mix(spec)
    arrival_rng, cost_rng, prior_rng, hint_rng, prior_hint_rng = (
        np.random.Generator(np.random.PCG64(s))
        for s in np.random.SeedSequence(spec.seed).spawn(5)
    )
    n = spec.requests
    arrival, start = sample_arrivals(spec, arrival_rng, n)
    length = prior_length = None
    if spec.solo == "encoder":  # the hint is the length (times the hint noise)
        solo, length = encoder_draw(cost_rng, n)
        prior, prior_length = encoder_draw(prior_rng, spec.prior_samples)
    elif spec.solo == "trace" and spec.arrival == "trace":
        # replay the trace's own pairing of arrivals and costs, row by row
        costs = trace_costs(spec)
        solo = np.take(costs, np.arange(start + 1, start + 1 + n), mode="wrap")
    else:
        solo = sample_solo(spec, cost_rng, n)
    if length is None:
        prior = sample_solo(spec, prior_rng, spec.prior_samples)
    apps = [f"app{i % spec.apps}" for i in range(n)] if spec.apps > 1 else ["default"] * n
    hint = prior_hint = None
    if spec.hint_cv is not None:
        hint = noisy_hints(solo if length is None else length, spec.hint_cv, hint_rng)
        prior_hint = noisy_hints(prior if prior_length is None else prior_length,
                                 spec.hint_cv, prior_hint_rng)  # fmt: skip
    return Requests(
        arrival=arrival,
        deadline=arrival + spec.slo,
        solo=solo,
        app=apps,
        prior=prior,
        spec=spec,
        hint=hint,
        prior_hint=prior_hint,
    )


def generate_mix(spec: WorkloadSpec) -> Requests:
    """A multi-app cell's requests: one arrival stream split by the apps' shares (the
    module docstring). `Requests.app` carries each request's app name."""
    mix = spec.app_mix
    k = len(mix)
    streams = [np.random.Generator(np.random.PCG64(s))
               for s in np.random.SeedSequence(spec.seed).spawn(6 + 2 * k)]
    arrival_rng, app_rng = streams[0], streams[5]
    n = spec.requests
    arrival, _ = sample_arrivals(spec, arrival_rng, n)
    shares = np.asarray([a.share for a in mix], dtype=np.float64)
    shares = shares / shares.sum()
    which = app_rng.choice(k, size=n, p=shares)
    prior_which = app_rng.choice(k, size=spec.prior_samples, p=shares)
    solo = np.empty(n, dtype=np.float64)
    slo = np.empty(n, dtype=np.float64)
    prior = np.empty(spec.prior_samples, dtype=np.float64)
    for i, app in enumerate(mix):
        mine = np.flatnonzero(which == i)
        solo[mine] = app.mean * sample_law(app.workload, spec, streams[6 + 2 * i], len(mine))
        slo[mine] = app.slo_units
        mine = np.flatnonzero(prior_which == i)
        prior[mine] = app.mean * sample_law(app.workload, spec, streams[7 + 2 * i], len(mine))
    names = [a.name for a in mix]
    return Requests(
        arrival=arrival,
        deadline=arrival + slo,
        solo=solo,
        app=[names[i] for i in which.tolist()],
        prior=prior,
        spec=spec,
    )
