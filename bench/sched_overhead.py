#!/usr/bin/env python3
"""Scheduler overhead: the cost of one orloj decision and of one queue insertion.

Compiled engine and pure-Python twin side by side, over queue lengths, app counts and
histogram sizes. Each decision is timed alone: after it, the requests it dispatched or
dropped are replaced (untimed), so the queue keeps its length and its spread of slacks.

Workload: apps with lognormal solo times (CoV 1, means 10, 5, 20 and 8 ms), each request's
deadline 20-200 ms ahead, the clock fixed at 0.

    python bench/sched_overhead.py                       # the full grid, a table
    python bench/sched_overhead.py --queues 1000 --apps 4 --bins 64 --json

Targets (issue 2, on a 2-core machine): native decision at queue 1,000, 4 apps, 64 bins,
max batch 32: p50 <= 5 us, p99 <= 20 us; at queue 100,000 at most 2x that; native >= 50x
pure on the same row; native insertion p50 <= 2 us.

Apps seen (`--apps-seen N`, issue 19): the cost of a decision, and the process's memory,
as distinct apps pass through a model. A probe keeps one request of each of 16 apps
queued (`--probe-apps`), refilled after each decision, and teaches the policy each
dispatched member's solo time, as the scheduler does; N other apps then pass through,
one request each (decided and learned from), `--apps-gap-ms` apart on the policy's clock
(default 1 ms: a client sending a burst of new app tags). The probe is timed before any
passes (its own apps only), and again after 500, 2,000, 5,000 and N apps. RSS is the
process's resident memory after each probe, as growth over the first; the policy's
limits are the defaults (256 live apps; idle apps are not forgotten: the cap alone bounds
the state here, in 10 s of clock).

    python bench/sched_overhead.py --apps-seen 10000 [--json]

Targets (issue 19): after 10,000 apps, RSS grows by less than 20 MB and decision p99
stays within 2x of its value before.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import random
import sys
import time

APP_MEANS = [0.010, 0.005, 0.020, 0.008]
SLACK = (0.020, 0.200)


def engines(which: str) -> list[tuple[str, object]]:
    out = []
    if which in ("both", "native"):
        try:
            out.append(("native", importlib.import_module("orloj_rt.engine._native")))
        except ImportError:
            print("sched_overhead: compiled engine not built; timing the pure twin only "
                  "(run `pip install -e .`)", file=sys.stderr)
    if which in ("both", "pure"):
        out.append(("pure", importlib.import_module("orloj_rt.engine.pure")))
    return out


def percentile(sorted_values: list[float], q: float) -> float:
    i = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[i]


def measure(mod, queue: int, apps: int, bins: int, max_batch: int, decisions: int,
            inserts: int, seed: int, pools: bool = False) -> dict:
    rng = random.Random(seed)
    policy = mod.OrlojPolicy(max_batch=max_batch, pools=pools)
    names = [f"app{a}" for a in range(apps)]
    for a, name in enumerate(names):
        policy.set_distribution(name, mod.Distribution.from_mean_cov(APP_MEANS[a % 4], 1.0,
                                                                     bins=bins))
    next_id = 0

    def fill(n: int) -> None:
        nonlocal next_id
        for _ in range(n):
            policy.enqueue(next_id, names[rng.randrange(apps)], 0.0, rng.uniform(*SLACK))
            next_id += 1

    fill(queue)
    gc.collect()
    gc.disable()
    try:
        decide_ns = []
        batch_sizes = []
        for _ in range(decisions):
            t0 = time.perf_counter_ns()
            d = policy.decide(0.0)
            t1 = time.perf_counter_ns()
            decide_ns.append(t1 - t0)
            batch_sizes.append(len(d.batch))
            fill(len(d.batch) + len(d.dropped))
        insert_ns = []
        for _ in range(inserts):
            rid = next_id
            next_id += 1
            app = names[rng.randrange(apps)]
            deadline = rng.uniform(*SLACK)
            t0 = time.perf_counter_ns()
            policy.enqueue(rid, app, 0.0, deadline)
            t1 = time.perf_counter_ns()
            insert_ns.append(t1 - t0)
            policy.remove(rid)
    finally:
        gc.enable()
    decide_ns.sort()
    insert_ns.sort()
    return {
        "queue": queue, "apps": apps, "bins": bins, "max_batch": max_batch,
        "decide_p50_us": percentile(decide_ns, 0.50) / 1e3,
        "decide_p99_us": percentile(decide_ns, 0.99) / 1e3,
        "insert_p50_us": percentile(insert_ns, 0.50) / 1e3,
        "mean_batch": sum(batch_sizes) / len(batch_sizes),
        "decisions": decisions,
    }


def rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_apps_seen(mod, seen: int, probe_apps: int, max_batch: int, decisions: int,
                      gap_s: float, seed: int, pools: bool = False) -> list[dict]:
    """Rows of probe timings after 0, 500, 2,000, 5,000 and `seen` passing apps."""
    rng = random.Random(seed)
    policy = mod.OrlojPolicy(max_batch=max_batch, pools=pools)
    policy.set_default_distribution(mod.Distribution.from_mean_cov(0.005, 1.0))
    probe = [f"probe{a}" for a in range(probe_apps)]
    means = {app: APP_MEANS[a % 4] for a, app in enumerate(probe)}
    st = {"id": 0, "now": 0.0}

    def solo(mean: float) -> float:
        return rng.lognormvariate(0.0, 0.8) * mean * 0.73  # CoV ~ 1, mean ~ `mean`

    def enqueue(app: str) -> int:
        rid = st["id"]
        st["id"] += 1
        policy.enqueue(rid, app, st["now"], st["now"] + rng.uniform(*SLACK))
        return rid

    def run_probe(n: int) -> list[int]:
        queued = {enqueue(app): app for app in probe}
        out = []
        gc.collect()
        gc.disable()
        try:
            for _ in range(n):
                t0 = time.perf_counter_ns()
                d = policy.decide(st["now"])
                out.append(time.perf_counter_ns() - t0)
                for rid in d.batch:
                    app = queued.pop(rid)
                    policy.observe_solo(app, solo(means[app]))
                    queued[enqueue(app)] = app
                for rid in d.dropped:
                    app = queued.pop(rid)
                    queued[enqueue(app)] = app
                st["now"] += 1e-5
        finally:
            gc.enable()
        for rid in queued:
            policy.remove(rid)
        out.sort()
        return out

    def pass_apps(n: int, first: int) -> None:
        for k in range(first, first + n):
            app = f"passing-{k}"
            rid = enqueue(app)
            d = policy.decide(st["now"])
            if rid in d.batch:
                policy.observe_solo(app, solo(0.005))
            st["now"] += gap_s

    run_probe(decisions)  # warm-up: caches, tables, allocator
    rows = []
    done = 0
    base_rss = None
    for mark in [0] + [m for m in (500, 2000, 5000) if m < seen] + [seen]:
        pass_apps(mark - done, done)
        done = mark
        ns = run_probe(decisions)
        gc.collect()
        rss = rss_mb()
        if base_rss is None:
            base_rss = rss
        rows.append({
            "apps_seen": mark, "live_apps": len(policy.apps),
            "decide_p50_us": percentile(ns, 0.50) / 1e3,
            "decide_p99_us": percentile(ns, 0.99) / 1e3,
            "rss_mb": rss, "rss_growth_mb": rss - base_rss,
            "max_apps": getattr(policy, "max_apps", None),
            "decisions": decisions,
        })
    return rows


def apps_seen_main(args) -> int:
    out = []
    for impl, mod in engines(args.impl):
        reps = args.decisions if impl == "native" else max(30, args.decisions // 10)
        if not args.json:
            print(f"\r{impl}: {args.apps_seen} apps passing ...", end="", file=sys.stderr,
                  flush=True)  # fmt: skip
        rows = measure_apps_seen(mod, args.apps_seen, args.probe_apps, args.max_batch, reps,
                                 args.apps_gap_ms / 1e3, args.seed, args.pools)  # fmt: skip
        first, last = rows[0], rows[-1]
        out.append({
            "impl": impl, "pools": args.pools, "probe_apps": args.probe_apps,
            "apps_gap_ms": args.apps_gap_ms, "rows": rows,
            "p99_ratio": last["decide_p99_us"] / first["decide_p99_us"],
            "rss_growth_mb": last["rss_growth_mb"],
        })
    if not args.json:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    if args.json:
        print(json.dumps({"apps_seen": out}))
        return 0
    print(f"probe: one queued request from each of {args.probe_apps} apps, max batch "
          f"{args.max_batch}; apps pass {args.apps_gap_ms:g} ms apart")
    print(f"{'impl':6} {'apps seen':>9} {'live apps':>9} {'decide p50 us':>13} "
          f"{'decide p99 us':>13} {'RSS MB':>8} {'growth MB':>9}")
    for e in out:
        for r in e["rows"]:
            print(f"{e['impl']:6} {r['apps_seen']:>9} {r['live_apps']:>9} "
                  f"{r['decide_p50_us']:>13.2f} {r['decide_p99_us']:>13.2f} "
                  f"{r['rss_mb']:>8.1f} {r['rss_growth_mb']:>9.1f}")
    for e in out:
        print(f"{e['impl']}: after {args.apps_seen} apps, decision p99 {e['p99_ratio']:.2f}x "
              f"its value before (target <= 2x); RSS grew {e['rss_growth_mb']:.1f} MB "
              f"(target < 20 MB)")
    return 0


def int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queues", type=int_list, default=[10, 100, 1000, 10000, 100000],
                    help="queue lengths (comma-separated; default 10,100,1000,10000,100000)")
    ap.add_argument("--apps", type=int_list, default=[1, 4],
                    help="apps per queue (comma-separated; default 1,4)")
    ap.add_argument("--bins", type=int_list, default=[64, 128],
                    help="histogram bins (comma-separated; default 64,128)")
    ap.add_argument("--max-batch", type=int, default=32, help="maximum batch (default 32)")
    ap.add_argument("--impl", choices=["both", "native", "pure"], default="both")
    ap.add_argument("--decisions", type=int, default=3000,
                    help="timed decisions per row, native (pure: a tenth, at least 30)")
    ap.add_argument("--inserts", type=int, default=3000, help="timed insertions per row")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pools", action="store_true",
                    help="time the orloj policy with member pools (pools=True)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    ap.add_argument("--apps-seen", type=int, metavar="N",
                    help="instead of the grid: decision time and RSS as N distinct apps "
                    "pass through a model (see the docstring)")  # fmt: skip
    ap.add_argument("--probe-apps", type=int, default=16,
                    help="--apps-seen: apps with a request queued in the probe (default 16)")
    ap.add_argument("--apps-gap-ms", type=float, default=1.0,
                    help="--apps-seen: policy-clock ms between passing apps (default 1)")
    args = ap.parse_args(argv)
    if args.apps_seen is not None:
        if args.apps_seen < 1 or args.probe_apps < 1 or not args.apps_gap_ms >= 0:
            ap.error("--apps-seen and --probe-apps need N >= 1, --apps-gap-ms >= 0")
        return apps_seen_main(args)

    rows = []
    grid = [(q, a, b) for q in args.queues for a in args.apps for b in args.bins]
    for n, (q, a, b) in enumerate(grid, 1):
        for impl, mod in engines(args.impl):
            reps = args.decisions if impl == "native" else max(30, args.decisions // 10)
            ins = args.inserts if impl == "native" else max(30, args.inserts // 10)
            if not args.json:
                print(f"\r[{n}/{len(grid)}] {impl:6s} queue={q} apps={a} bins={b} ...",
                      end="", file=sys.stderr, flush=True)
            row = measure(mod, q, a, b, args.max_batch, reps, ins, args.seed, args.pools)
            rows.append({"impl": impl, "pools": args.pools, **row})
    if not args.json:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)

    if args.json:
        print(json.dumps({"rows": rows}))
        return 0
    native = {(r["queue"], r["apps"], r["bins"]): r for r in rows if r["impl"] == "native"}
    print(f"{'impl':6} {'queue':>7} {'apps':>4} {'bins':>4} {'decide p50 us':>13} "
          f"{'decide p99 us':>13} {'insert p50 us':>13} {'batch':>5} {'native x':>9}")
    for r in rows:
        key = (r["queue"], r["apps"], r["bins"])
        speed = ""
        if r["impl"] == "pure" and key in native:
            speed = f"{r['decide_p50_us'] / native[key]['decide_p50_us']:.0f}x"
        print(f"{r['impl']:6} {r['queue']:>7} {r['apps']:>4} {r['bins']:>4} "
              f"{r['decide_p50_us']:>13.2f} {r['decide_p99_us']:>13.2f} "
              f"{r['insert_p50_us']:>13.2f} {r['mean_batch']:>5.1f} {speed:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
