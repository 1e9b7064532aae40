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
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
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
    args = ap.parse_args(argv)

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
