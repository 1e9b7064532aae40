"""Open-loop load: send requests at given times whatever the replies, collect every reply.

Used by `orloj-rt demo`, `orloj-rt bench` and the benchmarks. Requests are encoded before
the clock starts, so the generator's own cost per request is a send and a receive. Every
wait is bounded: sending stops after `max_duration_s` (the rest count as `unsent`), and
after the last send replies are awaited for at most `drain_timeout_s`.

Arrival times: `arrival_times` (Poisson, or Gamma with a chosen CoV) and
`trace_arrival_times` (the gaps of a trace's timestamp column, optionally rescaled to a
mean rate); `read_trace` reads a CSV trace's columns.
"""

from __future__ import annotations

import csv
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from orloj_rt.client.codec import decode_header, encode_cancel, encode_infer
from orloj_rt.protocol.wire import new_routing_id

TIME_COLUMN = "TIMESTAMP"
PROGRESS_INTERVAL_S = 0.1


@dataclass
class Outcome:
    """What happened to one request (latency in seconds, as the client saw it)."""

    status: str = "lost"  # "lost": no reply before the drain timeout; "unsent": time ran out
    latency_s: float = 0.0
    met_slo: bool = False
    error: str | None = None
    batch_size: int = 0
    variant: str | None = None  # the model variant that served it (ok replies)


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)
    duration_s: float = 0.0
    extra_replies: int = 0  # replies to ids already answered, or unknown ids (must be 0)
    cancels: dict = field(default_factory=dict)  # request index -> its cancel's result

    @property
    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    @property
    def sent(self) -> int:
        return sum(o.status != "unsent" for o in self.outcomes)

    @property
    def finish_rate(self) -> float:
        """Answered ok within the SLO, over the requests sent."""
        n = self.sent
        return sum(o.status == "ok" and o.met_slo for o in self.outcomes) / n if n else 0.0

    def latency_quantile(self, q: float, status: str = "ok") -> float:
        lat = sorted(o.latency_s for o in self.outcomes if o.status == status)
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(q * len(lat)))]


def run_open_loop(
    endpoint: str,
    requests: list[dict],
    send_times: list[float],
    drain_timeout_s: float = 10.0,
    max_duration_s: float | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    cancel_after: dict[int, float] | None = None,
) -> LoadReport:
    """Sends `requests[i]` (keyword arguments of `encode_infer` without `req_id`) at
    `send_times[i]` seconds after the start, on one DEALER socket.

    `max_duration_s` bounds the sending: requests due later are not sent (`unsent`).
    `progress(sent, answered, total)` is called about every 0.1 s and at the end.
    `cancel_after` {i: seconds}: cancel request i that long after it was due (`op:
    "cancel"`, id n + i); `LoadReport.cancels[i]` is the cancel's result."""
    import zmq

    if len(requests) != len(send_times):
        raise ValueError("give one send time per request")
    frames = [[b"", *encode_infer(i, **r)] for i, r in enumerate(requests)]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, new_routing_id())  # replies survive a reconnect
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    n = len(requests)
    outcomes = [Outcome() for _ in range(n)]
    sent_at = [0.0] * n
    answered = 0
    extra = 0
    cancels: dict[int, str] = {}
    # (due, 0: send / 1: cancel, index), in time order
    events = [(float(t), 0, i) for i, t in enumerate(send_times)]
    events += [(float(send_times[i]) + float(d), 1, i) for i, d in (cancel_after or {}).items()]
    events.sort()

    def receive(timeout_ms: float) -> None:
        nonlocal answered, extra
        if not sock.poll(max(0.0, timeout_ms), zmq.POLLIN):
            return
        while True:
            try:
                reply = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.perf_counter()
            header = decode_header(reply[1])
            rid = header.get("id")
            if isinstance(rid, int) and n <= rid < 2 * n and rid - n not in cancels:
                cancels[rid - n] = header.get("result") or header.get("status", "error")
                continue
            if not isinstance(rid, int) or not 0 <= rid < n or outcomes[rid].status != "lost":
                extra += 1
                continue
            o = outcomes[rid]
            o.status = header.get("status", "error")
            o.latency_s = now - sent_at[rid]
            o.met_slo = bool(header.get("met_slo"))
            o.error = header.get("error")
            o.batch_size = header.get("timing", {}).get("batch_size", 0)
            o.variant = header.get("variant")
            answered += 1

    sent = 0
    cancels_sent = 0
    next_report = 0.0

    def report(force: bool = False) -> None:
        nonlocal next_report
        now = time.perf_counter()
        if progress is not None and (force or now >= next_report):
            next_report = now + PROGRESS_INTERVAL_S
            progress(sent, answered, n)

    try:
        start = time.perf_counter()
        stop_at = start + max_duration_s if max_duration_s is not None else math.inf
        for at, kind, i in events:
            due = start + at
            if due > stop_at:
                break
            while True:
                left = due - time.perf_counter()
                if left <= 0:
                    break
                receive(min(left, PROGRESS_INTERVAL_S) * 1000.0)
                report()
            if kind == 0:
                sent_at[i] = time.perf_counter()
                sock.send_multipart(frames[i], copy=False)
                sent += 1
            else:
                sock.send_multipart([b"", *encode_cancel(n + i, i)], copy=False)
                cancels_sent += 1
            receive(0)
            report()
        for o, t in zip(outcomes, sent_at, strict=True):
            if t == 0.0:
                o.status = "unsent"
        deadline = time.perf_counter() + drain_timeout_s
        while answered < sent or len(cancels) < cancels_sent:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            receive(min(left, 0.1) * 1000.0)
            report()
        duration = time.perf_counter() - start
        # anything that still arrives (a duplicate would) is counted, briefly
        receive(50)
        report(force=True)
    finally:
        sock.close(linger=0)
    return LoadReport(outcomes, duration, extra, cancels)


# ---------------------------------------------------------------------- arrivals
def arrival_times(
    n: int, rate: float, rng: np.random.Generator, process: str = "poisson", cv: float = 1.0
) -> np.ndarray:
    """n send times in seconds, the first at 0: gaps Exponential (`poisson`) or Gamma
    with coefficient of variation `cv` (`gamma`), mean 1/rate."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be > 0, got {rate}")
    if process == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif process == "gamma":
        if not cv > 0:
            raise ValueError(f"the arrival CoV must be > 0, got {cv}")
        shape = 1.0 / (cv * cv)
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    else:
        raise ValueError(f"unknown arrival process {process!r}; use poisson or gamma")
    times = np.cumsum(gaps)
    return times - times[0]


def read_trace(path: str, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """A CSV trace's numeric columns as float arrays (all, or `columns`); a column of ISO
    timestamps (e.g. Azure's TIMESTAMP, up to 7 fractional digits) becomes seconds."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        names = reader.fieldnames or []
        want = list(columns) if columns is not None else names
        missing = [c for c in want if c not in names]
        if missing:
            raise ValueError(f"{path}: no column(s) {missing}; the columns are {names}")
        raw: dict[str, list[str]] = {c: [] for c in want}
        for row in reader:
            for c in want:
                raw[c].append(row[c])
    if not raw or not next(iter(raw.values())):
        raise ValueError(f"{path}: no rows")
    out = {}
    for c, vals in raw.items():
        try:
            out[c] = np.array([float(v) for v in vals])
        except ValueError:
            try:
                out[c] = np.array([datetime.fromisoformat(v.strip()[:26]).timestamp()
                                   for v in vals])  # fmt: skip
            except ValueError:
                if columns is not None:
                    raise ValueError(f"{path}: column {c!r} is neither numbers nor "
                                     "timestamps") from None  # fmt: skip
    return out


def trace_arrival_times(
    timestamps: np.ndarray, n: int, rate: float | None = None, start: int = 0
) -> np.ndarray:
    """n send times from a trace's timestamps: its gaps in file order from row `start`
    (wrapping around), scaled so that the mean gap over the whole file is 1/rate (as
    recorded if rate is None). The first send is at 0."""
    gaps = np.diff(np.asarray(timestamps, dtype=float))
    if len(gaps) < 1 or np.any(gaps < 0):
        raise ValueError("trace timestamps must be non-decreasing, with at least 2 rows")
    mean = gaps.mean()
    if not mean > 0:
        raise ValueError("every trace timestamp is the same")
    if rate is not None:
        gaps = gaps / (mean * rate)
    picked = np.take(gaps, np.arange(start, start + n - 1), mode="wrap")
    return np.concatenate([[0.0], np.cumsum(picked)])


# ---------------------------------------------------------------------- summaries
def summarize(report: LoadReport, apps: Sequence[str] | None = None) -> dict:
    """The figures `orloj-rt bench` prints: throughput, finish rate, status counts,
    latency quantiles (ok replies, client side), per app if `apps` (one per request)."""

    def one(outcomes: list[Outcome]) -> dict:
        sent = [o for o in outcomes if o.status != "unsent"]
        ok = [o for o in sent if o.status == "ok"]
        met = sum(o.met_slo for o in ok)
        lat = np.array(sorted(o.latency_s for o in ok)) * 1e3
        counts = Counter(o.status for o in outcomes)
        dur = report.duration_s

        def q(p: float) -> float | None:
            return float(lat[min(len(lat) - 1, int(p * len(lat)))]) if len(lat) else None

        return {
            "requests": len(outcomes),
            "sent": len(sent),
            "finish_rate": met / len(sent) if sent else 0.0,
            "throughput": len(ok) / dur if dur > 0 else 0.0,
            "goodput": met / dur if dur > 0 else 0.0,
            "counts": {k: counts.get(k, 0)
                       for k in ("ok", "dropped", "rejected", "error", "lost", "unsent")},
            "late": len(ok) - met,
            "latency_ms": {"p50": q(0.5), "p99": q(0.99),
                           "mean": float(lat.mean()) if len(lat) else None},
            "mean_batch": float(np.mean([o.batch_size for o in ok])) if ok else 0.0,
        }  # fmt: skip

    out = one(report.outcomes)
    out["duration_s"] = report.duration_s
    out["extra_replies"] = report.extra_replies
    if apps is not None and len(set(apps)) > 1:
        by: dict[str, list[Outcome]] = {}
        for app, o in zip(apps, report.outcomes, strict=True):
            by.setdefault(app, []).append(o)
        out["apps"] = {app: one(os) for app, os in sorted(by.items())}
    return out
