"""A real Prometheus scraping a real server, and the Grafana dashboard's expressions
(docs/grafana/orloj-rt.json) evaluated by it: every one is valid PromQL and finds our
metrics, and the numbers agree with what the client itself counted.

Needs the `prometheus` binary (Debian's `prometheus` package; .ci/run installs it where it
can); without it the test is skipped. Prometheus runs as a plain subprocess with a
temporary config (scraping the server's --metrics-port every second) and a temporary
storage directory, both removed at the end.

The requests, from the Python client: to the noop model, ok ones (a generous SLO) and
dropped ones (an impossible SLO); to the sleep model (one request at a time), one ok and
one cancelled while it waits behind it, which the finish rate must leave out.

Why the rate-based expressions can be checked exactly: the test's app is created by one
`error` request per model, and Prometheus scrapes it before the counted requests. Every
series of the app that grows afterwards starts from 0 in the query window, so Prometheus
extrapolates each of them alike (no extrapolation before a zero start, the same one to the
window's end: the same scrape times), and a ratio of two such rates is the ratio of the
counts. The `error` series does not grow in the window: its rate is 0.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import urlopen

import numpy as np
import pytest

from orloj_rt.client import Client
from orloj_rt.protocol.stats import LATENCY_BUCKETS_S

from .helpers import running_server

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.skipif(PROMETHEUS is None, reason="no `prometheus` binary (apt-get install "
                       "prometheus; .ci/run installs it as root)"),
    pytest.mark.once,  # engine-independent (tests/conftest.py)
]  # fmt: skip

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "orloj-rt.json"
APP = "prom-e2e"
SCRAPE_S = 1.0
START_TIMEOUT_S = 30.0  # Prometheus ready, the first scrape
WAIT_TIMEOUT_S = 15.0  # a scrape that saw what was sent
TIMEOUT_S = 30.0
N_OK, N_DROPPED, ROUNDS = 12, 2, 3  # per round; the rounds a scrape apart
# panels that find nothing on this server: no cost hints (noop has none)
MAY_BE_EMPTY = re.compile(r"^Hint class")


# ---------------------------------------------------------------------- Prometheus
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_prometheus(target: str):
    """A Prometheus on a free loopback port scraping `target` (host:port) every second;
    yields its base URL. Killed, and its directory removed, whatever happens."""
    d = Path(tempfile.mkdtemp(prefix="orloj-prometheus-"))
    proc = None
    try:
        (d / "prometheus.yml").write_text(
            "global:\n"
            f"  scrape_interval: {SCRAPE_S:g}s\n"
            f"  scrape_timeout: {SCRAPE_S:g}s\n"
            "scrape_configs:\n"
            "  - job_name: orloj-rt\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        log = d / "prometheus.log"
        for _ in range(3):  # the free port may be taken before Prometheus binds it
            port = _free_port()
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    [PROMETHEUS, f"--config.file={d / 'prometheus.yml'}",
                     f"--storage.tsdb.path={d / 'data'}",
                     f"--web.listen-address=127.0.0.1:{port}",
                     "--storage.tsdb.retention.time=1h"],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)  # fmt: skip
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + START_TIMEOUT_S
            while proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(URLError, OSError), \
                        urlopen(f"{base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
                time.sleep(0.2)
            else:
                if proc.poll() is not None and "address already in use" in log.read_text():
                    continue
                raise AssertionError(f"Prometheus did not start:\n{log.read_text()[-3000:]}")
            break
        else:
            raise AssertionError(f"Prometheus found no free port:\n{log.read_text()[-3000:]}")
        try:
            yield base
        except BaseException:
            print(f"prometheus log:\n{log.read_text()[-3000:]}")
            raise
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


def _get(url: str) -> dict:
    try:
        with urlopen(url, timeout=TIMEOUT_S) as r:
            body = json.load(r)
    except HTTPError as exc:  # 400 for a query that does not parse: show Prometheus' reason
        raise AssertionError(f"{url}: {exc.code} {exc.read().decode()[:1000]}") from None
    assert body["status"] == "success", body
    return body["data"]


def query(base: str, expr: str, at: float | None = None) -> list:
    """An instant query: [(labels, value)]."""
    params = {"query": expr}
    if at is not None:
        params["time"] = f"{at:.3f}"
    data = _get(f"{base}/api/v1/query?{urlencode(params)}")
    assert data["resultType"] == "vector", (expr, data)
    return [(r["metric"], float(r["value"][1])) for r in data["result"]]


def scalar(base: str, expr: str, at: float | None = None) -> float:
    rows = query(base, expr, at)
    assert len(rows) == 1, (expr, rows)
    return rows[0][1]


def wait_for(base: str, expr: str, ok, what) -> float:
    """Polls `expr` (one series) until ok(value); returns the value. `what`: the failure's
    text, or a function that makes it."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while True:
        rows = query(base, expr)
        if len(rows) == 1 and ok(rows[0][1]):
            return rows[0][1]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what() if callable(what) else what}: {expr} is {rows}")
        time.sleep(0.2)


def scrape_errors(base: str) -> list:
    """Each target's health and last scrape error, as Prometheus reports them."""
    return [(t["scrapeUrl"], t["health"], t["lastError"])
            for t in _get(f"{base}/api/v1/targets")["activeTargets"]]  # fmt: skip


# ---------------------------------------------------------------------- the dashboard
def dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expr) of every query of the dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] if p["type"] != "row"
            for t in p["targets"]]  # fmt: skip


def dashboard_exprs(title: str) -> list[str]:
    exprs = [e for t, e in dashboard_targets() if t == title]
    assert exprs, f"no panel {title!r} in {DASHBOARD}"
    return exprs


def label_values(base: str, definition: str, **variables) -> list:
    """Grafana's `label_values(selector, label)`: Prometheus' label values API."""
    m = re.fullmatch(r"label_values\((.+), (\w+)\)", definition)
    assert m, definition
    selector = m.group(1)
    for name, value in variables.items():
        selector = selector.replace(f"${name}", value)
    return sorted(_get(f"{base}/api/v1/label/{m.group(2)}/values?"
                       + urlencode({"match[]": selector})))  # fmt: skip


def instantiate(expr: str, window_s: int, model: str = "noop", app: str = APP) -> str:
    """What Grafana sends for one choice of the template variables."""
    return (expr.replace("$__rate_interval", f"{window_s}s")
            .replace("$model", model).replace("$app", app))  # fmt: skip


# ---------------------------------------------------------------------- the test
def test_prometheus_scrapes_and_the_dashboard_agrees_with_the_client(tmp_path):
    t_start = time.monotonic()
    with running_server(tmp_path, "--metrics-port", "0", light=True) as server:
        url = re.search(r"; metrics http://([^/;)]+)/metrics", server.ready_line)
        assert url, server.ready_line
        with running_prometheus(url.group(1)) as prom, \
                Client(server.endpoint, timeout_s=TIMEOUT_S) as c:  # fmt: skip
            wait_for(prom, "orloj_up", lambda v: v == 1,
                     lambda: f"no scrape of the server (targets: {scrape_errors(prom)})")

            # the app's series appear (one error: a wrong shape), and are scraped at 0
            assert c.infer("noop", {"x": np.zeros(5, np.float32)}, app=APP).status == "error"
            assert c.infer("sleep", {"x": np.zeros(4, np.float32)}, app=APP).status == "error"
            assert c.infer("nope", {"x": np.zeros(4, np.float32)}, app=APP).status == "error"
            sel = f'model="noop", app="{APP}"'
            first = f'orloj_requests_total{{model=~"noop|sleep", app="{APP}", status="error"}}'
            wait_for(prom, f"sum({first})", lambda v: v == 2, "the app's first scrape")
            window_from = scalar(prom, f"min(timestamp({first}))")  # a scrape with ok at 0

            # the counted requests: ok (a generous SLO) and dropped (an impossible one)
            statuses: Counter = Counter()
            met = 0
            latencies = []
            for r in range(ROUNDS):
                for i in range(N_OK + N_DROPPED):
                    slo_ms = 0.001 if i < N_DROPPED else 10_000.0
                    t0 = time.perf_counter()
                    res = c.infer("noop", {"x": np.full(4, i, np.float32)}, app=APP,
                                  slo_ms=slo_ms)  # fmt: skip
                    elapsed = time.perf_counter() - t0
                    statuses[res.status] += 1
                    if res.ok:
                        met += bool(res.met_slo)
                        latencies.append(elapsed)
                if r < ROUNDS - 1:
                    time.sleep(SCRAPE_S)
            # and one request cancelled while it waits (the sleep model runs one at a time)
            running = c.submit("sleep", {"ms": np.array(300, np.float32)}, app=APP,
                               slo_ms=10_000.0)  # fmt: skip
            time.sleep(0.1)
            queued = c.submit("sleep", {"ms": np.array(300, np.float32)}, app=APP,
                              slo_ms=10_000.0)  # fmt: skip
            time.sleep(0.05)
            c.cancel(queued)  # "queued" (but a loaded machine may have it "running")
            sleep_statuses = Counter(c.result(rid).status for rid in (running, queued))
            t_last = time.time()
            assert statuses == {"ok": ROUNDS * N_OK, "dropped": ROUNDS * N_DROPPED}, statuses
            assert sleep_statuses == {"ok": 1, "cancelled": 1}, sleep_statuses
            n_ok, n_dropped = statuses["ok"], statuses["dropped"]

            # a scrape that began after the last reply, and after the scheduler's next
            # once-a-second stats (the queue length, the decision times)
            wait_for(prom, "timestamp(orloj_up)", lambda ts: ts >= t_last + 1.5,
                     "no scrape after the last reply")  # fmt: skip
            at = time.time()
            window = math.ceil(at - window_from) + 1  # from a scrape before the counted ones

            # the counters, exactly
            by_status = {m["status"]: v for m, v in query(
                prom, f"sum by (status) (orloj_requests_total{{{sel}}})", at)}  # fmt: skip
            expected = {"ok": n_ok, "dropped": n_dropped, "rejected": 0, "error": 1}
            # (any further status, such as cancelled, is there at 0)
            assert by_status == {**dict.fromkeys(by_status, 0), **expected}, by_status
            assert scalar(prom, 'sum(orloj_requests_total{model="", status="error"})', at) == 1
            assert scalar(prom, f"sum(orloj_requests_finished_within_slo_total{{{sel}}})",
                          at) == met == n_ok  # fmt: skip
            assert scalar(prom, f"sum(orloj_requests_late_total{{{sel}}})", at) == 0
            for h in ("queue", "execution", "latency"):
                assert scalar(prom, f"sum(orloj_request_{h}_seconds_count{{{sel}}})",
                              at) == n_ok  # fmt: skip

            # the template variables' label_values
            dash = json.loads(DASHBOARD.read_text())
            variables = {v["name"]: v["definition"] for v in dash["templating"]["list"]
                         if v["type"] == "query"}  # fmt: skip
            models = label_values(prom, variables["model"], model=".+")
            assert models == ["noop", "sleep"], models  # every served model, sent to or not
            assert label_values(prom, variables["app"], model="noop") == [APP]

            # every query of the dashboard parses and finds our metrics
            for title, expr in dashboard_targets():
                rows = query(prom, instantiate(expr, window), at)
                assert rows or MAY_BE_EMPTY.match(title), f"{title}: nothing for {expr}"

            def panel(title: str, i: int = 0) -> list:
                return query(prom, instantiate(dashboard_exprs(title)[i], window), at)

            # finish rate: ok within the SLO over every answered request, in the window
            (labels, finish), = panel("Finish rate by model and app")
            assert labels == {"model": "noop", "app": APP}
            assert finish == pytest.approx(met / (n_ok + n_dropped), rel=1e-9)
            # a cancelled request is not answered for the finish rate (docs/protocol.md)
            (labels, finish), = query(prom, instantiate(
                dashboard_exprs("Finish rate by model and app")[0], window, model="sleep"), at)
            assert finish == pytest.approx(1.0, rel=1e-9), finish  # 1 ok, 1 cancelled
            cancelled = {m["status"]: v for m, v in query(
                prom, f'sum by (status) (orloj_requests_total{{model="sleep", app="{APP}"}})',
                at)}  # fmt: skip
            assert cancelled == {**dict.fromkeys(cancelled, 0), "ok": 1, "cancelled": 1,
                                 "error": 1}, cancelled  # fmt: skip
            # requests by status: rates in the proportions of the counts
            rates = {m["status"]: v for m, v in panel("Requests by status")}
            assert [v for k, v in rates.items() if k not in ("ok", "dropped")] == [0] * (
                len(rates) - 2), rates  # error's growth was before the window  # fmt: skip
            assert rates["ok"] / rates["dropped"] == pytest.approx(n_ok / n_dropped, rel=1e-9)
            assert rates["ok"] * window >= n_ok - 1e-6  # extrapolated to the window: not less
            # latency quantiles: the server's end-to-end p99 is within the client's round trip
            # (histogram_quantile interpolates within a bucket: up to its upper bound)
            bound = min(b for b in LATENCY_BUCKETS_S if b >= max(latencies))
            (_, p99), = panel("End-to-end latency", 2)
            assert 0 < p99 <= bound, (p99, max(latencies))
            for title in ("Queue time", "Execution time"):
                (_, p50), = panel(title, 0)
                assert 0 <= p50 <= bound, (title, p50)
            # gauges
            (_, queued), = panel("Queue length")
            assert queued == 0
            ready, workers, up = (panel("Workers ready", i) for i in range(3))
            assert [v for _, v in ready + workers + up] == [1, 1, 1], (ready, workers, up)
            (_, batch), = panel("Batch size", 0)  # sequential requests: batches of one
            assert batch == 1
    took = time.monotonic() - t_start
    print(f"prometheus end-to-end test: {took:.1f} s")
