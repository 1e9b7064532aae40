"""The metrics accumulators and the Prometheus collector, without a server (the live
scrape is in test_http_gateway.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from orloj_rt.protocol import messages as msgs
from orloj_rt.runtime.metrics import (
    BATCH_SIZE_BUCKETS,
    LATENCY_BUCKETS_S,
    MAX_APPS_PER_MODEL,
    OTHER_APP,
    UNATTRIBUTED,
    FrontendMetrics,
    Histogram,
    SnapshotCollector,
)

prometheus_client = pytest.importorskip("prometheus_client")


def test_histogram_buckets_follow_prometheus_le():
    h = Histogram((1.0, 2.0, 5.0))
    for x in (0.5, 1.0, 1.5, 2.0, 4.0, 9.0, float("nan")):  # le: x <= bound; NaN goes first
        h.observe(x)
    assert h.counts == [3, 2, 1, 1]
    assert h.snapshot()[:-1] == [3, 2, 1, 1]


def test_apps_are_capped_and_invalid_apps_unattributed():
    fm = FrontendMetrics(["m"])
    mm = fm.models[0]
    for i in range(MAX_APPS_PER_MODEL + 10):
        mm.app(f"app{i}").ok += 1
    assert len(mm.apps) == MAX_APPS_PER_MODEL + 1  # the cap, and the overflow label
    assert mm.apps[OTHER_APP].ok == 10
    assert mm.app(7) is mm.app("") is mm.app("x" * 1000) is mm.apps[UNATTRIBUTED]


def _frontend_models():
    ring = SimpleNamespace(layout=SimpleNamespace(n_slots=8))
    return [SimpleNamespace(name="m", free=[0, 1, 2], ring=ring,
                            scheduler={"queued": 4, "decision_s": [1] + [0] * 13 + [2e-6]})]


def _families(registry) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    text = prometheus_client.generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(fams: dict, family: str, sample: str, **labels) -> float:
    for s in fams[family].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((sample, labels))


def test_collector_exposes_every_family_with_counts():
    fm = FrontendMetrics(["m"])
    a = fm.models[0].app("search")
    a.record_ok(0.001, 0.002, 0.004, met=True)
    a.record_ok(0.010, 0.020, 0.040, met=False)
    a.count("dropped")
    a.count("rejected")
    a.count("error")
    fm.unattributed.error += 2
    fm.models[0].batch_size.observe(3)
    cluster = msgs.ClusterState("ok", 2, 1, {"supervisor": 0, "frontend": 0, "scheduler": 0,
                                             "workers": []})  # fmt: skip
    snap = fm.snapshot(_frontend_models(), cluster)
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    collector = SnapshotCollector()
    registry.register(collector)
    collector.snapshot = snap
    fams = _families(registry)

    assert _value(fams, "orloj_up", "orloj_up") == 1
    req = "orloj_requests_total"
    assert _value(fams, "orloj_requests", req, model="m", app="search", status="ok") == 2
    for status in ("dropped", "rejected", "error"):
        assert _value(fams, "orloj_requests", req, model="m", app="search", status=status) == 1
    assert _value(fams, "orloj_requests", req, model="", app="", status="error") == 2
    assert _value(fams, "orloj_requests_finished_within_slo",
                  "orloj_requests_finished_within_slo_total", model="m") == 1  # fmt: skip
    assert _value(fams, "orloj_requests_late", "orloj_requests_late_total", model="m") == 1
    lat = "orloj_request_latency_seconds"
    assert _value(fams, lat, lat + "_count", model="m") == 2
    assert _value(fams, lat, lat + "_sum", model="m") == pytest.approx(0.044)
    assert _value(fams, lat, lat + "_bucket", model="m", le="0.005") == 1  # cumulative
    assert _value(fams, lat, lat + "_bucket", model="m", le="+Inf") == 2
    assert len([s for s in fams[lat].samples if s.name.endswith("_bucket")]) == len(
        LATENCY_BUCKETS_S) + 1  # fmt: skip
    bs = "orloj_batch_size"
    assert _value(fams, bs, bs + "_bucket", model="m", le="2.0") == 0
    assert _value(fams, bs, bs + "_bucket", model="m", le="4.0") == 1
    assert len([s for s in fams[bs].samples if s.name.endswith("_bucket")]) == len(
        BATCH_SIZE_BUCKETS) + 1  # fmt: skip
    dec = "orloj_scheduler_decision_seconds"
    assert _value(fams, dec, dec + "_count", model="m") == 1
    assert _value(fams, "orloj_queue_length", "orloj_queue_length", model="m") == 4
    assert _value(fams, "orloj_ring_slots_in_use", "orloj_ring_slots_in_use", model="m") == 5
    assert _value(fams, "orloj_ring_slots", "orloj_ring_slots", model="m") == 8
    assert _value(fams, "orloj_workers", "orloj_workers") == 2
    assert _value(fams, "orloj_workers_ready", "orloj_workers_ready") == 1


def test_no_snapshot_means_up_zero_and_nothing_else():
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector())
    fams = _families(registry)
    assert set(fams) == {"orloj_up"}
    assert _value(fams, "orloj_up", "orloj_up") == 0


def test_recording_is_cheap():
    """The frontend records every answered request: it must stay a small fraction of the
    frontend's per-request cost (tens of microseconds). Generous bound for a loaded CI."""
    import time

    a = FrontendMetrics(["m"]).models[0].app("default")
    n = 20_000
    t0 = time.perf_counter()
    for i in range(n):
        a.record_ok(1e-4, 2e-4, i * 1e-7, True)
    per = (time.perf_counter() - t0) / n
    assert per < 20e-6, f"record_ok took {per * 1e6:.1f} us"


def test_jains_index_over_the_apps_finish_rates():
    fm = FrontendMetrics(["m"])
    cluster = msgs.ClusterState("ok", 1, 1, {"supervisor": 0, "frontend": 0, "scheduler": 0,
                                             "workers": []})  # fmt: skip
    a = fm.models[0].app("a")
    for _ in range(4):
        a.record_ok(0.001, 0.002, 0.004, met=True)  # a: 4 of 4 in time
    assert fm.snapshot(_frontend_models(), cluster)["models"]["m"]["jain"] is None  # one app
    b = fm.models[0].app("b")
    b.record_ok(0.001, 0.002, 0.004, met=True)
    b.count("dropped")
    b.count("cancelled")  # left out, as in the stats reply's finish rate: b finishes 1 of 2
    snap = fm.snapshot(_frontend_models(), cluster)
    assert snap["models"]["m"]["jain"] == pytest.approx((1 + 0.5) ** 2 / (2 * (1 + 0.25)))
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    collector = SnapshotCollector()
    registry.register(collector)
    collector.snapshot = snap
    fams = _families(registry)
    name = "orloj_apps_finish_rate_jain"
    assert _value(fams, name, name, model="m") == pytest.approx(0.9)
