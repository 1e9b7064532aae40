"""Does learning survive a hiccup? orloj against fifo on the same load, with disturbances.

    .venv/bin/python bench/stall.py                 # ~5 minutes, table
    .venv/bin/python bench/stall.py --quick --json  # shorter runs, one JSON object

A transient slowdown (another process taking the CPU, a worker paused) must not leave a
policy that learns execution times dropping a storm of requests afterwards. For each
scenario and each policy, a fresh server (`--workers` CPU workers, the built-in
`early_exit`) gets Poisson arrivals at `--load` x its capacity (measured once, on a
quiet server, and used for every run) for the scenario's duration:

- `stall`:      every 10 s, every worker is paused for 200 ms (SIGSTOP, SIGCONT);
- `warmup-hog`: CPU hogs (one busy process per core) run while the server starts, warms
                up and profiles its model, and stop when it is ready: the profile and the
                prior are learned on a busy machine;
- `mid-hog`:    the same hogs for 5 s in the middle of the run.

The figure is the finish rate of the requests sent in the 5 s after each disturbance ends
(and over the whole run). Target (issue 14): orloj within 0.05 of fifo in those windows.
Every run is bounded: sending stops at the scenario's duration, replies are awaited at
most 10 s more.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orloj_rt.client import Client  # noqa: E402
from orloj_rt.client.loadgen import arrival_times, run_open_loop  # noqa: E402
from orloj_rt.models.builtin import BUILTIN_MODELS  # noqa: E402
from orloj_rt.models.load_inputs import make_inputs  # noqa: E402
from orloj_rt.runtime.launcher import ServerProcess  # noqa: E402

MODEL = "early_exit"
APP = "stall"
WINDOW_S = 5.0
TOLERANCE = 0.05
HOG = "import time\nend = time.monotonic() + 120\nwhile time.monotonic() < end: pass\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--policies", default="orloj,fifo", help="policies (orloj,fifo)")
    p.add_argument("--scenarios", default="stall,warmup-hog,mid-hog",
                   help="scenarios (stall,warmup-hog,mid-hog)")  # fmt: skip
    p.add_argument("--load", type=float, default=0.8, help="fraction of capacity (0.8)")
    p.add_argument("--slo-ms", type=float, default=30.0, help="every request's SLO (30)")
    p.add_argument("--workers", type=int, default=1, help="CPU workers (1)")
    p.add_argument("--quick", action="store_true", help="shorter runs (stall 30 s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args(argv)


# ---------------------------------------------------------------------- disturbances
class Hogs:
    """One busy process per core (each ends by itself after 2 minutes at the latest)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        for _ in range(os.cpu_count() or 1):
            self.procs.append(subprocess.Popen([sys.executable, "-c", HOG]))

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def worker_pids(endpoint: str) -> list[int]:
    with Client(endpoint, timeout_s=30) as c:
        return [p for p in c.health()["pids"]["workers"] if p]


def pause_workers(pids: list[int], seconds: float) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    time.sleep(seconds)
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


# ---------------------------------------------------------------------- load
def workload(n: int, rate: float, slo_ms: float, seed: int):
    rng = np.random.default_rng([seed, n, int(rate)])
    times = arrival_times(n, rate, rng).tolist()
    spec = BUILTIN_MODELS[MODEL].spec.to_dict()
    draws = make_inputs(MODEL, spec, n, rng)
    reqs = [{"model": MODEL, "inputs": d.inputs, "slo_ms": slo_ms, "app": APP} for d in draws]
    return reqs, times


def start_server(policy: str, workers: int, repo: Path, log) -> ServerProcess:
    args = ["--models", str(repo), "--cpu-workers", str(workers), "--policy", policy,
            "--log-level", "WARNING"]  # fmt: skip
    return ServerProcess(args, stderr=log, start_timeout_s=180).start()


def capacity(endpoint: str, seed: int) -> float:
    """ok replies per second with far more offered than served, and a long SLO."""
    reqs, times = workload(15_000, 5_000.0, 60_000.0, seed + 1)
    report = run_open_loop(endpoint, reqs, times, drain_timeout_s=30.0, max_duration_s=3.0)
    ok = report.counts["ok"]
    return ok / report.duration_s


def window_rates(report, times, ends: list[float]) -> list[float]:
    """The finish rate of the requests sent in [end, end + WINDOW_S) for each end."""
    out = []
    t = np.asarray(times)
    for e in ends:
        idx = np.nonzero((t >= e) & (t < e + WINDOW_S))[0]
        sent = [report.outcomes[i] for i in idx if report.outcomes[i].status != "unsent"]
        out.append(sum(o.status == "ok" and o.met_slo for o in sent) / len(sent) if sent
                   else float("nan"))  # fmt: skip
    return out


def run_scenario(scenario: str, policy: str, rate: float, args, repo: Path, log) -> dict:
    duration = {"stall": 60.0, "warmup-hog": 20.0, "mid-hog": 25.0}[scenario]
    if args.quick:
        duration = {"stall": 30.0, "warmup-hog": 12.0, "mid-hog": 16.0}[scenario]
    n = int(rate * duration)
    reqs, times = workload(n, rate, args.slo_ms, args.seed)
    hogs = Hogs()
    timers: list[threading.Timer] = []
    ends: list[float] = []
    if scenario == "warmup-hog":
        hogs.start()
    try:
        server = start_server(policy, args.workers, repo, log)
    finally:
        hogs.stop()  # the warm-up hogs end when the server is ready (or failed)
    try:
        if scenario == "warmup-hog":
            ends = [0.0]
        elif scenario == "stall":
            pids = worker_pids(server.endpoint)
            at = 5.0
            while at + WINDOW_S <= duration:
                timers.append(threading.Timer(at, pause_workers, (pids, 0.2)))
                ends.append(at + 0.2)
                at += 10.0
        else:  # mid-hog
            start = duration / 2 - 5.0
            timers.append(threading.Timer(start, hogs.start))
            timers.append(threading.Timer(start + 5.0, hogs.stop))
            ends.append(start + 5.0)
        for t in timers:
            t.start()
        report = run_open_loop(server.endpoint, reqs, times, drain_timeout_s=10.0,
                               max_duration_s=duration)  # fmt: skip
    finally:
        for t in timers:
            t.cancel()
        hogs.stop()
        server.stop()
    rates = window_rates(report, times, ends)
    counts = report.counts
    return {
        "scenario": scenario,
        "policy": policy,
        "rate": rate,
        "window_finish": [round(r, 4) for r in rates],
        "window_mean": round(float(np.nanmean(rates)), 4) if rates else None,
        "overall": round(report.finish_rate, 4),
        "counts": {k: counts.get(k, 0) for k in ("ok", "dropped", "rejected", "error", "lost")},
    }


def verdicts(rows: list[dict]) -> list[dict]:
    out = []
    for sc in dict.fromkeys(r["scenario"] for r in rows):
        by = {r["policy"]: r for r in rows if r["scenario"] == sc}
        if "orloj" in by and "fifo" in by:
            gap = by["orloj"]["window_mean"] - by["fifo"]["window_mean"]
            out.append({"scenario": sc, "orloj_minus_fifo": round(gap, 4),
                        "met": gap >= -TOLERANCE})  # fmt: skip
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    policies = [p for p in args.policies.split(",") if p]
    scenarios = [s for s in args.scenarios.split(",") if s]
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else print
    with tempfile.TemporaryDirectory(prefix="orloj-stall-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        (repo / f"{MODEL}.toml").write_text(f'builtin = "{MODEL}"\n')
        with open(Path(tmp) / "server.log", "w") as log:
            server = start_server(policies[0], args.workers, repo, log)
            try:
                cap = capacity(server.endpoint, args.seed)
            finally:
                server.stop()
            rate = args.load * cap
            say(f"capacity {cap:.0f} req/s ({args.workers} worker(s)); load {args.load} -> "
                f"{rate:.0f} req/s; SLO {args.slo_ms:g} ms")  # fmt: skip
            rows = []
            for sc in scenarios:
                for p in policies:
                    t0 = time.monotonic()
                    rows.append(run_scenario(sc, p, rate, args, repo, log))
                    r = rows[-1]
                    say(f"{sc:<11} {p:<8} windows {r['window_finish']} mean "
                        f"{r['window_mean']}  overall {r['overall']}  {r['counts']}  "
                        f"({time.monotonic() - t0:.0f} s)")  # fmt: skip
    result = {"capacity": cap, "load": args.load, "slo_ms": args.slo_ms, "rows": rows,
              "verdicts": verdicts(rows)}  # fmt: skip
    if args.json:
        print(json.dumps(result))
    else:
        for v in result["verdicts"]:
            print(f"{v['scenario']:<11} orloj - fifo over the {WINDOW_S:g} s windows: "
                  f"{v['orloj_minus_fifo']:+.3f} (target >= -{TOLERANCE}): "
                  f"{'met' if v['met'] else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
