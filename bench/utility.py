#!/usr/bin/env python3
"""Utility: accuracy-scaling variants, priority tiers and fairness in the simulator (issue 17).

Three experiments, every policy on the same requests in each cell, one process per cell:

1. Variants. Workloads bimodal and lognormal x loads 1-4 (SLO 5), the model with three
   variants full:1.0:1.0, half:0.5:0.93, quarter:0.25:0.85 (name:cost scale:accuracy);
   policies orloj (the full model only), orloj+variants (orloj choosing the variant per
   batch, orloj_rt/policies/utility.py) and loki-threshold (the whole model at the most
   accurate variant that keeps up), and orloj+variants with an accuracy floor of 0.9
   (`min_accuracy`, orloj_rt/policies/accuracy_floor.py). Per cell: answered_in_slo
   (the requests answered in time, a share of all), mean_accuracy (of those answers)
   and utility (accuracy summed over them, per request: at most 1, so where
   loki-threshold earns more than 1 / 1.2 no policy reaches 1.2x it; the targets say
   where).
2. Priorities. Load 3, 20% of the requests in tier 1 worth 10, the rest tier 0 worth 1:
   orloj with tiers against orloj ignoring them (priorities=false) and fifo (Triton's
   priority levels): each tier's finish rate and the weighted utility, and a bound on
   the top tier's finish rate for every policy that does not know solo times and never
   stops a batch (orloj_rt/sim/queue_bound.py).
3. Fairness. Two apps at 4:1 demand sharing the model at load 3 (a: bimodal, 80% of the
   arrivals; b: lognormal, 20%), orloj with --fairness 0 and F: each app's finish rate,
   Jain's index of them, the total finish rate.

Writes into --out: results.csv (experiment 1, one row per cell and policy), results.md
(all three tables and the targets), results.json (everything; also printed with --json,
whose "rows" are experiment 1's), utility.png (utility, answered in SLO and accuracy
against load, a column per workload).

    python bench/utility.py --out out/utility          # the full run (>= 4,000 requests)
    python bench/utility.py --quick                    # 1,000 requests, loads 2 and 3
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = (("full", 1.0, 1.0), ("half", 0.5, 0.93), ("quarter", 0.25, 0.85))
WORKLOADS = ("bimodal", "lognormal")
LOADS = (1.0, 2.0, 3.0, 4.0)
POLICIES = ("orloj", "orloj+variants", "loki-threshold")
#: orloj+variants with an accuracy floor (orloj_rt/policies/accuracy_floor.py): its row's
#: label, and the floor, the target's mean accuracy
FLOOR = 0.9
FLOORED = f"orloj+variants min_accuracy={FLOOR:g}"
TOP_TIER = (1, 0.2, 10.0)  # tier, share, weight
FAIR_APPS = "a:bimodal:share=0.8,b:lognormal:share=0.2"
TARGET_LOAD = 3.0
#: the top tier's bound (orloj_rt/sim/queue_bound.py): batches per size, and its law's sample
BOUND_SAMPLES = 200_000
BOUND_LAW_SAMPLES, BOUND_LAW_SEED = 200_000, 12345


def variants_cell(job) -> list[dict]:
    from orloj_rt.sim.experiment import SimConfig, run_policy
    from orloj_rt.sim.workloads import WorkloadSpec, generate

    workload, load, slo, requests, seed, choice = job
    spec = WorkloadSpec(solo=workload, slo=slo, load=load, requests=requests, seed=seed)
    config = SimConfig(spec, policies=POLICIES, variants=VARIANTS,
                       policy_params={"orloj+variants": {"choice": choice}})
    req = generate(spec)
    floored = SimConfig(spec, policies=("orloj+variants",), variants=VARIANTS,
                        policy_params={"orloj+variants": {"choice": choice,
                                                          "min_accuracy": FLOOR}})
    rows = []
    for label, cfg, name in [*((p, config, p) for p in POLICIES),
                             (FLOORED, floored, "orloj+variants")]:
        m = run_policy(cfg, name, req)
        rows.append({"workload": workload, "load": load, "policy": label,
                     "answered_in_slo": m["answered_in_slo"],
                     "mean_accuracy": m["mean_accuracy"], "utility": m["utility"],
                     "variants": m.get("variants", {}), "dropped": m["dropped"],
                     "late": m["late"]})  # fmt: skip
    return rows


def capacities(slo: float, seed: int) -> dict:
    """Per workload, each variant's capacity (requests per mean solo time, batches within
    half the SLO) from the workload's law (its warm-up sample), as orloj+variants and
    loki-threshold compute it from what they learn."""
    from orloj_rt.engine import Distribution
    from orloj_rt.engine.pure.batch_model import Inflation
    from orloj_rt.policies.utility import variant_capacities
    from orloj_rt.sim.workloads import WorkloadSpec, generate

    out = {}
    for w in WORKLOADS:
        req = generate(WorkloadSpec(solo=w, slo=slo, load=1.0, requests=10, seed=seed))
        caps = variant_capacities(Distribution.from_samples(req.prior),
                                  [c for _, c, _ in VARIANTS], Inflation(32, 0.15).table,
                                  0.5 * slo)  # fmt: skip
        out[w] = {name: round(c, 3) for (name, _, _), c in zip(VARIANTS, caps, strict=True)}
    return out


def priorities_cell(job) -> dict:
    import numpy as np

    from orloj_rt.engine.pure.batch_model import Inflation
    from orloj_rt.sim.experiment import SimConfig, run_policy
    from orloj_rt.sim.queue_bound import waiting_finish_rate_bound
    from orloj_rt.sim.workloads import WorkloadSpec, generate, sample_solo

    workload, slo, requests, seed, bound_samples = job
    spec = WorkloadSpec(solo=workload, slo=slo, load=TARGET_LOAD, requests=requests, seed=seed)
    req = generate(spec)
    out = {}
    for label, name, params in (("orloj", "orloj", {}),
                                ("orloj-no-tiers", "orloj", {"priorities": False}),
                                ("fifo", "fifo", {})):  # fmt: skip
        config = SimConfig(spec, policies=(name,), priorities=(TOP_TIER,),
                           policy_params={name: params} if params else {})  # fmt: skip
        m = run_policy(config, name, req)
        out[label] = {"finish_rate": m["finish_rate"], "utility": m["utility"],
                      "tiers": {t: r["finish_rate"] for t, r in m["tiers"].items()}}
    # the top tier is a Poisson stream of its share of the load, whatever else is served;
    # c(b) as every run above had it (SimConfig's defaults)
    law = sample_solo(spec, np.random.default_rng(BOUND_LAW_SEED), BOUND_LAW_SAMPLES)
    cell = SimConfig(spec)
    table = Inflation(cell.max_batch, cell.batch_alpha).table
    bound, se = waiting_finish_rate_bound(law, slo, TARGET_LOAD * TOP_TIER[1], table,
                                          samples=bound_samples,
                                          depth=3 if bound_samples >= BOUND_SAMPLES else 2)
    return {"workload": workload, "policies": out,
            "top_bound": {"bound": bound, "se": se, "samples": bound_samples}}


def fairness_cell(job) -> dict:
    from orloj_rt.sim.experiment import SimConfig, run_policy
    from orloj_rt.sim.mix import parse_apps
    from orloj_rt.sim.workloads import MIX, WorkloadSpec, generate

    fairness, slo, requests, seed = job
    spec = WorkloadSpec(solo=MIX, slo=slo, load=TARGET_LOAD, requests=requests, seed=seed,
                        app_mix=parse_apps(FAIR_APPS, slo))  # fmt: skip
    req = generate(spec)
    out = {}
    for f in (0.0, fairness):
        config = SimConfig(spec, policies=("orloj",), fairness=f)
        m = run_policy(config, "orloj", req)
        out[f"fairness={f:g}"] = {"finish_rate": m["finish_rate"], "jain": m["jain"],
                                  "apps": {a: r["finish_rate"] for a, r in m["apps"].items()}}
    return {"apps": FAIR_APPS, "fairness": fairness, "runs": out}


def _run(job):
    kind, args = job
    fn = {"variants": variants_cell, "priorities": priorities_cell,
          "fairness": fairness_cell}[kind]  # fmt: skip
    return kind, fn(args)


def check_targets(rows: list[dict], prio: list[dict], fair: dict) -> list[str]:
    """One line per issue-17 target: met or MISSED, with the measured value."""
    lines = []

    def cell(w, p):
        for r in rows:
            if r["workload"] == w and r["load"] == TARGET_LOAD and r["policy"] == p:
                return r
        return None

    for w in WORKLOADS:
        base, var, loki = cell(w, "orloj"), cell(w, "orloj+variants"), cell(w, "loki-threshold")
        if base is None or var is None or loki is None:
            lines.append(f"variants {w}: load {TARGET_LOAD:g} not in this run")
            continue
        b_slo = base["answered_in_slo"]
        for label in ("orloj+variants", FLOORED):
            r = cell(w, label)
            if r is None:
                continue
            x = r["answered_in_slo"] / b_slo if b_slo else math.inf
            acc = r["mean_accuracy"] or 0.0
            ok = x >= 1.8 and acc >= FLOOR
            lines.append(f"{'met' if ok else 'MISSED'}: {w} load 3, answered in SLO {label}"
                         f" / orloj = {x:.2f}x (>= 1.8x) at mean accuracy {acc:.3f} (>= 0.9)")
        u = var["utility"] / loki["utility"] if loki["utility"] else math.inf
        lines.append(f"{'met' if u >= 1.2 else 'MISSED'}: {w} load 3, utility orloj+variants"
                     f" / loki-threshold = {u:.3f}x (>= 1.2x)")
    # No policy earns more than 1 per request (an answer in time at accuracy <= 1), so
    # where loki-threshold earns more than 1 / 1.2 per request, 1.2x is out of reach.
    for r in rows:
        if r["policy"] == "loki-threshold" and TARGET_LOAD - 1 <= r["load"] <= TARGET_LOAD + 1:
            need = 1.2 * r["utility"]
            lines.append(f"{'unreachable' if need > 1.0 else 'reachable'}: {r['workload']} "
                         f"load {r['load']:g}, 1.2x loki-threshold's utility = {need:.3f} "
                         f"{'>' if need > 1.0 else '<='} 1, the most any policy earns per "
                         "request")
    for c in prio:
        p = c["policies"]
        top = p["orloj"]["tiers"].get(str(TOP_TIER[0]), 0.0)
        ok = top >= 0.95 and p["orloj"]["utility"] >= p["orloj-no-tiers"]["utility"]
        b = c["top_bound"]
        out_of_reach = not ok and b["bound"] + 3 * b["se"] < 0.95
        verdict = "met" if ok else "UNREACHABLE" if out_of_reach else "MISSED"
        lines.append(f"{verdict}: priorities {c['workload']} load 3, top tier "
                     f"finish rate {top:.3f} (>= 0.95; any policy that does not know solo "
                     f"times and never stops a batch: at most {b['bound']:.4f} +- "
                     f"{b['se']:.4f}), weighted utility "
                     f"{p['orloj']['utility']:.3f} vs {p['orloj-no-tiers']['utility']:.3f} "
                     "without tiers (>=)")
    if fair:
        runs = fair["runs"]
        off, on = runs["fairness=0"], runs[f"fairness={fair['fairness']:g}"]
        loss = 1 - on["finish_rate"] / off["finish_rate"] if off["finish_rate"] else 0.0
        ok = on["jain"] >= 0.95 and loss <= 0.05
        lines.append(f"{'met' if ok else 'MISSED'}: fairness {fair['fairness']:g} ({fair['apps']}, "
                     f"load 3): Jain {on['jain']:.3f} (>= 0.95; {off['jain']:.3f} off), total "
                     f"finish rate {on['finish_rate']:.3f} vs {off['finish_rate']:.3f} off "
                     f"({loss * 100:.1f}% lower, <= 5%)")
    return lines


def format_tables(rows, prio, fair, caps=None) -> str:
    out = ["## Variants (SLO 5; full:1.0:1.0, half:0.5:0.93, quarter:0.25:0.85)", ""]
    if caps:
        out += ["Capacities (requests per mean solo time, batches within half the SLO, from "
                "each workload's law): " + "; ".join(
                    f"{w}: " + ", ".join(f"{v} {c:.2f}" for v, c in cs.items())
                    for w, cs in caps.items()), ""]
    out += [
           "| workload | load | policy | answered in SLO | mean accuracy | utility | "
           "batches' variants (requests) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = "-" if r["mean_accuracy"] is None else f"{r['mean_accuracy']:.3f}"
        var = ", ".join(f"{k} {v}" for k, v in r["variants"].items()) or "full only"
        out.append(f"| {r['workload']} | {r['load']:g} | {r['policy']} | "
                   f"{r['answered_in_slo']:.3f} | {acc} | {r['utility']:.3f} | {var} |")
    if prio:
        out += ["", f"## Priorities (load 3, {TOP_TIER[1]:.0%} in tier {TOP_TIER[0]} worth "
                f"{TOP_TIER[2]:g})", "", "| workload | policy | tier 0 | tier 1 | finish rate | "
                "weighted utility |", "|---|---|---|---|---|---|"]
        for c in prio:
            for label, m in c["policies"].items():
                out.append(f"| {c['workload']} | {label} | {m['tiers'].get('0', 0):.3f} | "
                           f"{m['tiers'].get('1', 0):.3f} | {m['finish_rate']:.3f} | "
                           f"{m['utility']:.3f} |")
        out += ["", "The top tier's bound (orloj_rt/sim/queue_bound.py: every policy that does "
                "not know solo times and never stops a batch, in expectation): " + "; ".join(
                    f"{c['workload']} {c['top_bound']['bound']:.4f} +- "
                    f"{c['top_bound']['se']:.4f}" for c in prio) + "."]
    if fair:
        out += ["", f"## Fairness ({fair['apps']}, load 3)", "",
                "| run | app a | app b | Jain | total finish rate |", "|---|---|---|---|---|"]
        for label, m in fair["runs"].items():
            out.append(f"| {label} | {m['apps']['a']:.3f} | {m['apps']['b']:.3f} | "
                       f"{m['jain']:.3f} | {m['finish_rate']:.3f} |")
    return "\n".join(out)


def plot(out: Path, rows: list[dict], loads) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = (("utility", "utility"), ("answered_in_slo", "answered in SLO"),
               ("mean_accuracy", "mean accuracy"))  # fmt: skip
    fig, axes = plt.subplots(len(metrics), len(WORKLOADS), figsize=(5 * len(WORKLOADS), 8),
                             sharex=True, squeeze=False)  # fmt: skip
    for j, w in enumerate(WORKLOADS):
        for i, (key, label) in enumerate(metrics):
            ax = axes[i][j]
            for p in (*POLICIES, FLOORED):
                pts = [(r["load"], r[key]) for r in rows
                       if r["workload"] == w and r["policy"] == p and r[key] is not None]
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p)
            ax.set_ylabel(label)
            if i == 0:
                ax.set_title(f"{w}, SLO 5")
            if i == len(metrics) - 1:
                ax.set_xlabel("load")
            ax.set_xticks(list(loads))
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = out / "utility.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])  # fmt: skip
    ap.add_argument("--out", type=Path, default=Path("out/utility"),
                    help="output folder (default out/utility)")
    ap.add_argument("--requests", type=int, default=4000,
                    help="requests per cell (default 4000; the targets want >= 4000)")
    ap.add_argument("--loads", default=None,
                    help="comma-separated loads (default 1,2,3,4; --quick: 2,3)")
    ap.add_argument("--slo", type=float, default=5.0, help="SLO in mean solo times (default 5)")
    ap.add_argument("--fairness", type=float, default=2.0,
                    help="the fairness gain compared with 0 (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--choice", choices=("capacity", "price", "rate"), default="capacity",
                    help="how orloj+variants chooses a variant (orloj_rt/policies/utility.py; "
                    "default capacity)")
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--quick", action="store_true",
                    help="1,000 requests a cell, loads 2 and 3: a look, not the targets")
    ap.add_argument("--bound-samples", type=int, default=None,
                    help="batches per size for the top tier's bound (default 200,000, "
                         "looking 3 batches ahead; --quick or fewer: 2 ahead, 20,000)")
    ap.add_argument("--no-plot", action="store_true", help="skip utility.png")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    requests = 1000 if args.quick else args.requests
    if args.loads is not None:
        loads = [float(x) for x in args.loads.split(",") if x.strip()]
    else:
        loads = [2.0, 3.0] if args.quick else list(LOADS)
    if requests < 1 or not loads or any(not x > 0 for x in loads):
        ap.error("--requests and --loads must be positive")
    jobs = [("variants", (w, load, args.slo, requests, args.seed, args.choice))
            for w in WORKLOADS for load in loads]  # fmt: skip
    bound_samples = args.bound_samples or (BOUND_SAMPLES // 10 if args.quick else BOUND_SAMPLES)
    if bound_samples < 100:
        ap.error("--bound-samples must be at least 100")
    jobs += [("priorities", (w, args.slo, requests, args.seed, bound_samples))
             for w in WORKLOADS]  # fmt: skip
    jobs.append(("fairness", (args.fairness, args.slo, requests, args.seed)))
    t0 = time.time()
    with Pool(max(1, args.jobs)) as pool:
        done = pool.map(_run, jobs, chunksize=1)
    rows = [r for kind, res in done if kind == "variants" for r in res]
    prio = [res for kind, res in done if kind == "priorities"]
    fair = next(res for kind, res in done if kind == "fairness")
    caps = capacities(args.slo, args.seed)
    targets = check_targets(rows, prio, fair)
    if requests < 4000:
        targets.append(f"note: {requests} requests a cell; the targets ask for >= 4,000")
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python", "bench/utility.py", *given])
    result = {"config": {"requests": requests, "loads": loads, "slo": args.slo,
                         "variants": [list(v) for v in VARIANTS], "top_tier": list(TOP_TIER),
                         "fair_apps": FAIR_APPS, "fairness": args.fairness,
                         "choice": args.choice,
                         "seed": args.seed, "seconds": round(time.time() - t0, 1),
                         "command": command},
              "rows": rows, "capacities": caps, "priorities": prio, "fairness": fair,
              "targets": targets}
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        keys = ["workload", "load", "policy", "answered_in_slo", "mean_accuracy", "utility",
                "dropped", "late"]
        wr = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        wr.writeheader()
        wr.writerows(rows)
    tables = format_tables(rows, prio, fair, caps)
    (args.out / "results.md").write_text(
        f"{tables}\n\n## Targets\n\n" + "\n".join(f"- {t}" for t in targets) +
        f"\n\n({result['config']['command']}; {result['config']['seconds']} s)\n")
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    if not args.no_plot:
        plot(args.out, rows, loads)
    if args.json:
        print(json.dumps(result))
    else:
        print(tables)
        print("\nTargets:")
        print("\n".join(f"  {t}" for t in targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
