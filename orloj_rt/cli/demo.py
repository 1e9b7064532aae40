"""`orloj-rt demo`: orloj beside fifo (Triton's dynamic batcher) on the same overload.

For each policy asked for (default: orloj and fifo) it starts a server (`orloj-rt start
--cpu-workers N`) with the built-in models on the CPU, gives it the same short warm-up,
sends the same bounded open-loop load of `early_exit` requests whose exit depths are
bimodal (most exit early, some run every layer: the case where one slow member makes a
whole batch late), prints finish rate, status counts and latency, and shuts the server
down cleanly. The same seed gives every policy the same requests at the same times.

Unless `--rate` and `--slo-ms` are given, they are set from this machine's speed: the
first server's scheduler learns the mean solo time of the warm-up's requests, and the rate
is `--load` (default 1.5) times what the workers serve one request at a time (workers /
mean), the SLO `--slo-mult` (default 10) times the mean. That is an overload (on the CPU,
batching the compute-bound early_exit gains little: docs/results.md): some requests must
miss, and what matters is which ones. fifo runs requests in arrival order whether or not
they can still finish; orloj drops the hopeless ones at once and spends the worker on
those that can (bench/e2e_finish_rate.py measures the same cell, among others:
docs/results.md).

The demo serves early_exit with its full model only (`variants = []` in a temporary model
repository), so that the policies differ in scheduling alone. `--variants` serves it with
its built-in variants (cheaper forced depths, docs/models.md): orloj may then answer a
batch with a cheaper variant rather than drop it, and the table gains the mean declared
accuracy of the answers in time and the variants that served them.
"""

from __future__ import annotations

import sys
import time

DEFAULT_POLICIES = ("orloj", "fifo")
MODEL = "early_exit"
APP = "demo"
# The warm-up, the same for every server: light load, a loose SLO, so that every request
# runs and each scheduler learns the model's solo times before the measured load.
WARMUP_REQUESTS = 200
WARMUP_RATE = 150.0
WARMUP_SLO_MS = 200.0


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="orloj beside fifo (Triton's batcher) on the same early-exit overload, on the CPU",
        description=(
            "Start an orloj-rt server with the built-in models on the CPU, once per policy "
            "(default: orloj, then fifo: Triton's dynamic batcher as a user tunes it), send "
            "each the same short open-loop load of early_exit requests with bimodal exit "
            "depths, print a table of finish rate (answered ok within the SLO), status "
            "counts and p50/p99 latency, and shut the server down. By default the rate is "
            "an overload and the SLO tight, both set from this machine's measured speed."
        ),
    )
    p.add_argument("--policy", action="append", metavar="NAME",
                   help="a policy to run (repeat, or comma-separate; default: "
                        f"{','.join(DEFAULT_POLICIES)})")  # fmt: skip
    p.add_argument("--requests", type=int, default=3000, metavar="N",
                   help="requests per policy (default: %(default)s)")  # fmt: skip
    p.add_argument("--load", type=float, default=1.5, metavar="X",
                   help="the mean Poisson arrival rate in units of what the workers serve "
                        "one request at a time (workers / the mean solo time measured at "
                        "warm-up); above 1 is an overload (default: %(default)s)")  # fmt: skip
    p.add_argument("--rate", type=float, metavar="R",
                   help="the mean Poisson arrival rate in req/s (overrides --load)")  # fmt: skip
    p.add_argument("--slo-mult", type=float, default=10.0, metavar="M",
                   help="every request's SLO in units of the mean solo time measured at "
                        "warm-up (default: %(default)s)")  # fmt: skip
    p.add_argument("--slo-ms", type=float, metavar="MS",
                   help="every request's SLO in ms (overrides --slo-mult)")  # fmt: skip
    p.add_argument("--deep-fraction", type=float, default=0.2, metavar="F",
                   help="share of requests that run all 12 layers; the rest exit after "
                        "--shallow-depth (default: %(default)s)")  # fmt: skip
    p.add_argument("--shallow-depth", type=int, default=2, metavar="L",
                   help="layers run by the early exiters (default: %(default)s)")  # fmt: skip
    p.add_argument("--cpu-workers", type=int, default=1, metavar="N",
                   help="CPU worker processes (default: %(default)s)")  # fmt: skip
    p.add_argument("--variants", action="store_true",
                   help="serve early_exit with its built-in variants (cheaper forced depths, "
                        "each with its accuracy): orloj may answer with a cheaper one rather "
                        "than drop; default: the full model only")  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="workload seed (default: %(default)s)")
    p.add_argument("--log-level", default="WARNING", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="the server's log level, on stderr (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=run)


def _policies(args) -> list[str] | None:
    from orloj_rt.cli._server_args import policy_names

    asked = []
    for item in args.policy or [",".join(DEFAULT_POLICIES)]:
        asked += [x.strip() for x in item.split(",") if x.strip()]
    known = policy_names()
    bad = [x for x in asked if x not in known]
    if bad:
        print(f"orloj-rt demo: unknown policy {', '.join(bad)}; choose from {', '.join(known)}",
              file=sys.stderr)  # fmt: skip
        return None
    return asked


def build_workload(n: int, rate: float, slo_ms: float, seed: int, deep_fraction: float,
                   shallow_depth: int):  # fmt: skip
    """The same requests and arrival times for every policy (seeded)."""
    import numpy as np

    from orloj_rt.models.early_exit import NUM_LAYERS, tokens_for_depth

    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=n)
    times = np.cumsum(gaps) - gaps[0]
    deep = rng.random(n) < deep_fraction
    requests = []
    for is_deep in deep:
        depth = NUM_LAYERS if is_deep else shallow_depth
        length = int(rng.integers(8, 33))
        requests.append({
            "model": MODEL,
            "inputs": {"tokens": tokens_for_depth(depth, length, rng)},
            "slo_ms": slo_ms,
            "app": APP,
        })  # fmt: skip
    return requests, times.tolist()


def learned_mean_solo_ms(endpoint: str) -> float | None:
    """The mean solo time of the demo's requests that the server's scheduler has learned
    (every policy's scheduler learns it from the worker's work reports)."""
    from orloj_rt.client import Client

    time.sleep(1.2)  # the scheduler's figures reach `stats` once a second
    with Client(endpoint, timeout_s=30) as c:
        apps = c.stats()["models"][MODEL]["scheduler"]["apps"]
    if APP in apps and apps[APP].get("samples"):
        return float(apps[APP]["mean_solo_ms"])
    return None


def explanation(finish: dict[str, float]) -> list[str]:
    """A plain reading of the result, when orloj and fifo both ran."""
    import textwrap

    if "orloj" not in finish or "fifo" not in finish:
        return []
    o, f = finish["orloj"], finish["fifo"]
    if o > f + 0.05:
        times = f" ({o / f:.1f}x)" if f > 0.005 else ""
        text = (
            f"orloj finished {o:.0%} of the requests within their SLO, fifo {f:.0%}{times}: "
            "they arrive faster than the worker serves them. fifo runs them in arrival "
            "order, also those that can no longer finish, and so makes later ones late; "
            "orloj learns the execution times, drops the hopeless ones at once ('dropped') "
            "and serves those that can still finish."
        )
    elif o >= f - 0.05:
        text = (
            f"orloj finished {o:.0%} of the requests within their SLO, fifo {f:.0%}: about "
            "the same. The difference shows when requests arrive faster than they can be "
            "served (the default: --load 1.5)."
        )
    else:
        text = (
            f"orloj finished {o:.0%} of the requests within their SLO, fifo {f:.0%}: fifo "
            "did better here. docs/results.md shows where orloj wins and where it does not."
        )
    return textwrap.wrap(text, width=96)


def demo_repo(directory: str, variants: bool) -> str:
    """A model repository serving the built-in models, early_exit with its variants or
    with its full model only."""
    import os

    repo = os.path.join(directory, "models")
    os.makedirs(repo)
    with open(os.path.join(repo, f"{MODEL}.toml"), "w") as f:
        f.write(f'builtin = "{MODEL}"\n' + ("" if variants else "variants = []\n"))
    with open(os.path.join(repo, "resnet_static.toml"), "w") as f:
        f.write('builtin = "resnet_static"\n')
    return repo


def accuracy_of(ok_in_time, accuracies: dict) -> tuple[float | None, str]:
    """The mean declared accuracy of the answers in time, and the variants that served
    them ("full 120, half 30")."""
    from collections import Counter

    served = Counter(o.variant or "full" for o in ok_in_time)
    if not served:
        return None, "-"
    mean = sum(accuracies.get(v, 1.0) * n for v, n in served.items()) / sum(served.values())
    return mean, ", ".join(f"{v} {n}" for v, n in sorted(served.items()))


def run(args) -> int:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="orloj-demo-") as tmp:
        return _run(args, demo_repo(tmp, args.variants))


def _run(args, repo: str) -> int:
    from orloj_rt.client.loadgen import run_open_loop
    from orloj_rt.models.builtin import BUILTIN_MODELS
    from orloj_rt.runtime.launcher import ServerProcess

    policies = _policies(args)
    if policies is None:
        return 2
    if (args.requests < 1 or args.load <= 0 or args.slo_mult <= 0
            or (args.rate is not None and args.rate <= 0)
            or (args.slo_ms is not None and args.slo_ms <= 0)):  # fmt: skip
        print("orloj-rt demo: --requests, --load, --rate, --slo-mult and --slo-ms must be "
              "positive", file=sys.stderr)  # fmt: skip
        return 2
    if not 1 <= args.shallow_depth <= 12 or not 0 <= args.deep_fraction <= 1:
        print("orloj-rt demo: --shallow-depth is 1..12, --deep-fraction 0..1", file=sys.stderr)
        return 2
    print(f"orloj-rt demo: {args.requests} early_exit requests per policy "
          f"({', '.join(policies)}); exit depth bimodal: {1 - args.deep_fraction:.0%} after "
          f"{args.shallow_depth} layers, {args.deep_fraction:.0%} after 12; "
          f"{args.cpu_workers} CPU worker(s)", flush=True)  # fmt: skip
    warmup = build_workload(WARMUP_REQUESTS, WARMUP_RATE, WARMUP_SLO_MS, args.seed + 1000,
                            args.deep_fraction, args.shallow_depth)  # fmt: skip
    workload = None
    rate = slo_ms = None
    header = (f"{'policy':<10} {'finish rate':>11} {'ok':>6} {'dropped':>8} {'rejected':>9} "
              f"{'error':>6} {'lost':>5} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'mean batch':>10}")  # fmt: skip
    if args.variants:
        header += f" {'accuracy':>8}  variants (answers in time)"
    accuracies = {v.name: v.accuracy for v in BUILTIN_MODELS[MODEL].spec.variants}
    rows = []
    finish: dict[str, float] = {}
    code = 0
    for policy in policies:
        server_args = ["--cpu-workers", str(args.cpu_workers), "--policy", policy,
                       "--models", repo,
                       "--log-level", args.log_level]  # fmt: skip
        print(f"  {policy}: starting a server ...", end="", flush=True)
        with ServerProcess(server_args) as server:
            print(" ready; warm-up ...", end="", flush=True)
            run_open_loop(server.endpoint, *warmup, drain_timeout_s=30.0)
            if workload is None:  # the first server sets the load for every policy
                mean_ms = None
                if args.rate is None or args.slo_ms is None:
                    mean_ms = learned_mean_solo_ms(server.endpoint)
                    if mean_ms is None:
                        print("\norloj-rt demo: the warm-up taught the scheduler no solo "
                              "time; give --rate and --slo-ms", file=sys.stderr)  # fmt: skip
                        return 1
                capacity = args.cpu_workers * 1e3 / mean_ms if mean_ms else None
                rate = args.rate or round(args.load * capacity)
                slo_ms = args.slo_ms or round(args.slo_mult * mean_ms, 1)
                print()
                if mean_ms is not None:
                    print(f"  measured: an early_exit request takes {mean_ms:.2f} ms on "
                          f"average alone; {args.cpu_workers} worker(s) serving one at a "
                          f"time: {capacity:.0f} req/s")  # fmt: skip
                load = f" ({rate / capacity:.2g}x that)" if mean_ms is not None else ""
                slo = (f" ({slo_ms / mean_ms:.2g}x the mean)" if mean_ms is not None
                       else "")  # fmt: skip
                print(f"  load: Poisson {rate:g} req/s{load}, SLO {slo_ms:g} ms{slo}",
                      flush=True)  # fmt: skip
                workload = build_workload(args.requests, rate, slo_ms, args.seed,
                                          args.deep_fraction, args.shallow_depth)  # fmt: skip
                print(f"  {policy}:", end="", flush=True)
            print(" sending the load", flush=True)
            report = run_open_loop(server.endpoint, *workload,
                                   drain_timeout_s=10.0 + slo_ms / 1000.0)  # fmt: skip
        if server.returncode != 0:
            print(f"  the server exited with code {server.returncode}", file=sys.stderr)
            code = 1
        c = report.counts
        ok = [o for o in report.outcomes if o.status == "ok"]
        mean_batch = sum(o.batch_size for o in ok) / len(ok) if ok else 0.0
        p50 = report.latency_quantile(0.5) * 1e3
        p99 = report.latency_quantile(0.99) * 1e3
        finish[policy] = report.finish_rate
        row = (f"{policy:<10} {report.finish_rate:>11.1%} {c['ok']:>6} {c['dropped']:>8} "
               f"{c['rejected']:>9} {c['error']:>6} {c['lost']:>5} {p50:>8.2f} {p99:>8.2f} "
               f"{mean_batch:>10.2f}")  # fmt: skip
        if args.variants:
            mean_acc, served = accuracy_of([o for o in ok if o.met_slo], accuracies)
            row += f" {mean_acc:>8.3f}  {served}" if mean_acc is not None else f" {'-':>8}  -"
        rows.append(row)
        if c["lost"] or report.extra_replies:
            code = 1
    print()
    print(header)
    for row in rows:
        print(row)
    print("\nfinish rate: share of requests answered ok within their SLO. Latency: ok replies, "
          "as the client saw them.")  # fmt: skip
    if "fifo" in finish:
        print("fifo: Triton's dynamic batcher as a user tunes it (orloj_rt/policies/fifo.py).")
    if args.variants:
        print("accuracy: the mean declared accuracy of the variants that answered in time "
              "(docs/models.md); only orloj and loki-threshold choose variants.")  # fmt: skip
    else:
        print("early_exit served with its full model only; --variants lets orloj answer with "
              "cheaper variants under overload.")  # fmt: skip
    for line in explanation(finish):
        print(line)
    if args.variants:
        print("With --variants, orloj also serves batches with cheaper variants when the full "
              "model cannot keep up:\npart of its gain is bought with accuracy (the accuracy "
              "column); fifo serves the full model.")  # fmt: skip
    if len(policies) == 1:
        print("compare policies on the same requests: orloj-rt demo --policy orloj,fifo,edf")
    print("every server shut down cleanly" if code == 0 else "PROBLEMS: see above")
    return code
