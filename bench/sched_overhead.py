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

As served (`--served`): the grid's rows with orloj as the serving core builds it
(orloj_rt/policies/utility.py's UtilityPolicy with priorities=True, one engine, no tiered
request): until a request of a tier > 0 arrives it is the engine's own decide, so its
decision time should equal the plain rows'.

    python bench/sched_overhead.py --queues 1000 --apps 1,4 --bins 64 --impl native --served

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

Hint classes (`--hint-classes K`, issue 15): the queue as the serving core builds it for
one app whose requests carry cost hints: every request is filed under one of K class apps
`default#h0` .. `default#h<K-1>` (orloj_rt/serving/hints.py), each with its own
distribution, as the classes of a length-driven model are: lognormal, means spread evenly
on a log scale over a decade (2 to 20 ms), each narrow (CoV `--class-cov`, default 0.3);
each request's hint is its class's "length" (mean / 0.1 ms, +-10%); deadlines and the
timing as above. orloj is built with pools=True and the serving core's tuning for hint
classes (orloj_rt/serving/hints.py, HINT_TUNING: the fallback's patience, the price share,
epsilon; `--price-share K` replaces its price share, 1 turning it off), compiled engine
and pure twin; sjf-hint
(orloj_rt/policies/sjf_hint.py, Python, over the runtime's engine's distributions) is
timed in the same setting. `--apps` is not used;
`--queues` defaults to 100,1000,10000 and `--bins` to 64 in this mode.

    python bench/sched_overhead.py --hint-classes 8 [--queues 1000] [--json]

Target (issue 15): native orloj (pools) decision p99 <= 30 us at queue 1,000 with 8 hint
classes.

Variants (`--variants N`, issue 17): orloj choosing among N model variants
(orloj_rt/policies/utility.py: one engine per variant over the same queue; cost scales
1, 1/2, 1/4, ..., accuracies 1, 0.93, 0.86, ...), the apps and deadlines of the grid. With
every request arriving at clock 0 the queue is always over what any variant drains, so
each decision takes the overload path: the cheapest variant's drops, then the variants'
evaluations, cheapest first, a costlier one skipped when it cannot win (utility.py's
pruning: here the cheapest alone is evaluated), then the batch's removal from every
variant's engine. Rows per engine, queue and app count.

    python bench/sched_overhead.py --variants 3 --queues 1000 [--json]

Target (issue 17): native decision p99 <= 30 us at queue 1,000 with 3 variants.
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
HINT_APP = "default"  # the app whose hint classes fill the queue (--hint-classes)
CLASS_MEANS = (0.002, 0.020)  # the smallest and the largest class's mean solo time
HINT_UNIT = 1e-4  # a class's hint ("length") is its mean in units of 0.1 ms
HINT_TARGET_QUEUE = 1000
HINT_TARGET_P99_US = 30.0  # issue 15: native orloj + pools, 8 classes, queue 1,000
HINT_TARGET_CLASSES = 8
VARIANT_TARGET_P99_US = 30.0  # issue 17: native, 3 variants, queue 1,000
VARIANT_TARGET_QUEUE = 1000
VARIANT_TARGET_N = 3
STEADY_AFTER = 100  # decide_p99_steady_us: the p99 over the decisions after these


STEADY_NOTE = (f"p99 steady: over the decisions after the first {STEADY_AFTER} (the first "
               "ones, on the fresh queue, form the most candidates)")


def steady_text(row: dict) -> str:
    v = row.get("decide_p99_steady_us")
    return "-" if v is None else f"{v:.2f}"


def variant_specs(n: int) -> list[tuple[str, float, float]]:
    """n variants as (name, cost scale, accuracy): full, then each half the cost."""
    return [("full" if k == 0 else f"v{k}", 0.5**k, round(1.0 - 0.07 * k, 4))
            for k in range(n)]


def class_means(k: int) -> list[float]:
    """The mean solo time of each of k hint classes: evenly spaced on a log scale from
    CLASS_MEANS[0] to CLASS_MEANS[1] (a decade); one class: their geometric mean."""
    lo, hi = CLASS_MEANS
    if k == 1:
        return [(lo * hi) ** 0.5]
    return [lo * (hi / lo) ** (i / (k - 1)) for i in range(k)]


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
            inserts: int, seed: int, pools: bool = False, classes: int = 0,
            class_cov: float = 0.3, policy_name: str = "orloj", variants: int = 0,
            served: bool = False, pool_step: float | None = None,
            pool_dense: int | None = None, price_share: float | None = None) -> dict:
    """One row. `classes` > 0: the queue's requests are spread over that many hint-class
    apps of HINT_APP (means `class_means`, CoV `class_cov`), each with a hint, instead of
    `apps` apps; `policy_name` "sjf-hint": that policy over `mod`'s distributions;
    `served`: orloj as the serving core builds it (UtilityPolicy, priorities=True);
    `pool_step`, `pool_dense`: orloj's (None: its defaults); `price_share`: orloj's with
    classes (None: the serving core's, HINT_TUNING)."""
    rng = random.Random(seed)
    step_kw = {} if pool_step is None else {"pool_step": pool_step}
    if pool_dense is not None:
        step_kw["pool_dense"] = pool_dense
    if policy_name == "sjf-hint":
        from orloj_rt.policies.sjf_hint import SjfHintPolicy

        policy = SjfHintPolicy(max_batch=max_batch)
    elif variants or served:
        from orloj_rt.policies.utility import UtilityPolicy

        policy = UtilityPolicy(max_batch=max_batch, pools=pools, engine_cls=mod.OrlojPolicy,
                               **step_kw,
                               variants=variant_specs(variants) if variants else (),
                               priorities=True)  # fmt: skip
    else:
        if classes:  # as the serving core tunes orloj once hints class requests
            from orloj_rt.serving.hints import HINT_TUNING

            step_kw.update(HINT_TUNING)
            if price_share is not None:
                step_kw["price_share"] = price_share
        policy = mod.OrlojPolicy(max_batch=max_batch, pools=pools, **step_kw)
    if classes:
        from orloj_rt.serving.hints import class_app

        means = class_means(classes)
        names = [class_app(HINT_APP, k) for k in range(classes)]
        covs = [class_cov] * classes
        hints = [m / HINT_UNIT for m in means]
    else:
        means = [APP_MEANS[a % 4] for a in range(apps)]
        names = [f"app{a}" for a in range(apps)]
        covs = [1.0] * apps
        hints = None
    for name, mean, cov in zip(names, means, covs, strict=True):
        policy.set_distribution(name, mod.Distribution.from_mean_cov(mean, cov, bins=bins))
    n_apps = len(names)
    next_id = 0

    def request() -> tuple:
        a = rng.randrange(n_apps)
        hint = None if hints is None else hints[a] * rng.uniform(0.9, 1.1)
        return names[a], rng.uniform(*SLACK), hint

    def fill(n: int) -> None:
        nonlocal next_id
        for _ in range(n):
            app, deadline, hint = request()
            policy.enqueue(next_id, app, 0.0, deadline, hint)
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
            app, deadline, hint = request()
            t0 = time.perf_counter_ns()
            policy.enqueue(rid, app, 0.0, deadline, hint)
            t1 = time.perf_counter_ns()
            insert_ns.append(t1 - t0)
            policy.remove(rid)
    finally:
        gc.enable()
    # the decisions after the first STEADY_AFTER: the first ones on the fresh queue (all
    # of its requests with their whole slack) form the most candidates
    steady = sorted(decide_ns[STEADY_AFTER:]) if decisions > 2 * STEADY_AFTER else None
    decide_ns.sort()
    insert_ns.sort()
    return {
        "queue": queue, "apps": n_apps, "bins": bins, "max_batch": max_batch,
        "decide_p50_us": percentile(decide_ns, 0.50) / 1e3,
        "decide_p99_us": percentile(decide_ns, 0.99) / 1e3,
        "decide_p99_steady_us": None if steady is None else percentile(steady, 0.99) / 1e3,
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


def hint_classes_main(args) -> int:
    """Rows for `--hint-classes K`: orloj (pools) per engine and sjf-hint, per queue and
    bin count; the issue-15 target checked on the native orloj row at queue 1,000."""
    k = args.hint_classes
    queues = args.queues or [100, 1000, 10000]
    bins_list = args.bins or [64]
    runs = [("orloj", impl, mod) for impl, mod in engines(args.impl)]
    # sjf-hint is Python: it runs over the distributions of the engine the runtime uses
    runtime_engine = importlib.import_module("orloj_rt.engine")
    runs.append(("sjf-hint", "python", runtime_engine))
    rows = []
    grid = [(q, b) for q in queues for b in bins_list]
    for n, (q, b) in enumerate(grid, 1):
        for policy, impl, mod in runs:
            native = impl == "native"
            reps = args.decisions if native else max(30, args.decisions // 10)
            ins = args.inserts if native else max(30, args.inserts // 10)
            if not args.json:
                print(f"\r[{n}/{len(grid)}] {policy} {impl:6s} queue={q} classes={k} "
                      f"bins={b} ...", end="", file=sys.stderr, flush=True)  # fmt: skip
            row = measure(mod, q, 0, b, args.max_batch, reps, ins, args.seed, pools=True,
                          classes=k, class_cov=args.class_cov, policy_name=policy,
                          pool_step=args.pool_step, pool_dense=args.pool_dense,
                          price_share=args.price_share)  # fmt: skip
            row.pop("apps")
            rows.append({"policy": policy, "impl": impl,
                         "pools": True if policy == "orloj" else None,
                         "pool_step": args.pool_step if policy == "orloj" else None,
                         "pool_dense": args.pool_dense if policy == "orloj" else None,
                         "price_share": args.price_share if policy == "orloj" else None,
                         # sjf-hint: the engine whose distributions it reads
                         "distributions": impl if policy == "orloj" else runtime_engine.IMPL,
                         "hint_classes": k, **row})  # fmt: skip
    if not args.json:
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr)
    at_target = [r for r in rows if r["policy"] == "orloj" and r["impl"] == "native"
                 and r["queue"] == HINT_TARGET_QUEUE]  # fmt: skip
    worst = max((r["decide_p99_us"] for r in at_target), default=None)
    target = {
        "decide_p99_us_max": HINT_TARGET_P99_US, "queue": HINT_TARGET_QUEUE,
        "hint_classes": HINT_TARGET_CLASSES, "policy": "orloj", "impl": "native",
        "pools": True, "measured_p99_us": worst,
        "met": None if worst is None else worst <= HINT_TARGET_P99_US,
    }  # fmt: skip
    setting = {"app": HINT_APP, "class_means_ms": [m * 1e3 for m in class_means(k)],
               "class_cov": args.class_cov, "slack_ms": [x * 1e3 for x in SLACK],
               "max_batch": args.max_batch}  # fmt: skip
    if args.json:
        print(json.dumps({"hint_classes": {"setting": setting, "rows": rows,
                                           "target": target}}))  # fmt: skip
        return 0
    means = ", ".join(f"{m:.3g}" for m in setting["class_means_ms"])
    print(f"{k} hint classes of app {HINT_APP!r} ({HINT_APP}#h0..{k - 1}): lognormal, means "
          f"{means} ms, CoV {args.class_cov:g}; orloj with pools; max batch {args.max_batch}")
    native = {(r["queue"], r["bins"]): r for r in rows
              if r["policy"] == "orloj" and r["impl"] == "native"}  # fmt: skip
    print(f"{'policy':8} {'impl':6} {'queue':>7} {'classes':>7} {'bins':>4} "
          f"{'decide p50 us':>13} {'decide p99 us':>13} {'p99 steady':>10} "
          f"{'insert p50 us':>13} {'batch':>5} {'x native':>8}")  # fmt: skip
    for r in rows:
        key = (r["queue"], r["bins"])
        ratio = ""
        if r["impl"] != "native" and key in native:
            ratio = f"{r['decide_p50_us'] / native[key]['decide_p50_us']:.1f}x"
        print(f"{r['policy']:8} {r['impl']:6} {r['queue']:>7} {r['hint_classes']:>7} "
              f"{r['bins']:>4} {r['decide_p50_us']:>13.2f} {r['decide_p99_us']:>13.2f} "
              f"{steady_text(r):>10} {r['insert_p50_us']:>13.2f} {r['mean_batch']:>5.1f} "
              f"{ratio:>8}")  # fmt: skip
    print("x native: decision p50 over native orloj's at the same queue and bins")
    print(STEADY_NOTE)
    line = (f"target (issue 15): native orloj with pools, {HINT_TARGET_CLASSES} hint classes, "
            f"queue {HINT_TARGET_QUEUE:,}: decision p99 <= {HINT_TARGET_P99_US:g} us")
    if worst is None:
        print(f"{line}: not measured here (needs the compiled engine and queue "
              f"{HINT_TARGET_QUEUE})")
    else:
        verdict = "met" if target["met"] else "NOT met"
        note = "" if k == HINT_TARGET_CLASSES else f" (measured with {k} classes)"
        print(f"{line}: {worst:.2f} us, {verdict}{note}")
    return 0


def variants_main(args) -> int:
    """Rows for `--variants N`: orloj over N variants per engine, queue and app count;
    the issue-17 target checked on the native rows at queue 1,000."""
    n = args.variants
    queues = args.queues or [100, 1000, 10000]
    bins = (args.bins or [64])[0]
    rows = []
    grid = [(q, a) for q in queues for a in args.apps]
    for i, (q, a) in enumerate(grid, 1):
        for impl, mod in engines(args.impl):
            reps = args.decisions if impl == "native" else max(30, args.decisions // 10)
            ins = args.inserts if impl == "native" else max(30, args.inserts // 10)
            if not args.json:
                print(f"\r[{i}/{len(grid)}] {impl:6s} queue={q} apps={a} variants={n} ...",
                      end="", file=sys.stderr, flush=True)  # fmt: skip
            row = measure(mod, q, a, bins, args.max_batch, reps, ins, args.seed, args.pools,
                          variants=n)  # fmt: skip
            rows.append({"impl": impl, "variants": n, "pools": args.pools, **row})
    if not args.json:
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr)
    at = [r for r in rows if r["impl"] == "native" and r["queue"] == VARIANT_TARGET_QUEUE]
    worst = max((r["decide_p99_us"] for r in at), default=None)
    target = {"decide_p99_us_max": VARIANT_TARGET_P99_US, "queue": VARIANT_TARGET_QUEUE,
              "variants": VARIANT_TARGET_N, "impl": "native", "measured_p99_us": worst,
              "met": None if worst is None else worst <= VARIANT_TARGET_P99_US}  # fmt: skip
    if args.json:
        print(json.dumps({"variants": {"specs": variant_specs(n), "rows": rows,
                                       "target": target}}))  # fmt: skip
        return 0
    print(f"orloj over {n} variants " + ", ".join(f"{v}:{c:g}:{x:g}" for v, c, x in
                                                  variant_specs(n)) + f"; {bins} bins")
    print(f"{'impl':6} {'queue':>7} {'apps':>4} {'decide p50 us':>13} {'decide p99 us':>13} "
          f"{'p99 steady':>10} {'insert p50 us':>13} {'batch':>5}")
    for r in rows:
        print(f"{r['impl']:6} {r['queue']:>7} {r['apps']:>4} {r['decide_p50_us']:>13.2f} "
              f"{r['decide_p99_us']:>13.2f} {steady_text(r):>10} {r['insert_p50_us']:>13.2f} "
              f"{r['mean_batch']:>5.1f}")
    print(STEADY_NOTE)
    line = (f"target (issue 17): native, {VARIANT_TARGET_N} variants, queue "
            f"{VARIANT_TARGET_QUEUE:,}: decision p99 <= {VARIANT_TARGET_P99_US:g} us")
    if worst is None:
        print(f"{line}: not measured here")
    else:
        note = "" if n == VARIANT_TARGET_N else f" (measured with {n} variants)"
        print(f"{line}: {worst:.2f} us, {'met' if target['met'] else 'NOT met'}{note}")
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
    ap.add_argument("--queues", type=int_list,
                    help="queue lengths (comma-separated; default 10,100,1000,10000,100000; "
                    "with --hint-classes 100,1000,10000)")  # fmt: skip
    ap.add_argument("--apps", type=int_list, default=[1, 4],
                    help="apps per queue (comma-separated; default 1,4)")
    ap.add_argument("--bins", type=int_list,
                    help="histogram bins (comma-separated; default 64,128; with "
                    "--hint-classes 64)")  # fmt: skip
    ap.add_argument("--max-batch", type=int, default=32, help="maximum batch (default 32)")
    ap.add_argument("--impl", choices=["both", "native", "pure"], default="both")
    ap.add_argument("--decisions", type=int, default=3000,
                    help="timed decisions per row, native (pure: a tenth, at least 30)")
    ap.add_argument("--inserts", type=int, default=3000, help="timed insertions per row")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--pools", action="store_true",
                    help="time the orloj policy with member pools (pools=True)")
    ap.add_argument("--served", action="store_true",
                    help="time orloj as the serving core builds it (UtilityPolicy, "
                    "priorities=True, no tiered request) instead of the engine's policy")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    ap.add_argument("--apps-seen", type=int, metavar="N",
                    help="instead of the grid: decision time and RSS as N distinct apps "
                    "pass through a model (see the docstring)")  # fmt: skip
    ap.add_argument("--probe-apps", type=int, default=16,
                    help="--apps-seen: apps with a request queued in the probe (default 16)")
    ap.add_argument("--apps-gap-ms", type=float, default=1.0,
                    help="--apps-seen: policy-clock ms between passing apps (default 1)")
    ap.add_argument("--hint-classes", type=int, metavar="K",
                    help="instead of the grid: the queue spread over K hint-class apps of "
                    "one app, orloj with pools and sjf-hint (see the docstring)")  # fmt: skip
    ap.add_argument("--pool-step", type=float, default=None,
                    help="--hint-classes: orloj's pool_step, the ratio of its pooled batch "
                    "sizes (default: the engine's; 1: every size)")  # fmt: skip
    ap.add_argument("--pool-dense", type=int, default=None,
                    help="--hint-classes: orloj's pool_dense, its pooled batch sizes' dense "
                    "start (default: the engine's)")  # fmt: skip
    ap.add_argument("--price-share", type=float, default=None,
                    help="--hint-classes: orloj's price share (default: the serving core's "
                    "with classes, HINT_TUNING; 1: off)")  # fmt: skip
    ap.add_argument("--class-cov", type=float, default=0.3,
                    help="--hint-classes: each class's CoV (default 0.3)")
    ap.add_argument("--variants", type=int, metavar="N",
                    help="instead of the grid: orloj choosing among N model variants "
                    "(see the docstring)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.variants is not None:
        if args.variants < 1 or args.hint_classes is not None or args.apps_seen is not None:
            ap.error("--variants needs N >= 1, without --hint-classes or --apps-seen")
        return variants_main(args)
    if args.hint_classes is not None:
        if args.hint_classes < 1 or not args.class_cov > 0 or args.apps_seen is not None:
            ap.error("--hint-classes needs K >= 1 and --class-cov > 0, without --apps-seen")
        return hint_classes_main(args)
    args.queues = args.queues or [10, 100, 1000, 10000, 100000]
    args.bins = args.bins or [64, 128]
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
            row = measure(mod, q, a, b, args.max_batch, reps, ins, args.seed, args.pools,
                          served=args.served)  # fmt: skip
            rows.append({"impl": impl, "pools": args.pools, "served": args.served, **row})
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
