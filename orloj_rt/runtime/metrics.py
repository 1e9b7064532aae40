"""Serving metrics: cheap accumulators in the serving processes, Prometheus families on scrape.

    frontend: per (model, app) status counts, SLO met/late, queue / execution / end-to-end
              histograms; per model the batch-size histogram; ring occupancy; workers
    scheduler: per model the decision-time histogram, the queue length and what it learned
              (per app and per cost-hint class), sent to the frontend in its once-a-second
              `SchedulerStats` (messages.py)
        |
        |  `stats` with "metrics": true (the wire protocol's own control op, answered by the
        |  frontend from its state at once), over the instance-internal endpoint
        v
    gateway process (http_gateway.py): GET /metrics -> one `stats` round trip ->
              `SnapshotCollector` turns the snapshot into Prometheus metric families ->
              prometheus_client's encoder (text or OpenMetrics, by the Accept header)

Why this split, measured (docs/metrics.md): recording is on the hot path of the frontend,
the instance's busiest process, so it is plain attribute increments and a `bisect` per
histogram; no locks, no label lookups, no library. prometheus_client's own
`Counter.labels(...).inc()` costs several times as much per call, and its multi-process
mode (an mmap file per process and metric) more again. The library is used where it is
good and off the hot path: the exposition format, content negotiation, and naming.

This module imports nothing heavy at import time: the scheduler and the frontend import
the accumulators; only the gateway imports prometheus_client (in `SnapshotCollector`).
The metric names and their meanings are listed in docs/metrics.md.
"""

from __future__ import annotations

import heapq
from typing import Any

from orloj_rt.protocol.stats import (  # noqa: F401 - the buckets are part of /metrics
    BATCH_SIZE_BUCKETS,
    DECISION_BUCKETS_S,
    LATENCY_BUCKETS_S,
    MAX_APPS_PER_MODEL,
    Histogram,
    jain,
)
from orloj_rt.protocol.wire import MAX_APP_LEN

OTHER_APP = "_other"  # the label of every app beyond MAX_APPS_PER_MODEL
UNATTRIBUTED = ""  # model and app label of requests too malformed to name a model

STATUSES = ("ok", "dropped", "rejected", "error", "cancelled")


class AppMetrics:
    """One (model, app): answered requests by status, and the ok ones' times."""

    __slots__ = ("ok", "dropped", "rejected", "error", "cancelled", "met", "late", "queue",
                 "exec", "latency")  # fmt: skip

    def __init__(self) -> None:
        self.ok = self.dropped = self.rejected = self.error = self.cancelled = 0
        self.met = self.late = 0
        self.queue = Histogram(LATENCY_BUCKETS_S)
        self.exec = Histogram(LATENCY_BUCKETS_S)
        self.latency = Histogram(LATENCY_BUCKETS_S)

    def record_ok(self, queue_s: float, exec_s: float, total_s: float, met: bool) -> None:
        self.ok += 1
        if met:
            self.met += 1
        else:
            self.late += 1
        self.queue.observe(queue_s)
        self.exec.observe(exec_s)
        self.latency.observe(total_s)

    def count(self, status: str) -> None:
        """A request answered without running (dropped, rejected), cancelled by its client
        (cancelled), or failed (error)."""
        if status == "dropped":
            self.dropped += 1
        elif status == "rejected":
            self.rejected += 1
        elif status == "cancelled":
            self.cancelled += 1
        else:
            self.error += 1

    def finish_rate(self) -> float | None:
        """ok within the SLO over the answered requests (cancelled left out, as in the
        `stats` reply's finish_rate); None before the first answer."""
        answered = self.ok + self.dropped + self.rejected + self.error
        return self.met / answered if answered else None

    def snapshot(self) -> dict:
        return {
            "requests": {"ok": self.ok, "dropped": self.dropped, "rejected": self.rejected,
                         "error": self.error, "cancelled": self.cancelled},  # fmt: skip
            "met_slo": self.met,
            "late": self.late,
            "queue_s": self.queue.snapshot(),
            "exec_s": self.exec.snapshot(),
            "latency_s": self.latency.snapshot(),
        }


class ModelMetrics:
    """One model: its apps (at most MAX_APPS_PER_MODEL, then OTHER_APP) and batch sizes."""

    __slots__ = ("name", "apps", "batch_size")

    def __init__(self, name: str) -> None:
        self.name = name
        self.apps: dict[str, AppMetrics] = {}
        self.batch_size = Histogram(BATCH_SIZE_BUCKETS)

    def app(self, app: Any) -> AppMetrics:
        am = self.apps.get(app) if isinstance(app, str) else None  # (a list is unhashable)
        if am is not None:
            return am
        if not isinstance(app, str) or not app or len(app) > MAX_APP_LEN:
            app = UNATTRIBUTED  # not a valid app: the request is answered `error`
        elif len(self.apps) >= MAX_APPS_PER_MODEL:
            app = OTHER_APP
        am = self.apps.get(app)
        if am is None:
            am = self.apps[app] = AppMetrics()
        return am


class FrontendMetrics:
    """Everything the frontend records per request (see the module docstring)."""

    def __init__(self, model_names: list[str]) -> None:
        self.models = [ModelMetrics(n) for n in model_names]
        # requests that name no served model, or cannot be read far enough to say which
        self.unattributed = AppMetrics()

    def snapshot(self, models: list, cluster) -> dict:
        """The `metrics` part of a `stats` answer. `models` are the frontend's model states
        (name, free, ring, scheduler); `cluster` its last `ClusterState`."""
        out: dict[str, Any] = {
            "buckets": {"latency_s": list(LATENCY_BUCKETS_S),
                        "decision_s": list(DECISION_BUCKETS_S),
                        "batch_size": list(BATCH_SIZE_BUCKETS)},  # fmt: skip
            "workers": cluster.workers,
            "workers_ready": cluster.workers_ready,
            "worker_restarts": dict(cluster.restarts or {"crashed": 0, "hung": 0}),
            "pids": cluster.pids,
            "unattributed": self.unattributed.snapshot(),
            "models": {},
        }
        for m, mm in zip(models, self.models, strict=True):
            n_slots = m.ring.layout.n_slots
            sched = m.scheduler or {}
            rates = [r for r in (am.finish_rate() for am in mm.apps.values()) if r is not None]
            out["models"][m.name] = {
                "apps": {app: am.snapshot() for app, am in mm.apps.items()},
                # Jain's index of the apps' finish rates (issue 17's fairness): 1 when
                # every app finishes the same share; None with fewer than two apps
                "jain": jain(rates) if len(rates) >= 2 else None,
                "batch_size": mm.batch_size.snapshot(),
                "ring_slots": n_slots,
                "ring_in_use": n_slots - len(m.free),
                "queued": sched.get("queued"),
                "decision_s": sched.get("decision_s"),
                "hint_classes": hint_class_rows(sched),
            }
        return out


def hint_class_rows(sched: dict) -> list:
    """The per-class part of a model's snapshot, from its scheduler stats (ModelCore.stats:
    `hint_classes` lists each hinted app's classes, `apps` each class app's learning):
    [app, k, hint_from, samples, mean_solo_s] per class, hint_from None for the first class,
    samples and mean None where `apps` does not list the class app (the scheduler lists
    at most STATS_MAX_APPS apps), mean None without samples. At most MAX_APPS_PER_MODEL
    hinted apps, those that have seen the most hints (then by name), as app labels are
    capped; an app before its first fit has no classes and no rows."""
    hinted = sched.get("hint_classes")
    if not hinted:
        return []
    learned = sched.get("apps") or {}
    items = hinted.items()
    if len(hinted) > MAX_APPS_PER_MODEL:
        items = heapq.nsmallest(MAX_APPS_PER_MODEL, items,
                                key=lambda kv: (-kv[1].get("hints_seen", 0), kv[0]))  # fmt: skip
    rows = []
    for app, info in items:
        for k, cls in enumerate(info.get("classes") or ()):
            rec = learned.get(cls.get("app"))
            samples = rec.get("samples") if rec else None
            mean = rec["mean_solo_ms"] * 1e-3 if samples else None
            rows.append([app, k, cls.get("hint_from"), samples, mean])
    return rows


# ---------------------------------------------------------------------- exposition
def _buckets(bounds: list, flat: list) -> tuple[list, float]:
    """[counts..., sum] -> cumulative (le, count) pairs ending with +Inf, and the sum."""
    counts, total = flat[:-1], flat[-1]
    out, acc = [], 0
    for le, c in zip([*(_le(b) for b in bounds), "+Inf"], counts, strict=True):
        acc += c
        out.append((le, acc))
    return out, total


def _le(bound: float) -> str:
    return repr(float(bound))  # Prometheus writes le as a float: "0.005", "1.0"


class SnapshotCollector:
    """A prometheus_client collector over the last `stats` snapshot (set before each
    scrape's encoding, in the same event-loop step, so that one scrape sees one snapshot).

    `processes`: extra {label: pid} to report CPU and memory for (the gateway itself)."""

    def __init__(self, processes: dict[str, int] | None = None) -> None:
        self.snapshot: dict | None = None
        self.processes = dict(processes or {})
        self._ps: dict[int, Any] = {}  # pid -> psutil.Process (keeps cpu_times cheap)

    def describe(self) -> list:
        return []  # collected at scrape time only (no families at registration)

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        snap = self.snapshot
        up = GaugeMetricFamily("orloj_up", "1 if the frontend answered this scrape's "
                               "snapshot request in time, else 0")  # fmt: skip
        up.add_metric([], 1.0 if snap is not None else 0.0)
        yield up
        if snap is None:
            return
        yield from self._requests(snap)
        yield from self._model_gauges(snap)
        yield from self._hint_classes(snap)
        yield from self._processes(snap)

    def _requests(self, snap: dict):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        lat_bounds = snap["buckets"]["latency_s"]
        requests = CounterMetricFamily(
            "orloj_requests", "Infer requests answered, by model, app and status "
            "(ok, dropped, rejected, error)", labels=["model", "app", "status"])  # fmt: skip
        met = CounterMetricFamily(
            "orloj_requests_finished_within_slo", "Requests answered ok within their SLO",
            labels=["model", "app"])  # fmt: skip
        late = CounterMetricFamily(
            "orloj_requests_late", "Requests answered ok, but after their SLO",
            labels=["model", "app"])  # fmt: skip
        hists = {
            "queue_s": HistogramMetricFamily(
                "orloj_request_queue_seconds", "From arrival at the frontend until a worker "
                "began the request's batch (ok requests)", labels=["model", "app"]),
            "exec_s": HistogramMetricFamily(
                "orloj_request_execution_seconds", "The worker's time for the batch the "
                "request ran in (ok requests)", labels=["model", "app"]),
            "latency_s": HistogramMetricFamily(
                "orloj_request_latency_seconds", "From arrival at the frontend until the "
                "reply was sent (ok requests)", labels=["model", "app"]),
        }  # fmt: skip
        batch = HistogramMetricFamily("orloj_batch_size", "Requests per batch run",
                                      labels=["model"])  # fmt: skip
        decision = HistogramMetricFamily(
            "orloj_scheduler_decision_seconds", "Time of one scheduling decision "
            "(policy.decide) in the scheduler", labels=["model"])  # fmt: skip
        rows = [(name, app, a) for name, mm in snap["models"].items()
                for app, a in mm["apps"].items()]  # fmt: skip
        rows.append((UNATTRIBUTED, UNATTRIBUTED, snap["unattributed"]))
        for model, app, a in rows:
            for status in STATUSES:
                requests.add_metric([model, app, status], a["requests"].get(status, 0))
            if model == UNATTRIBUTED:
                continue
            met.add_metric([model, app], a["met_slo"])
            late.add_metric([model, app], a["late"])
            for key, fam in hists.items():
                buckets, total = _buckets(lat_bounds, a[key])
                fam.add_metric([model, app], buckets, total)
        for model, mm in snap["models"].items():
            buckets, total = _buckets(snap["buckets"]["batch_size"], mm["batch_size"])
            batch.add_metric([model], buckets, total)
            if mm.get("decision_s"):
                buckets, total = _buckets(snap["buckets"]["decision_s"], mm["decision_s"])
                decision.add_metric([model], buckets, total)
        yield requests
        yield met
        yield late
        yield from hists.values()
        yield batch
        yield decision

    def _model_gauges(self, snap: dict):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        queue = GaugeMetricFamily("orloj_queue_length", "Requests queued in the scheduler, "
                                  "not yet in a batch (refreshed once a second)",
                                  labels=["model"])  # fmt: skip
        in_use = GaugeMetricFamily("orloj_ring_slots_in_use", "Input ring slots held by "
                                   "requests in flight", labels=["model"])  # fmt: skip
        slots = GaugeMetricFamily("orloj_ring_slots", "Input ring slots (requests in flight "
                                  "beyond this are rejected)", labels=["model"])  # fmt: skip
        fair = GaugeMetricFamily(
            "orloj_apps_finish_rate_jain", "Jain's index of the finish rates (ok within the "
            "SLO over answered) of a model's apps: 1 when all finish the same share, 1/n when "
            "one app has every finish (absent with fewer than two apps)",
            labels=["model"])  # fmt: skip
        for model, mm in snap["models"].items():
            if mm.get("queued") is not None:
                queue.add_metric([model], mm["queued"])
            if mm.get("jain") is not None:
                fair.add_metric([model], mm["jain"])
            in_use.add_metric([model], mm["ring_in_use"])
            slots.add_metric([model], mm["ring_slots"])
        workers = GaugeMetricFamily("orloj_workers", "Worker processes of the instance")
        workers.add_metric([], snap["workers"])
        ready = GaugeMetricFamily("orloj_workers_ready", "Workers warmed up and serving")
        ready.add_metric([], snap["workers_ready"])
        restarts = CounterMetricFamily(
            "orloj_worker_restarts", "Worker restarts since the start, by cause: crashed (the "
            "process died) or hung (killed after --hang-timeout)", labels=["cause"])  # fmt: skip
        for cause, n in sorted(snap.get("worker_restarts", {}).items()):
            restarts.add_metric([cause], n)
        yield from (queue, in_use, slots, fair, workers, ready, restarts)

    def _hint_classes(self, snap: dict):
        """Per cost-hint class (serving/hints.py): what the scheduler learned of it."""
        from prometheus_client.core import GaugeMetricFamily

        labels = ["model", "app", "class"]
        samples = GaugeMetricFamily(
            "orloj_hint_class_samples", "Solo times the scheduler has learned a cost-hint "
            "class's distribution from (restarts from the kept samples in its range when "
            "the class edges are refitted)", labels=labels)  # fmt: skip
        mean = GaugeMetricFamily(
            "orloj_hint_class_mean_solo_seconds", "Mean solo time of a cost-hint class's "
            "requests, as the scheduler learned it", labels=labels)  # fmt: skip
        edge = GaugeMetricFamily(
            "orloj_hint_class_edge", "Lowest hint of a cost-hint class: class k holds the "
            "hints from its edge up to the next class's (class 0 has none)",
            labels=labels)  # fmt: skip
        for model, mm in snap["models"].items():
            for app, k, hint_from, n, mean_s in mm.get("hint_classes") or ():
                key = [model, app, str(k)]
                if n is not None:
                    samples.add_metric(key, n)
                if mean_s is not None:
                    mean.add_metric(key, mean_s)
                if hint_from is not None:
                    edge.add_metric(key, hint_from)
        yield from (samples, mean, edge)

    def _processes(self, snap: dict):
        """CPU time and resident memory of each process of the instance (psutil)."""
        import psutil
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pids = snap.get("pids") or {}
        named = {role: pids.get(role, 0) for role in ("supervisor", "frontend", "scheduler")}
        for i, pid in enumerate(pids.get("workers") or []):
            named[f"worker-{i}"] = pid
        named.update(self.processes)
        cpu = CounterMetricFamily("orloj_process_cpu_seconds", "CPU time (user + system) of "
                                  "each process of the instance", labels=["process"])  # fmt: skip
        rss = GaugeMetricFamily("orloj_process_resident_memory_bytes", "Resident memory of "
                                "each process of the instance", labels=["process"])  # fmt: skip
        for name, pid in named.items():
            if not pid:
                continue
            try:
                p = self._ps.get(pid)
                if p is None:
                    p = self._ps[pid] = psutil.Process(pid)
                with p.oneshot():
                    t = p.cpu_times()
                    mem = p.memory_info().rss
            except psutil.Error:
                self._ps.pop(pid, None)
                continue
            cpu.add_metric([name], t.user + t.system)
            rss.add_metric([name], mem)
        live = set(named.values())
        for pid in [p for p in self._ps if p not in live]:  # e.g. a restarted worker's old pid
            del self._ps[pid]
        yield cpu
        yield rss
