#!/usr/bin/env python3
"""Routing between nodes in the simulator (issue 16): random, round-robin, p2c (power of
two choices by queue length) and orloj (by the expected finishes a send adds) over N
nodes, each the runtime's serving core (orloj_rt/sim/cluster.py).

Sweeps nodes {4, 16, 64, 256} x arrivals {trace, poisson} x node speeds {equal,
unequal: every second node 2x slower} x state age {0, 2} (units of the mean solo time),
every router on the same requests in each cell. The costs are the Azure LLM conversation
trace's (`azure-conv`, docs/simulation.md); "trace" arrivals replay its timestamps (its
rate drifts over the hour: the bursty trace), "poisson" arrivals are exponential gaps at
the same mean rate. Each node has --workers-per-node workers and runs orloj. The load is
--util of the cluster's capacity, the same for both speed sets: per node, util x workers
x the nodes' mean speed arrivals per unit (0.7 x 1 x 1 = 0.7 with equal speeds,
0.7 x 0.75 = 0.525 with unequal ones; a request's mean solo time is 1 unit on a speed-1
node), or --load per node for every cell. Every request's deadline is its arrival +
--slo units.

Writes --out.md (the table and the targets), --out.csv (every metric of every cell and
router), --out.json (what --json prints, and the details) and --out.png (finish rate
against nodes, a panel per arrival x speeds x state age). Progress goes to stderr.

    python bench/cluster_routing.py --out docs/results/cluster_routing     # the sweep
    python bench/cluster_routing.py --quick                                # a quick look
    python bench/cluster_routing.py --nodes 64 --speeds unequal --arrivals trace --json

--json prints one object: {"rows": [{"nodes", "arrival", "speeds", "state_age",
"router", "finish_rate"}, ...], "targets": [...], "config": {...}}.

Targets (issue 16): at 64 nodes, unequal speeds, the trace's arrivals: orloj >= 1.3x
p2c's finish rate with state age 0, >= 1.1x with state age 2; orloj never below p2c in
any cell.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import shlex
import sys
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

NODES = (4, 16, 64, 256)
ARRIVALS = ("trace", "poisson")
SPEEDS = ("equal", "unequal")
STATE_AGES = (0.0, 2.0)
ROUTERS = ("random", "round-robin", "p2c", "orloj")
DEFAULT_SLO = 3.0
DEFAULT_UTIL = 0.7
DEFAULT_WORKERS = 1
DEFAULT_REQUESTS = 20_000
QUICK_NODES = (4, 16)
QUICK_REQUESTS = 2_000


def run_one(job: dict) -> dict:
    """One router on one cell (a process of the pool): its metrics and time."""
    from orloj_rt.sim.cluster import ClusterConfig, run_router
    from orloj_rt.sim.workloads import DEFAULT_TRACE, WorkloadSpec

    spec = WorkloadSpec(solo="trace", trace=str(DEFAULT_TRACE), slo=job["slo"],
                        load=job["load"], requests=job["requests"], seed=job["seed"],
                        arrival=job["arrival"])  # fmt: skip
    cfg = ClusterConfig(spec, nodes=job["nodes"], workers_per_node=job["workers"],
                        speeds=job["speeds"], routers=(job["router"],),
                        state_age=job["state_age"])  # fmt: skip
    t0 = time.perf_counter()
    m = run_router(cfg, job["router"])
    return {**job, "metrics": m, "seconds": time.perf_counter() - t0}


def cell_key(r: dict) -> tuple:
    return (r["nodes"], r["arrival"], r["speeds"], r["state_age"])


def ratio(results: dict, key: tuple, a: str = "orloj", b: str = "p2c") -> float | None:
    fa, fb = results.get((*key, a)), results.get((*key, b))
    if fa is None or fb is None or fb == 0:
        return None
    return fa / fb


def check_targets(results: dict, cells: list[tuple], bounds: dict | None = None) -> list[dict]:
    """The issue's targets on what was run; a target whose cell was not run says so. Where
    the cell's bound is known, `reachable` says whether any policy that does not know solo
    times could meet it: the bound over p2c's finish rate against what the target needs."""
    out = []
    for age, need in ((0.0, 1.3), (2.0, 1.1)):
        key = (64, "trace", "unequal", age)
        r = ratio(results, key)
        b = (bounds or {}).get(key[:3])
        p2c = results.get((*key, "p2c"))
        ceiling = None if b is None or not p2c else float(max(b.values()) / p2c)
        out.append({
            "target": f"64 nodes, unequal speeds, trace arrivals, state age {age:g}: "
                      f"orloj >= {need}x p2c",
            "value": r, "need": need,
            "met": None if r is None else r >= need,
            "bound_over_p2c": ceiling,
            "reachable": None if ceiling is None else bool(ceiling >= need),
        })  # fmt: skip
    below = [(k, ratio(results, k)) for k in cells if ratio(results, k) is not None]
    worst = min(below, key=lambda kv: kv[1]) if below else None
    out.append({
        "target": "orloj never below p2c in any cell",
        "value": None if worst is None else worst[1],
        "need": 1.0,
        "met": None if worst is None else worst[1] >= 1.0,
        "cells_below": [list(k) + [r] for k, r in below if r < 1.0],
    })
    return out


def cell_bounds(cells: list[tuple], slo: float, requests: int, seed: int, load_of,
                workers: int) -> dict:  # fmt: skip
    """Per (nodes, arrival, speeds): the windowed bound on every policy that does not
    know solo times (orloj_rt/sim/bounds.py), over the cell's own arrivals and workers,
    with solo times drawn from the trace's law ("law") and from the law of the cell's own
    replayed costs ("own")."""
    from orloj_rt.engine.pure.batch_model import Inflation
    from orloj_rt.sim.bounds import windowed_finish_rate_bound
    from orloj_rt.sim.cluster import parse_speeds
    from orloj_rt.sim.workloads import DEFAULT_TRACE, WorkloadSpec, generate, trace_costs

    out = {}
    law = None
    table = Inflation().table
    for n, a, sp in sorted({k[:3] for k in cells}):
        spec = WorkloadSpec(solo="trace", trace=str(DEFAULT_TRACE), slo=slo,
                            load=load_of(n, sp) * n, requests=requests, seed=seed,
                            arrival=a)  # fmt: skip
        req = generate(spec)
        law = trace_costs(spec) if law is None else law
        speeds = [s for s in parse_speeds(sp, n) for _ in range(workers)]
        out[(n, a, sp)] = {
            "law": float(windowed_finish_rate_bound(law, slo, req.arrival, speeds, table)),
            "own": float(windowed_finish_rate_bound(req.solo, slo, req.arrival, speeds, table))}
    return out


def alone_bound(slo: float) -> float:
    """The finish rate of every request run alone at once on a speed-1 node: P(X <= slo)
    over the trace's costs (c(1) = 1). No router reaches more without knowing X."""
    from orloj_rt.sim.workloads import DEFAULT_TRACE, WorkloadSpec, trace_costs

    costs = trace_costs(WorkloadSpec(solo="trace", trace=str(DEFAULT_TRACE)))
    return float((costs <= slo).mean())


def format_table(results: dict, cells: list[tuple], routers: list[str],
                 bounds: dict | None = None) -> list[str]:  # fmt: skip
    lines = ["| nodes | arrival | speeds | state age | "
             + " | ".join(routers) + " | orloj / p2c | bound | bound / p2c |",
             "|---:|---|---|---:|" + "---:|" * (len(routers) + 3)]  # fmt: skip
    for key in cells:
        fr = [results.get((*key, r)) for r in routers]
        rt = ratio(results, key)
        p2c = results.get((*key, "p2c"))
        b = (bounds or {}).get(key[:3], {}).get("law")
        up = "-" if b is None or not p2c else f"{b / p2c:.3f}"
        mark = "" if rt is None or rt >= 1.0 else " (below)"
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]:g} | "
                     + " | ".join("-" if v is None else f"{v:.3f}" for v in fr)
                     + f" | {'-' if rt is None else f'{rt:.3f}'}{mark} | "
                     + f"{'-' if b is None else f'{b:.4f}'} | {up} |")  # fmt: skip
    return lines


def format_targets(targets: list[dict]) -> list[str]:
    out = []
    for t in targets:
        v = "not run" if t["value"] is None else f"{t['value']:.3f}"
        met = {True: "MET", False: "MISSED", None: "NOT RUN"}[t["met"]]
        extra = ""
        if t["met"] is False and t.get("reachable") is False:
            met = "UNREACHABLE"
            extra = (f" (any policy that does not know solo times gets at most "
                     f"{t['bound_over_p2c']:.3f}x p2c: the cell's bound)")
        if t.get("cells_below"):
            extra = "; below in " + ", ".join(
                f"{c[0]} nodes {c[1]} {c[2]} age {c[3]:g} ({c[4]:.3f})" for c in t["cells_below"])
        out.append(f"- {met}: {t['target']}: {v}{extra}")
    return out


def plot(path: Path, results: dict, nodes, arrivals, speeds, ages, routers) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(itertools.product(speeds, ages))
    fig, axes = plt.subplots(len(arrivals), len(panels), figsize=(3.6 * len(panels),
                             3.2 * len(arrivals)), squeeze=False, sharey=True)  # fmt: skip
    for i, arrival in enumerate(arrivals):
        for j, (sp, age) in enumerate(panels):
            ax = axes[i][j]
            for r in routers:
                xs = [n for n in nodes if (n, arrival, sp, age, r) in results]
                ys = [results[(n, arrival, sp, age, r)] for n in xs]
                if xs:
                    ax.plot(xs, ys, marker="o", label=r)
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(nodes))
            ax.set_xticklabels([str(n) for n in nodes])
            ax.set_title(f"{arrival}, {sp}, state age {age:g}", fontsize=9)
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("finish rate")
            if i == len(arrivals) - 1:
                ax.set_xlabel("nodes")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def state_cost(repeat: int = 2000) -> dict:
    """What the routing costs on this machine: `node_state` on a real serving core (orloj,
    4 workers, all busy, q requests queued, one app learned), its wire form's msgpack
    size, and one `choose` of p2c and orloj over N nodes with such states."""
    import msgpack
    import numpy as np

    from orloj_rt.cluster.routing import make_router, node_state
    from orloj_rt.serving import ServingCore
    from orloj_rt.sim.simulator import SimModel, warmup_profile

    c = [1 + 0.15 * i for i in range(32)]
    rng = np.random.default_rng(0)
    out = {"node_state": [], "choose": []}
    states = {}
    for q in (0, 16, 128, 1024):
        core = ServingCore([SimModel("m", 32)], "orloj", None, 4, timer=lambda: 0.0)
        prof = warmup_profile(list(rng.lognormal(-0.3, 0.77, 2000)), c)
        for w in range(4):
            core.worker_ready(w, [prof])
        tok = 0
        for _ in range(40):  # learn app "a": batches of one
            core.submit([(tok, 0, "a", 0.0, 1e9, None, 0, 0)])
            (run,) = core.dispatch(0.0)
            core.batch_done(run.worker, 0, True, float(rng.lognormal(-0.3, 0.77)), [1.0])
            tok += 1
        core.submit([(tok + i, 0, "a", 0.0, 1e6, None, 0, 0) for i in range(4 * 32 + q)])
        core.dispatch(0.0)  # four batches of 32 run, q wait
        since = {w: 0.0 for w in range(4)}
        t0 = time.perf_counter()
        for _ in range(repeat):
            st = node_state(core, "n", 1.0, busy_since=since)
        us = (time.perf_counter() - t0) / repeat * 1e6
        states[q] = st
        out["node_state"].append({"queued": q, "us": us,
                                  "wire_bytes": len(msgpack.packb(st.to_wire()))})
    for n in (4, 16, 64, 256):
        for name in ("p2c", "orloj"):
            r = make_router(name)
            for i in range(n):
                r.update(f"n{i}", states[(0, 16, 128)[i % 3]], 1.0)
            k = max(200, 20000 // n)
            t0 = time.perf_counter()
            for j in range(k):
                r.choose("m", "a", 5.0, 1.0 + j * 1e-6)
            out["choose"].append({"nodes": n, "router": name,
                                  "us": (time.perf_counter() - t0) / k * 1e6})
    return out


def parse_list(text: str, kind=str) -> list:
    return [kind(t.strip()) for t in text.split(",") if t.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default=",".join(map(str, NODES)), metavar="LIST")
    ap.add_argument("--arrivals", default=",".join(ARRIVALS), metavar="LIST")
    ap.add_argument("--speeds", default=",".join(SPEEDS), metavar="LIST")
    ap.add_argument("--state-ages", default=",".join(f"{a:g}" for a in STATE_AGES),
                    metavar="LIST", help="in units of the mean solo time")
    ap.add_argument("--routers", default=",".join(ROUTERS), metavar="LIST")
    ap.add_argument("--requests", type=int, default=None, metavar="N",
                    help=f"requests per cell (default {DEFAULT_REQUESTS}; --quick "
                    f"{QUICK_REQUESTS})")
    ap.add_argument("--slo", type=float, default=DEFAULT_SLO, metavar="S",
                    help=f"deadline = arrival + S units (default {DEFAULT_SLO:g})")
    ap.add_argument("--util", type=float, default=DEFAULT_UTIL, metavar="U",
                    help="arrivals as a share of the cluster's capacity (default "
                    f"{DEFAULT_UTIL:g}): per node U x workers x mean node speed")
    ap.add_argument("--load", type=float, default=None, metavar="L",
                    help="arrivals per unit per node in every cell, instead of --util")
    ap.add_argument("--workers-per-node", type=int, default=DEFAULT_WORKERS, metavar="W")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes (default: up to 2)")
    ap.add_argument("--quick", action="store_true",
                    help=f"nodes {','.join(map(str, QUICK_NODES))} and {QUICK_REQUESTS} "
                    "requests a cell, unless given")
    ap.add_argument("--out", type=Path, default=Path("out/cluster_routing"),
                    help="path prefix of the .md, .csv, .json and .png written")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--state-cost", action="store_true",
                    help="only measure what node_state and one choice cost here, and exit")
    args = ap.parse_args(argv)
    if args.state_cost:
        cost = state_cost()
        if args.json:
            print(json.dumps(cost))
            return 0
        print("node_state (orloj core, 4 workers busy, one app learned):")
        for row in cost["node_state"]:
            print(f"  {row['queued']:5d} queued: {row['us']:7.1f} us, wire "
                  f"{row['wire_bytes']} bytes (msgpack)")
        print("one choice (states of 0, 16 and 128 queued in turn):")
        for row in cost["choose"]:
            print(f"  {row['nodes']:4d} nodes, {row['router']:6}: {row['us']:8.1f} us")
        return 0

    nodes = parse_list(args.nodes, int)
    if args.quick and args.nodes == ",".join(map(str, NODES)):
        nodes = list(QUICK_NODES)
    requests = args.requests or (QUICK_REQUESTS if args.quick else DEFAULT_REQUESTS)
    arrivals = parse_list(args.arrivals)
    speeds = parse_list(args.speeds)
    ages = parse_list(args.state_ages, float)
    routers = parse_list(args.routers)
    for a in arrivals:
        if a not in ARRIVALS:
            ap.error(f"--arrivals: {a!r} is not one of {', '.join(ARRIVALS)}")
    for s in speeds:
        if s not in SPEEDS:
            ap.error(f"--speeds: {s!r} is not one of {', '.join(SPEEDS)}")
    from orloj_rt.cluster.routing import ROUTERS as KNOWN

    for r in routers:
        if r not in KNOWN:
            ap.error(f"--routers: {r!r} is not one of {', '.join(KNOWN)}")
    if not nodes or min(nodes) < 1 or requests < 1 or args.workers_per_node < 1:
        ap.error("--nodes, --requests and --workers-per-node must be >= 1")

    cells = list(itertools.product(nodes, arrivals, speeds, ages))
    # the slowest first (most nodes, orloj's full scan), so that the pool ends together
    if not (args.util > 0 and (args.load is None or args.load > 0)):
        ap.error("--util and --load must be > 0")

    def load_of(n: int, sp: str) -> float:
        if args.load is not None:
            return args.load
        from orloj_rt.sim.cluster import parse_speeds

        v = parse_speeds(sp, n)
        return args.util * args.workers_per_node * sum(v) / len(v)

    jobs = [dict(nodes=n, arrival=a, speeds=s, state_age=g, router=r, slo=args.slo,
                 load=load_of(n, s), requests=requests, seed=args.seed,
                 workers=args.workers_per_node)
            for (n, a, s, g), r in itertools.product(cells, routers)]  # fmt: skip
    order = sorted(jobs, key=lambda j: (-j["nodes"], j["router"] != "orloj"))
    t0 = time.perf_counter()
    done: list[dict] = []
    print(f"cluster_routing: {len(cells)} cells x {len(routers)} routers, {requests} "
          f"requests a cell, {args.jobs} process(es)", file=sys.stderr, flush=True)
    with Pool(max(1, args.jobs)) as pool:
        for k, res in enumerate(pool.imap_unordered(run_one, order), 1):
            done.append(res)
            print(f"[{k}/{len(order)} {time.perf_counter() - t0:6.0f} s] nodes={res['nodes']} "
                  f"{res['arrival']} {res['speeds']} age={res['state_age']:g} "
                  f"{res['router']}: {res['metrics']['finish_rate']:.3f} "
                  f"({res['seconds']:.1f} s)", file=sys.stderr, flush=True)  # fmt: skip
    results = {(*cell_key(r), r["router"]): r["metrics"]["finish_rate"] for r in done}
    print("cluster_routing: each cell's bound", file=sys.stderr, flush=True)
    bounds = cell_bounds(cells, args.slo, requests, args.seed, load_of, args.workers_per_node)
    targets = check_targets(results, cells, bounds)
    rows = [{"nodes": n, "arrival": a, "speeds": s, "state_age": g, "router": r,
             "finish_rate": results[(n, a, s, g, r)]}
            for (n, a, s, g), r in itertools.product(cells, routers)]  # fmt: skip
    config = {"slo": args.slo, "util": None if args.load is not None else args.util,
              "load_per_node": args.load if args.load is not None else {
                  s: load_of(2, s) for s in speeds}, "requests": requests,
              "workers_per_node": args.workers_per_node, "seed": args.seed,
              "workload": "azure-conv", "node_policy": "orloj",
              "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    command = "python bench/cluster_routing.py " + " ".join(shlex.quote(a) for a in
                                                              (argv or sys.argv[1:]))
    bound = alone_bound(args.slo)
    config["alone_bound"] = bound
    table = format_table(results, cells, routers, bounds)
    own = [f"{n} nodes {a} {sp} {b['own']:.4f}" for (n, a, sp), b in sorted(bounds.items())
           if a == "trace"]  # fmt: skip
    lines = [f"`{command.strip()}`", "",
             f"azure-conv costs, SLO {args.slo:g} units, "
             + (f"load {args.load:g} per node, " if args.load is not None else
                f"load {args.util:g} of the capacity (per node: " + ", ".join(
                    f"{s} {load_of(2, s):g}" for s in speeds) + "), ")
             + f"{args.workers_per_node} worker(s) per node running orloj, {requests} "
             f"requests a cell, seed {args.seed} ({config['seconds']:.0f} s)", "",
             *table, "",
             "bound: the most any router and node policy that do not know solo times "
             "can finish in expectation, these arrivals and workers, solo times drawn "
             "from the trace's law (orloj_rt/sim/bounds.py, `windowed_finish_rate_bound`)"
             "; bound / p2c is the most such a router could gain on p2c. With the law of "
             "each trace cell's own replayed costs instead: " + ("; ".join(own) or "-")
             + f". Every request run alone at once on a speed-1 node: P(X <= "
             f"{args.slo:g}) = {bound:.4f} over the trace's law (the bound with that law "
             "is at most this).",
             "", "Targets (issue 16):", *format_targets(targets)]  # fmt: skip
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")
    details = []
    with open(f"{out}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["nodes", "arrival", "speeds", "state_age", "router", "finish_rate",
                    "completed", "late", "dropped", "rejected", "p50_latency",
                    "p99_latency", "fast_share", "fallbacks", "seconds"])  # fmt: skip
        for r in sorted(done, key=lambda r: (*cell_key(r), routers.index(r["router"]))):
            m = r["metrics"]
            fast = m["by_speed"].get("1", {}).get("share")
            w.writerow([r["nodes"], r["arrival"], r["speeds"], r["state_age"], r["router"],
                        m["finish_rate"], m["completed"], m["late"], m["dropped"],
                        m["rejected"], m["p50_latency"], m["p99_latency"], fast,
                        m["fallbacks"], round(r["seconds"], 2)])  # fmt: skip
            details.append({k: r[k] for k in ("nodes", "arrival", "speeds", "state_age",
                                               "router")} | {"metrics": m})  # fmt: skip
    obj = {"rows": rows, "targets": targets, "config": config,
           "bounds": [{"nodes": n, "arrival": a, "speeds": sp, **b}
                      for (n, a, sp), b in sorted(bounds.items())]}  # fmt: skip
    Path(f"{out}.json").write_text(json.dumps({**obj, "details": details}, indent=1) + "\n")
    try:
        plot(Path(f"{out}.png"), results, nodes, arrivals, speeds, ages, routers)
    except ImportError:
        print("matplotlib is not installed (pip install 'orloj-rt[plot]'): no plot",
              file=sys.stderr)
    if args.json:
        print(json.dumps(obj))
    else:
        print("\n".join(lines[2:]))
        print(f"\nwrote {out}.md, {out}.csv, {out}.json, {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
