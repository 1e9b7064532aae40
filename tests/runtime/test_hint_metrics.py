"""Per cost-hint class metrics (`orloj_hint_class_*`, docs/metrics.md): the collector over a
snapshot, and a real server (frontend, scheduler, a CPU worker, the gateway's /metrics)
serving the built-in `seq_encoder` under `--policy orloj`. The model declares
`hint = "length(tokens)"`, so every request carries its token count as its hint; the
scheduler files each under a class of its app's hints (orloj_rt/serving/hints.py) and
learns each class's solo times from the model's per-request work reports."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace
from urllib.request import urlopen

import numpy as np
import pytest

from orloj_rt.client import Client
from orloj_rt.client.codec import encode_infer
from orloj_rt.models import seq_encoder
from orloj_rt.protocol import messages as msgs
from orloj_rt.runtime.metrics import (
    MAX_APPS_PER_MODEL,
    FrontendMetrics,
    SnapshotCollector,
    hint_class_rows,
)
from orloj_rt.serving.hints import class_app

from .helpers import RawDealer, running_server

prometheus_client = pytest.importorskip("prometheus_client")

APP = "lengths"
SLO_MS = 30_000.0  # nothing is dropped: every request teaches its class
SEQ_TOML = ('builtin = "seq_encoder"\nname = "seq"\nmax_batch_size = 8\n'
            f"default_slo_ms = {SLO_MS}\nfactory_args = {{ num_layers = 2 }}\n")  # fmt: skip
REQUESTS = 320  # 5 x MIN_FIT_HINTS: the classes are fitted and each gets samples
WAVE = 32  # requests in flight at once (batches, learned through the work reports)
TIMEOUT_S = 60.0


# ---------------------------------------------------------------------- the collector alone
def _sched(hinted: dict, apps: dict) -> dict:
    return {"queued": 0, "decision_s": None, "hint_classes": hinted, "apps": apps}


def _classes(app: str, edges: list[float]) -> dict:
    cuts = [None, *edges, None]
    return {"hints_seen": 100, "fits": 1, "classes": [
        {"app": class_app(app, k), "hint_from": lo, "hint_below": hi}
        for k, (lo, hi) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))]}  # fmt: skip


def _collect(sched: dict) -> dict:
    """{(sample name, labels...): value} of a scrape over one model's scheduler stats."""
    from prometheus_client.parser import text_string_to_metric_families

    ring = SimpleNamespace(layout=SimpleNamespace(n_slots=8))
    model = SimpleNamespace(name="m", free=[], ring=ring, scheduler=sched)
    cluster = msgs.ClusterState("ok", 1, 1, {"supervisor": 0, "frontend": 0, "scheduler": 0,
                                             "workers": []})  # fmt: skip
    collector = SnapshotCollector()
    collector.snapshot = FrontendMetrics(["m"]).snapshot([model], cluster)
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(collector)
    text = prometheus_client.generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip


def _hint_samples(scraped: dict, name: str) -> dict:
    return {dict(labels)["class"]: v for (n, labels), v in scraped.items() if n == name}


def test_the_collector_reports_each_class_from_the_scheduler_stats():
    apps = {
        class_app("a", 0): {"samples": 10, "mean_solo_ms": 2.0, "source": "learned"},
        class_app("a", 1): {"samples": 3, "mean_solo_ms": 5.0, "source": "prior"},
        class_app("a", 2): {"samples": 0, "mean_solo_ms": 0.0, "source": "prior"},
        # class 3 is not listed (the scheduler lists at most STATS_MAX_APPS apps)
    }
    got = _collect(_sched({"a": _classes("a", [4.0, 16.0, 64.0])}, apps))
    assert _hint_samples(got, "orloj_hint_class_samples") == {"0": 10, "1": 3, "2": 0}
    # no mean without samples
    assert _hint_samples(got, "orloj_hint_class_mean_solo_seconds") == {"0": 0.002, "1": 0.005}
    # the lower edge, where a class has one
    assert _hint_samples(got, "orloj_hint_class_edge") == {"1": 4.0, "2": 16.0, "3": 64.0}
    key = ("orloj_hint_class_samples", (("app", "a"), ("class", "0"), ("model", "m")))
    assert got[key] == 10


def test_no_classes_no_series():
    assert hint_class_rows({"queued": 3}) == []
    assert hint_class_rows(_sched({"a": {"hints_seen": 10, "fits": 0, "classes": []}}, {})) == []
    got = _collect({"queued": 3, "decision_s": None})
    assert not [k for k in got if k[0].startswith("orloj_hint_class")]


def test_hinted_apps_are_capped_busiest_first():
    hinted = {f"app{i:03d}": {**_classes(f"app{i:03d}", [1.0]), "hints_seen": i}
              for i in range(MAX_APPS_PER_MODEL + 20)}  # fmt: skip
    rows = hint_class_rows(_sched(hinted, {}))
    apps = {r[0] for r in rows}
    assert len(apps) == MAX_APPS_PER_MODEL and len(rows) == 2 * MAX_APPS_PER_MODEL
    assert min(apps) == f"app{20:03d}"  # the 20 apps with the fewest hints are left out


# ---------------------------------------------------------------------- a real server
@pytest.fixture(scope="module")
def seq_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("hint_repo")
    (repo / "seq.toml").write_text(SEQ_TOML)
    with running_server(tmp_path_factory.mktemp("logs"), "--models", str(repo),
                        "--policy", "orloj", "--metrics-port", "0") as server:  # fmt: skip
        url = re.search(r"; metrics (http://[^;)]+)", server.ready_line)
        assert url, server.ready_line
        yield server, url.group(1)


def _scrape(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    with urlopen(url, timeout=TIMEOUT_S) as r:
        assert r.status == 200
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}  # fmt: skip


def _series(scraped: dict, name: str) -> dict:
    """{class: value} of one family's samples for model "seq", app APP."""
    return {int(dict(labels)["class"]): v for (n, labels), v in scraped.items()
            if n == name and dict(labels).get("model") == "seq"
            and dict(labels).get("app") == APP}  # fmt: skip


def _send(endpoint: str, lengths: list[int]) -> list[str]:
    """Every request, WAVE at a time; their statuses."""
    rng = np.random.default_rng(0)
    statuses = []
    with RawDealer(endpoint) as d:
        for start in range(0, len(lengths), WAVE):
            wave = lengths[start : start + WAVE]
            for i, n in enumerate(wave):
                d.send(encode_infer(start + i, "seq", {
                    "tokens": seq_encoder.tokens_of_length(n, rng)}, app=APP))  # fmt: skip
            statuses += [d.recv(TIMEOUT_S)[0]["status"] for _ in wave]
    return statuses


def test_classes_and_their_learning_reach_stats_and_metrics(seq_server):
    server, metrics_url = seq_server
    rng = np.random.default_rng(1)
    lengths = [int(n) for n in rng.integers(1, seq_encoder.MAX_LEN + 1, size=REQUESTS)]
    t0 = time.monotonic()
    statuses = _send(server.endpoint, lengths)
    assert statuses.count("ok") == REQUESTS, sorted(set(statuses))
    assert time.monotonic() - t0 < 120, "the requests took too long"

    # the scheduler's stats arrive once a second: wait until they include the last batches
    deadline = time.monotonic() + 10
    with Client(server.endpoint, timeout_s=TIMEOUT_S) as c:
        while True:
            sched = c.stats()["models"]["seq"]["scheduler"]
            info = (sched.get("hint_classes") or {}).get(APP)
            apps = sched.get("apps") or {}
            learned = {} if info is None else {
                k: apps[cls["app"]] for k, cls in enumerate(info["classes"])
                if cls["app"] in apps and apps[cls["app"]]["samples"] > 0}  # fmt: skip
            if info is not None and info["hints_seen"] >= REQUESTS and len(learned) >= 2:
                break
            assert time.monotonic() < deadline, f"no learned hint classes in stats: {sched}"
            time.sleep(0.3)
    assert info["fits"] >= 1 and len(info["classes"]) >= 2, info
    edges = [cls["hint_from"] for cls in info["classes"]]
    assert edges[0] is None and edges[1:] == sorted(edges[1:]), edges
    assert all(cls["app"] == class_app(APP, k) for k, cls in enumerate(info["classes"]))

    # /metrics: the same classes, from the same stats
    deadline = time.monotonic() + 10
    while True:
        scraped = _scrape(metrics_url)
        samples = _series(scraped, "orloj_hint_class_samples")
        means = _series(scraped, "orloj_hint_class_mean_solo_seconds")
        edge = _series(scraped, "orloj_hint_class_edge")
        if len(means) >= 2 and sum(samples.values()) >= REQUESTS // 2:
            break
        assert time.monotonic() < deadline, f"no hint-class series in /metrics: {samples}"
        time.sleep(0.3)
    assert set(samples) <= set(range(len(info["classes"]))), samples
    assert all(v >= 0 for v in samples.values()), samples
    # the classes learned most of the requests (some were served before the first fit)
    assert sum(samples.values()) >= REQUESTS // 2, samples
    assert edge == {k: e for k, e in enumerate(edges) if e is not None}, (edge, edges)
    assert all(0 < m < 5.0 for m in means.values()), means  # seconds: plausible solo times
    # longer requests take longer: the class of the largest hints has the larger mean
    lo, hi = min(means), max(means)
    assert hi > lo and means[hi] > means[lo], means
