"""Renders docs/grafana/dashboard.png: the panels of docs/grafana/orloj-rt.json, each of
their expressions evaluated by a real Prometheus over a short run of a real server, and
plotted with matplotlib in the dashboard's own layout. It is not a Grafana screenshot
(there is no Grafana here): the same queries, drawn by this script.

    .venv/bin/python docs/grafana/render.py            # about 2.5 minutes
    .venv/bin/python docs/grafana/render.py --duration 60 --out /tmp/dash.png

The run: one CPU worker serving the built-in early_exit encoder (apps `search`, tight SLO,
and `batch`, a loose one) and seq_encoder (`seq`, app `lengths`, server-derived length
hints, so that the cost-hint class panels have data), under --policy orloj, with open-loop
Poisson load in three phases: light (0.4x what the worker serves one at a time), overload
(2.5x) and moderate (0.7x). Prometheus (the `prometheus` binary, Debian's package) scrapes
it every second; each panel is then queried with /api/v1/query_range over the run, step
2 s, with $__rate_interval = 10s and every model and app selected (the variables' All).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import urlopen

import numpy as np

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "orloj-rt.json"
RATE_INTERVAL = "10s"
STEP_S = 2
SCRAPE_S = 1
PHASES = ((0.3, 0.4), (0.35, 2.5), (0.35, 0.7))  # (share of the run, load vs solo capacity)
EE_TOML = 'builtin = "early_exit"\n'
SEQ_TOML = ('builtin = "seq_encoder"\nname = "seq"\nmax_batch_size = 8\n'
            "factory_args = { num_layers = 2 }\n")  # fmt: skip


# ---------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def prometheus(target: str, binary: str):
    """Prometheus on a free loopback port scraping `target` every second, with a temporary
    config and storage; yields its base URL; killed and removed at the end."""
    d = Path(tempfile.mkdtemp(prefix="orloj-render-prometheus-"))
    proc = None
    try:
        (d / "prometheus.yml").write_text(
            f"global:\n  scrape_interval: {SCRAPE_S}s\n  scrape_timeout: {SCRAPE_S}s\n"
            "scrape_configs:\n  - job_name: orloj-rt\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        port = free_port()
        log = open(d / "prometheus.log", "w")  # noqa: SIM115 - closed in the finally
        proc = subprocess.Popen(
            [binary, f"--config.file={d / 'prometheus.yml'}", f"--storage.tsdb.path={d / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(URLError, OSError), \
                    urlopen(f"{base}/-/ready", timeout=2) as r:
                if r.status == 200:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                text = (d / "prometheus.log").read_text()
                raise RuntimeError(f"Prometheus did not start: {text[-3000:]}")
            time.sleep(0.2)
        yield base
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def prom_get(base: str, path: str, **params) -> dict:
    try:
        with urlopen(f"{base}{path}?{urlencode(params)}", timeout=30) as r:
            body = json.load(r)
    except HTTPError as exc:
        raise RuntimeError(f"{params}: {exc.code} {exc.read().decode()[:500]}") from None
    if body.get("status") != "success":
        raise RuntimeError(f"{params}: {body}")
    return body["data"]


# ---------------------------------------------------------------------- load
def mean_solo_ms(endpoint: str, model: str, make, n: int = 30) -> float:
    """The model's mean time alone, one request at a time (after a few to warm up)."""
    from orloj_rt.client import Client

    with Client(endpoint, timeout_s=60) as c:
        for i in range(5):
            c.infer(model, make(i), slo_ms=60_000).raise_for_status()
        t0 = time.perf_counter()
        for i in range(n):
            c.infer(model, make(i), slo_ms=60_000).raise_for_status()
    return (time.perf_counter() - t0) / n * 1e3


def arrivals(rate_per_s: float, duration_s: float, rng: np.random.Generator) -> list[float]:
    """Poisson arrivals whose rate follows PHASES (rate_per_s is the 1.0x rate)."""
    times, t0 = [], 0.0
    for share, load in PHASES:
        end = t0 + share * duration_s
        t = t0
        while True:
            t += rng.exponential(1.0 / (rate_per_s * load))
            if t >= end:
                break
            times.append(t)
        t0 = end
    return times


def run_load(endpoint: str, duration_s: float, seed: int = 0) -> tuple[float, dict]:
    """Measures each model's solo time, then sends the load; returns when the load began
    (time.time()) and per app (requests, client-side finish rate, statuses)."""
    from orloj_rt.client.loadgen import run_open_loop
    from orloj_rt.models import early_exit, seq_encoder

    rng = np.random.default_rng(seed)

    def ee_input(i: int, r=rng) -> dict:
        depth = early_exit.NUM_LAYERS if r.random() < 0.2 else 2
        return {"tokens": early_exit.tokens_for_depth(depth, int(r.integers(8, 33)), r)}

    def seq_input(i: int, r=rng) -> dict:
        return {"tokens": seq_encoder.tokens_of_length(int(r.integers(1, 129)), r)}

    ee_ms = mean_solo_ms(endpoint, "early_exit", ee_input)
    seq_ms = mean_solo_ms(endpoint, "seq", seq_input)
    print(f"render: solo means early_exit {ee_ms:.2f} ms, seq {seq_ms:.2f} ms", file=sys.stderr)
    # the worker's time split in three: each stream alone is 1/3 of the 1.0x load
    streams = [("early_exit", "search", 10 * ee_ms, ee_input, ee_ms),
               ("early_exit", "batch", 40 * ee_ms, ee_input, ee_ms),
               ("seq", "lengths", 20 * seq_ms, seq_input, seq_ms)]  # fmt: skip
    results: dict = {}

    def one(model, app, slo_ms, make, solo_ms, k):
        r = np.random.default_rng(seed + 1 + k)
        times = arrivals(1000.0 / solo_ms / len(streams), duration_s, r)
        reqs = [{"model": model, "inputs": make(i, r), "slo_ms": slo_ms, "app": app}
                for i in range(len(times))]  # fmt: skip
        rep = run_open_loop(endpoint, reqs, times, drain_timeout_s=30,
                            max_duration_s=duration_s + 5)  # fmt: skip
        results[app] = (len(times), rep.finish_rate, dict(rep.counts))

    threads = [threading.Thread(target=one, args=(*s, k)) for k, s in enumerate(streams)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return started, results


# ---------------------------------------------------------------------- plotting
def instantiate(expr: str) -> str:
    return (expr.replace("$__rate_interval", RATE_INTERVAL)
            .replace('"$model"', '".+"').replace('"$app"', '".+"'))  # fmt: skip


def legend(fmt: str, labels: dict) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def scale_for(unit: str, peak: float) -> tuple[float, str]:
    if unit == "percentunit":
        return 100.0, "%"
    if unit == "s":
        if peak < 1e-3:
            return 1e6, "µs"
        return (1e3, "ms") if peak < 1 else (1.0, "s")
    if unit == "bytes":
        return 1 / 2**20, "MiB"
    if unit == "reqps":
        return 1.0, "req/s"
    return 1.0, ""


def render(base: str, t0: float, t1: float, out: Path, subtitle: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.33  # inches per grid row
    fig = plt.figure(figsize=(18, rows * unit_h + 1.2))
    top, height = 1.0 - 1.0 / (rows * unit_h + 1.2), rows * unit_h / (rows * unit_h + 1.2)
    fig.suptitle(f"{dash['title']}: {subtitle}", x=0.01, ha="left", fontsize=11)
    empty = []
    for p in panels:
        g = p["gridPos"]
        x0, y0 = g["x"] / 24, top - (g["y"] + g["h"]) / rows * height
        if p["type"] == "row":
            fig.text(x0 + 0.005, y0 + 0.25 * g["h"] / rows * height, p["title"],
                     fontsize=11, weight="bold")  # fmt: skip
            continue
        u = height / rows  # one grid unit, as a fraction of the figure's height
        ax = fig.add_axes((x0 + 0.035, y0 + 0.7 * u, g["w"] / 24 - 0.045,
                           (g["h"] - 1.6) * u))  # fmt: skip
        unit = p["fieldConfig"]["defaults"].get("unit", "short")
        series = []
        for t in p["targets"]:
            data = prom_get(base, "/api/v1/query_range", query=instantiate(t["expr"]),
                            start=f"{t0:.3f}", end=f"{t1:.3f}", step=STEP_S)  # fmt: skip
            for s in data["result"]:
                ts = np.array([float(v[0]) - t0 for v in s["values"]])
                ys = np.array([float(v[1]) for v in s["values"]])
                if np.isfinite(ys).any():  # (e.g. the finish rate of an app that is idle)
                    series.append((legend(t.get("legendFormat", ""), s["metric"]), ts, ys))
        finite = [abs(y) for _, _, ys in series for y in ys if math.isfinite(y)]
        mult, suffix = scale_for(unit, max(finite, default=0.0))
        for name, ts, ys in sorted(series, key=lambda s: s[0]):
            ax.plot(ts, ys * mult, lw=1.1, label=name)
        if not series:
            empty.append(p["title"])
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(p["title"], fontsize=9, loc="left")
        ax.set_xlim(0, t1 - t0)
        if p["fieldConfig"]["defaults"].get("min") is not None:
            ax.set_ylim(bottom=p["fieldConfig"]["defaults"]["min"] * mult)
        if p["fieldConfig"]["defaults"].get("max") is not None:
            ax.set_ylim(top=p["fieldConfig"]["defaults"]["max"] * mult * 1.02)
        ax.tick_params(labelsize=7)
        ax.set_ylabel(suffix, fontsize=7)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=6, ncol=3 if len(series) > 6 else 2, loc="upper left",
                      framealpha=0.6, handlelength=1.2)  # fmt: skip
    fig.text(0.01, 0.005, "x: seconds since the run began. Rendered by docs/grafana/render.py "
             f"from the expressions of docs/grafana/orloj-rt.json ($__rate_interval = "
             f"{RATE_INTERVAL}, all models and apps), queried from a real Prometheus: not a "
             "Grafana screenshot.", fontsize=8)  # fmt: skip
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return empty


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load")
    ap.add_argument("--out", default=str(HERE / "dashboard.png"))
    ap.add_argument("--prometheus", default=shutil.which("prometheus"),
                    help="the prometheus binary (default: from PATH)")
    args = ap.parse_args()
    if not args.prometheus:
        print("render: no prometheus binary (apt-get install prometheus)", file=sys.stderr)
        return 2
    from orloj_rt.runtime.launcher import ServerProcess

    with tempfile.TemporaryDirectory(prefix="orloj-render-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / "early_exit.toml").write_text(EE_TOML)
        (repo / "seq.toml").write_text(SEQ_TOML)
        server_args = ["--models", str(repo), "--policy", "orloj", "--cpu-workers", "1",
                       "--metrics-port", "0"]  # fmt: skip
        with open(Path(tmp) / "server.log", "w") as log, \
                ServerProcess(server_args, stderr=log, start_timeout_s=180) as srv:  # fmt: skip
            m = re.search(r"; metrics http://([^/;)]+)/metrics", srv.ready_line)
            if not m:
                raise RuntimeError(f"no metrics port in {srv.ready_line!r}")
            with prometheus(m.group(1), args.prometheus) as base:
                t0, results = run_load(srv.endpoint, args.duration)
                time.sleep(3 * SCRAPE_S + 1)
                t1 = time.time()
                for app, (n, finish, counts) in sorted(results.items()):
                    print(f"render: app {app}: {n} requests, client-side finish rate "
                          f"{finish:.1%}, {counts}", file=sys.stderr)  # fmt: skip
                version = prom_get(base, "/api/v1/status/buildinfo").get("version", "?")
                subtitle = (f"a {t1 - t0:.0f} s run on {os.cpu_count()} cores, early_exit "
                            "(apps search, batch) and seq_encoder (app lengths) on one CPU "
                            f"worker under --policy orloj; Prometheus {version}")  # fmt: skip
                empty = render(base, t0, t1, Path(args.out), subtitle)
    print(f"render: wrote {args.out}" + (f"; panels without data: {empty}" if empty else ""),
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
