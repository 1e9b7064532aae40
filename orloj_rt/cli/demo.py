"""`orloj-rt demo`: serve the built-in models on the CPU and drive early-exit load at them.

For each policy asked for, it starts a server (`orloj-rt start --cpu-workers N`), sends a
bounded open-loop load of `early_exit` requests whose exit depths are bimodal (most exit
early, some run every layer: the case where one slow member makes a whole batch late),
prints finish rate, status counts and latency, and shuts the server down cleanly. The
same seed gives every policy the same requests at the same times.
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="start a CPU server, drive bimodal early-exit load, print the finish rate",
        description=(
            "Start an orloj-rt server with the built-in models on the CPU, send a short "
            "open-loop load of early_exit requests with bimodal exit depths, print a table "
            "of finish rate (answered ok within the SLO), status counts and p50/p99 "
            "latency, and shut the server down. Repeat --policy to compare policies."
        ),
    )
    p.add_argument("--policy", action="append", metavar="NAME",
                   help="a policy to run (repeat, or comma-separate, to compare; default: "
                        "orloj)")  # fmt: skip
    p.add_argument("--requests", type=int, default=3000, metavar="N",
                   help="requests per policy (default: %(default)s)")  # fmt: skip
    p.add_argument("--rate", type=float, default=350.0, metavar="R",
                   help="mean Poisson arrival rate, req/s (default: %(default)s)")  # fmt: skip
    p.add_argument("--slo-ms", type=float, default=25.0, metavar="MS",
                   help="every request's SLO (default: %(default)s)")  # fmt: skip
    p.add_argument("--deep-fraction", type=float, default=0.2, metavar="F",
                   help="share of requests that run all 12 layers; the rest exit after "
                        "--shallow-depth (default: %(default)s)")  # fmt: skip
    p.add_argument("--shallow-depth", type=int, default=2, metavar="L",
                   help="layers run by the early exiters (default: %(default)s)")  # fmt: skip
    p.add_argument("--cpu-workers", type=int, default=1, metavar="N",
                   help="CPU worker processes (default: %(default)s)")  # fmt: skip
    p.add_argument("--seed", type=int, default=1, help="workload seed (default: %(default)s)")
    p.add_argument("--log-level", default="WARNING", type=str.upper,
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                   help="the server's log level, on stderr (default: %(default)s)")  # fmt: skip
    p.set_defaults(func=run)


def _policies(args) -> list[str] | None:
    from orloj_rt.cli._server_args import policy_names

    asked = []
    for item in args.policy or ["orloj"]:
        asked += [x.strip() for x in item.split(",") if x.strip()]
    known = policy_names()
    bad = [x for x in asked if x not in known]
    if bad:
        print(f"orloj-rt demo: unknown policy {', '.join(bad)}; choose from {', '.join(known)}",
              file=sys.stderr)  # fmt: skip
        return None
    return asked


def build_workload(args):
    """The same requests and arrival times for every policy (seeded)."""
    import numpy as np

    from orloj_rt.models.early_exit import NUM_LAYERS, tokens_for_depth

    rng = np.random.default_rng(args.seed)
    gaps = rng.exponential(1.0 / args.rate, size=args.requests)
    times = np.cumsum(gaps) - gaps[0]
    deep = rng.random(args.requests) < args.deep_fraction
    requests = []
    for is_deep in deep:
        depth = NUM_LAYERS if is_deep else args.shallow_depth
        length = int(rng.integers(8, 33))
        requests.append({
            "model": "early_exit",
            "inputs": {"tokens": tokens_for_depth(depth, length, rng)},
            "slo_ms": args.slo_ms,
            "app": "demo",
        })  # fmt: skip
    return requests, times.tolist()


def run(args) -> int:
    from orloj_rt.client.loadgen import run_open_loop
    from orloj_rt.runtime.launcher import ServerProcess

    policies = _policies(args)
    if policies is None:
        return 2
    if args.requests < 1 or args.rate <= 0 or args.slo_ms <= 0:
        print("orloj-rt demo: --requests, --rate and --slo-ms must be positive", file=sys.stderr)
        return 2
    if not 1 <= args.shallow_depth <= 12 or not 0 <= args.deep_fraction <= 1:
        print("orloj-rt demo: --shallow-depth is 1..12, --deep-fraction 0..1", file=sys.stderr)
        return 2
    requests, times = build_workload(args)
    print(f"orloj-rt demo: {args.requests} early_exit requests per policy, Poisson "
          f"{args.rate:g} req/s, SLO {args.slo_ms:g} ms; exit depth bimodal: "
          f"{1 - args.deep_fraction:.0%} after {args.shallow_depth} layers, "
          f"{args.deep_fraction:.0%} after 12; {args.cpu_workers} CPU worker(s)",
          flush=True)  # fmt: skip
    header = (f"{'policy':<10} {'finish rate':>11} {'ok':>6} {'dropped':>8} {'rejected':>9} "
              f"{'error':>6} {'lost':>5} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'mean batch':>10}")  # fmt: skip
    rows = []
    code = 0
    for policy in policies:
        server_args = ["--cpu-workers", str(args.cpu_workers), "--policy", policy,
                       "--log-level", args.log_level]  # fmt: skip
        print(f"  starting a server with policy {policy} ...", end="", flush=True)
        with ServerProcess(server_args) as server:
            print(" ready; sending load", flush=True)
            report = run_open_loop(server.endpoint, requests, times,
                                   drain_timeout_s=10.0 + args.slo_ms / 1000.0)  # fmt: skip
        if server.returncode != 0:
            print(f"  the server exited with code {server.returncode}", file=sys.stderr)
            code = 1
        c = report.counts
        ok = [o for o in report.outcomes if o.status == "ok"]
        mean_batch = sum(o.batch_size for o in ok) / len(ok) if ok else 0.0
        p50 = report.latency_quantile(0.5) * 1e3
        p99 = report.latency_quantile(0.99) * 1e3
        rows.append(
            f"{policy:<10} {report.finish_rate:>11.1%} {c['ok']:>6} {c['dropped']:>8} "
            f"{c['rejected']:>9} {c['error']:>6} {c['lost']:>5} {p50:>8.2f} {p99:>8.2f} "
            f"{mean_batch:>10.2f}"
        )
        if c["lost"] or report.extra_replies:
            code = 1
    print()
    print(header)
    for row in rows:
        print(row)
    print("\nfinish rate: share of requests answered ok within their SLO. Latency: ok replies, "
          "as the client saw them.")  # fmt: skip
    if len(policies) == 1:
        print("compare policies on the same requests: orloj-rt demo --policy orloj,fifo,edf")
    print("every server shut down cleanly" if code == 0 else "PROBLEMS: see above")
    return code
