"""Soak: a bounded run at 80% of capacity while a worker is killed (SIGKILL) periodically.

    .venv/bin/python bench/soak.py                      # 2 minutes, table
    .venv/bin/python bench/soak.py --duration 30 --json # one JSON object

1. Starts a server (`--workers` CPU workers, the `--model`, policy orloj) and measures its
   capacity: `--calibrate` seconds with enough requests in flight to keep every worker
   busy (a long SLO, so nothing is dropped); capacity = ok replies per second.
2. Records each process's RSS (after that warm-up), then sends Poisson arrivals at
   `--load` x capacity for `--duration` seconds (open loop: whatever the replies), with
   `--slo-ms`. Every `--kill-every` seconds it SIGKILLs a worker (in turn) and probes
   `health` every 10 ms until a new worker process stands in its place and is ready: the
   recovery time. The supervisor logs its own measure ("ready X s after its predecessor
   died"); both are reported.
3. Waits (bounded) for the last replies, records the RSS again, stops the server, and
   prints: requests sent, replies by status, lost replies (no reply at all: must be 0),
   duplicate replies (must be 0), recovery times, RSS per process at start and end.

One process, one thread: the load, the kills and the health probes share one poll loop on
two DEALER sockets, so that no GIL contention skews the timings. The server and this
client share the machine; on a 2-core machine the client's cost is part of every figure.
Targets: 0 lost replies; median recovery (time to full capacity: from the SIGKILL until
`health` shows every worker ready, the victim's slot with a new pid) <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import msgpack
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orloj_rt.client.codec import decode_header, encode_infer  # noqa: E402
from orloj_rt.runtime.launcher import ServerProcess  # noqa: E402

TARGETS = {"lost_replies": ("==", 0), "duplicate_replies": ("==", 0),
           "recovery_median_s": ("<=", 2.0)}  # fmt: skip
READY_LOG = re.compile(r"worker (\d+) restarted: pid (\d+) is ready ([\d.]+) s after")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--duration", type=float, default=120.0, help="seconds of load (120)")
    p.add_argument("--kill-every", type=float, default=10.0,
                   help="seconds between worker kills (10)")  # fmt: skip
    p.add_argument("--load", type=float, default=0.8, help="fraction of capacity (0.8)")
    p.add_argument("--workers", type=int, default=2, help="CPU workers (2)")
    p.add_argument("--model", default="early_exit", help="a built-in model (early_exit)")
    p.add_argument("--slo-ms", type=float, default=200.0, help="every request's SLO (200)")
    p.add_argument("--calibrate", type=float, default=5.0,
                   help="seconds of saturation that measure the capacity (5)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--log", help="keep the server's log here (default: a temp file)")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.kill_every <= 0 or args.load <= 0 or args.workers < 1:
        p.error("--duration, --kill-every, --load and --workers must be positive")
    return args


def _examples(model: str, n: int, seed: int) -> list[dict]:
    from orloj_rt.models.builtin import BUILTIN_MODELS
    from orloj_rt.runtime.batch_runner import examples_for

    return examples_for(BUILTIN_MODELS[model], n, seed=seed)


def _rss(server: ServerProcess) -> dict[str, dict]:
    """{role: {"pid", "rss_mb"}} for the supervisor and every process below it."""
    import psutil

    out = {}
    try:
        root = psutil.Process(server.pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            cmd = " ".join(p.cmdline())
            if p.pid == server.pid:
                role = "supervisor"
            elif cmd.startswith("orloj-rt:"):
                role = cmd.split(" ")[1]
            elif "forkserver" in cmd:
                role = "fork server"
            elif "resource_tracker" in cmd:
                role = "resource tracker"
            else:
                role = f"pid {p.pid}"
            out[role] = {"pid": p.pid, "rss_mb": round(p.memory_info().rss / 2**20, 1)}
        except psutil.Error:
            continue
    return out


class Soak:
    def __init__(self, args, server: ServerProcess):
        import zmq

        self.zmq = zmq
        self.args = args
        self.server = server
        ctx = zmq.Context.instance()
        self.load = ctx.socket(zmq.DEALER)
        self.probe = ctx.socket(zmq.DEALER)
        for s in (self.load, self.probe):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.RCVHWM, 0)
            s.connect(server.endpoint)
        self.poller = zmq.Poller()
        self.poller.register(self.load, zmq.POLLIN)
        self.poller.register(self.probe, zmq.POLLIN)
        self.examples = _examples(args.model, 64, args.seed)
        self.next_probe_id = 1
        self.probe_out: dict[int, float] = {}
        self.health: dict | None = None

    # ------------------------------------------------------------------ sockets
    def send(self, rid: int, slo_ms: float) -> None:
        ex = self.examples[rid % len(self.examples)]
        self.load.send_multipart([b"", *encode_infer(rid, self.args.model, ex, slo_ms=slo_ms)],
                                 copy=False)  # fmt: skip

    def ask_health(self) -> None:
        rid = self.next_probe_id
        self.next_probe_id += 1
        self.probe_out[rid] = time.monotonic()
        self.probe.send_multipart([b"", msgpack.packb({"v": 1, "id": rid, "op": "health"})])

    def pump(self, timeout_s: float, on_reply) -> None:
        """Waits up to timeout_s for replies; on_reply(header) per load reply."""
        zmq = self.zmq
        events = dict(self.poller.poll(max(0.0, timeout_s) * 1000))
        if self.load in events:
            while True:
                try:
                    frames = self.load.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                on_reply(decode_header(frames[1]))
        if self.probe in events:
            while True:
                try:
                    frames = self.probe.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                h = decode_header(frames[1])
                self.probe_out.pop(h.get("id"), None)
                if h.get("status") == "ok":
                    self.health = h["result"]

    def current_health(self, on_reply, timeout_s: float = 5.0) -> dict:
        """Asks `health` and waits for it; load replies meanwhile go to on_reply."""
        self.health = None
        self.ask_health()
        deadline = time.monotonic() + timeout_s
        while self.health is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the server did not answer health")
            self.pump(0.05, on_reply)
        return self.health

    # ------------------------------------------------------------------ phases
    def calibrate(self) -> float:
        """ok replies per second with every worker kept busy (and a long SLO)."""
        window = 64 * self.args.workers
        done = Counter()
        rid = 0
        in_flight = 0

        def on_reply(h):
            nonlocal in_flight
            in_flight -= 1
            done[h.get("status")] += 1

        end = time.monotonic() + 1.0  # warm: not counted
        while time.monotonic() < end:
            while in_flight < window:
                self.send(10**9 + rid, 60_000.0)
                rid += 1
                in_flight += 1
            self.pump(0.01, on_reply)
        done.clear()
        t0 = time.monotonic()
        end = t0 + self.args.calibrate
        while time.monotonic() < end:
            while in_flight < window:
                self.send(10**9 + rid, 60_000.0)
                rid += 1
                in_flight += 1
            self.pump(0.01, on_reply)
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while in_flight > 0 and time.monotonic() < deadline:
            self.pump(0.05, on_reply)
        return done["ok"] / elapsed

    def run(self, rate: float) -> dict:
        args = self.args
        rng = np.random.default_rng(args.seed)
        n = int(rate * args.duration)
        send_at = np.cumsum(rng.exponential(1.0 / rate, n))
        statuses: dict[int, str] = {}
        duplicates = 0
        kills: list[dict] = []
        recovering: dict | None = None
        next_kill = args.kill_every / 2
        victim = 0

        def on_reply(h):
            nonlocal duplicates
            rid = h.get("id")
            if not isinstance(rid, int) or rid in statuses or not 0 <= rid < n:
                duplicates += 1
                return
            statuses[rid] = h.get("status", "?")

        t0 = time.monotonic()
        i = 0
        next_probe = 0.0
        while i < n or recovering is not None:
            now = time.monotonic() - t0
            if recovering is not None:
                h = self.health
                if h is not None:
                    pid = h["pids"]["workers"][recovering["worker"]]
                    if h["workers_ready"] == h["workers"] and pid not in (0, recovering["pid"]):
                        recovering["recovery_s"] = round(now - recovering["at_s"], 3)
                        recovering["new_pid"] = pid
                        kills.append(recovering)
                        recovering = None
                if recovering is not None and now >= next_probe:
                    self.health = None
                    self.ask_health()
                    next_probe = now + 0.01
                if recovering is not None and now - recovering["at_s"] > 60:
                    recovering["recovery_s"] = None  # never came back: reported as such
                    kills.append(recovering)
                    recovering = None
            elif i < n and now >= next_kill and now < args.duration - 1.0:
                h = self.current_health(on_reply)
                pid = h["pids"]["workers"][victim]
                os.kill(pid, signal.SIGKILL)
                now = time.monotonic() - t0
                recovering = {"worker": victim, "pid": pid, "at_s": round(now, 3)}
                self.health = None
                victim = (victim + 1) % args.workers
                next_kill = now + args.kill_every
                continue
            while i < n and send_at[i] <= now:
                self.send(i, args.slo_ms)
                i += 1
            wait = (send_at[i] - now) if i < n else 0.01
            if recovering is not None:
                wait = min(wait, max(0.0, next_probe - now))
            self.pump(min(wait, 0.05), on_reply)
        drain_until = time.monotonic() + args.slo_ms / 1000.0 + 15.0
        while len(statuses) < n and time.monotonic() < drain_until:
            self.pump(0.05, on_reply)
        self.pump(0.3, on_reply)  # a duplicate would arrive now
        return {"sent": n, "statuses": statuses, "duplicates": duplicates, "kills": kills,
                "wall_s": time.monotonic() - t0}  # fmt: skip

    def current_stats(self, timeout_s: float = 5.0) -> dict:
        self.probe.send_multipart([b"", msgpack.packb({"v": 1, "id": -1, "op": "stats"})])
        if not self.probe.poll(timeout_s * 1000):
            raise TimeoutError("the server did not answer stats")
        while True:
            h = decode_header(self.probe.recv_multipart()[1])
            if h.get("id") == -1:
                return h["result"]

    def close(self) -> None:
        self.load.close(linger=0)
        self.probe.close(linger=0)


def main(argv=None) -> int:
    args = parse_args(argv)
    repo = Path(tempfile.mkdtemp(prefix="orloj_soak_"))
    (repo / f"{args.model}.toml").write_text(f'builtin = "{args.model}"\n')
    log_path = Path(args.log) if args.log else repo / "server.log"
    result: dict = {"config": {k: v for k, v in vars(args).items() if k not in ("json", "log")}}
    with open(log_path, "w") as log:
        server = ServerProcess(["--cpu-workers", str(args.workers), "--models", str(repo),
                                "--worker-threads", "1"], stderr=log)  # fmt: skip
        server.start()
        soak = None
        try:
            soak = Soak(args, server)
            capacity = soak.calibrate()
            rate = args.load * capacity
            rss_start = _rss(server)
            run = soak.run(rate)
            rss_end = _rss(server)
            stats = soak.current_stats()
        finally:
            if soak is not None:
                soak.close()
            code = server.stop()
    counts = Counter(run["statuses"].values())
    lost = run["sent"] - len(run["statuses"])
    recoveries = [k["recovery_s"] for k in run["kills"] if k["recovery_s"] is not None]
    server_side = [float(m.group(3)) for m in READY_LOG.finditer(log_path.read_text())]
    result.update({
        "capacity_rps": round(capacity, 1),
        "offered_rps": round(rate, 1),
        "requests_sent": run["sent"],
        "replies": dict(sorted(counts.items())),
        "lost_replies": lost,
        "lost_ids": sorted(set(range(run["sent"])) - set(run["statuses"]))[:20],
        "in_flight_after": stats["in_flight"],
        "duplicate_replies": run["duplicates"],
        "kills": run["kills"],
        "recovery_median_s": statistics.median(recoveries) if recoveries else None,
        "recovery_max_s": max(recoveries) if recoveries else None,
        "recovery_server_side_s": server_side,
        "never_recovered": sum(k["recovery_s"] is None for k in run["kills"]),
        "rss_start": rss_start,
        "rss_end": rss_end,
        "server_exit_code": code,
        "log": str(log_path),
    })  # fmt: skip
    checks = {}
    for key, (op, target) in TARGETS.items():
        v = result[key]
        checks[key] = v is not None and (v == target if op == "==" else v <= target)
    result["targets_met"] = checks
    if args.json:
        print(json.dumps(result))
    else:
        _print(result)
    ok = all(checks.values()) and code == 0 and not result["never_recovered"]
    return 0 if ok else 1


def _print(r: dict) -> None:
    c = r["config"]
    print(f"soak: {c['duration']:g} s, {c['workers']} CPU worker(s), model {c['model']}, "
          f"SLO {c['slo_ms']:g} ms; capacity {r['capacity_rps']:g} req/s, offered "
          f"{r['offered_rps']:g} req/s ({c['load']:.0%}); a worker killed every "
          f"{c['kill_every']:g} s")  # fmt: skip
    print(f"requests sent      {r['requests_sent']}")
    print("replies            " + ", ".join(f"{k} {v}" for k, v in r["replies"].items()))
    print(f"lost replies       {r['lost_replies']}   (target 0)"
          + (f"; ids {r['lost_ids']}; in flight at the server after the run: "
             f"{r['in_flight_after']}" if r["lost_replies"] else ""))  # fmt: skip
    print(f"duplicate replies  {r['duplicate_replies']}   (target 0)")
    rec = [k["recovery_s"] for k in r["kills"]]
    print(f"kills              {len(r['kills'])}; time to full capacity (SIGKILL -> every "
          f"worker ready again, the victim with a new pid, seen by `health`) s: {rec}")  # fmt: skip
    if r["recovery_median_s"] is not None:
        print(f"recovery           median {r['recovery_median_s']:.3f} s, max "
              f"{r['recovery_max_s']:.3f} s   (target: median <= 2 s)")  # fmt: skip
    print(f"server-side        {r['recovery_server_side_s']} (supervisor: death -> ready)")
    print(f"{'process':<18}{'pid start':>10}{'RSS start MB':>14}{'pid end':>10}"
          f"{'RSS end MB':>12}")  # fmt: skip
    for role in sorted(set(r["rss_start"]) | set(r["rss_end"])):
        a, b = r["rss_start"].get(role, {}), r["rss_end"].get(role, {})
        print(f"{role:<18}{a.get('pid', '-'):>10}{a.get('rss_mb', '-'):>14}"
              f"{b.get('pid', '-'):>10}{b.get('rss_mb', '-'):>12}")  # fmt: skip
    print(f"server exit code   {r['server_exit_code']}; targets met: {r['targets_met']}")


if __name__ == "__main__":
    sys.exit(main())
