"""`orloj-rt sim`: simulate policies on a workload, on a virtual clock, without GPUs.

    orloj-rt sim --workload lognormal --slo-mult 5 --load 2
    orloj-rt sim --workload trace --trace conv.csv --cost-col GeneratedTokens \\
                 --arrival trace --time-col TIMESTAMP --slo-mult 5 --load 2 --json
    orloj-rt sim --workload lognormal --slo-mult 3 --load 6 --batching step --step 0.1
    orloj-rt sim --apps short:bimodal:slo=2:share=0.7,long:lognormal:slo=10 --load 4
    orloj-rt sim --workload lognormal --slo-mult 5 --load 2 --policy-param orloj:theta=0.7
    orloj-rt sim --workload bimodal --slo-mult 5 --load 3 --policies orloj,orloj+variants,\
                 loki-threshold --variants full:1.0:1.0,half:0.5:0.93,quarter:0.25:0.85
    orloj-rt sim --workload bimodal --slo-mult 5 --load 3 --priorities 1:0.2:10 --json

Prints a table, or with --json one object: {"config": {...}, "policies": {name: {...}}};
in a multi-app cell (--apps) each policy's object has "apps": {name: {...}} too.
The workloads are defined exactly in docs/simulation.md.
"""

from __future__ import annotations

import argparse
import json
import sys

WORKLOADS = ("static", "bimodal", "lognormal", "trace", "encoder")
ARRIVALS = ("poisson", "gamma", "trace")


def positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def register(sub) -> None:
    p = sub.add_parser(
        "sim",
        help="simulate batching policies on a workload (virtual clock, no GPU)",
        description="Simulate batching policies on a synthetic or trace workload with a "
        "virtual clock, driving the same policy objects as the scheduler. Times are in "
        "units of the mean solo execution time.",
    )
    p.add_argument("--workload", choices=WORKLOADS,
                   help="solo execution times: static, bimodal, lognormal, a trace column, "
                   "or encoder (a variable-length encoder: cost follows its length, which "
                   "is its hint with --hint-cv) (required unless --apps)")
    p.add_argument("--apps", metavar="SPEC",
                   help="a multi-app cell: apps sharing the model, each with its own cost law, "
                   "SLO and share of one arrival stream: NAME:WORKLOAD[:slo=S][:share=P]"
                   "[:mean=M], comma-separated, e.g. "
                   "short:bimodal:slo=2:share=0.7,long:lognormal:slo=10:share=0.3. slo: a "
                   "multiple of the app's mean solo time (default --slo-mult); share: of the "
                   "arrivals (apps without one split the rest); mean: the app's mean solo "
                   "time in units (default 1). Replaces --workload (docs/simulation.md)")
    p.add_argument("--trace", metavar="FILE",
                   help="CSV for trace costs and trace arrivals (default: the Azure LLM "
                   "conversation trace beside the project, when present)")
    p.add_argument("--time-col", default="TIMESTAMP", metavar="COL",
                   help="the trace's timestamp column, for --arrival trace (default TIMESTAMP)")
    p.add_argument("--cost-col", default="GeneratedTokens", metavar="COL",
                   help="the trace's cost column, for --workload trace (default GeneratedTokens)")
    p.add_argument("--trace-offset", type=float, default=8.0, metavar="X",
                   help="added to every cost before normalising (default 8)")
    p.add_argument("--slo-mult", type=positive(float), metavar="S",
                   help="SLO in units of the mean solo time: deadline = arrival + S "
                   "(required, but with --apps only for apps without their own slo=)")
    p.add_argument("--load", type=positive(float), required=True, metavar="L",
                   help="arrivals per time unit: the mean gap is 1/L")
    p.add_argument("--arrival", choices=ARRIVALS, default="poisson",
                   help="arrival process (default poisson)")
    p.add_argument("--arrival-cv", type=positive(float), default=1.0, metavar="CV",
                   help="coefficient of variation of the gaps, for --arrival gamma")
    p.add_argument("--requests", type=positive(int), default=4000, metavar="N",
                   help="requests to simulate (default 4000)")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="random seed (default 0)")
    p.add_argument("--workers", type=positive(int), default=1, metavar="W",
                   help="identical workers serving the model (default 1)")
    p.add_argument("--max-batch", type=positive(int), default=32, metavar="B",
                   help="maximum batch size (default 32)")
    p.add_argument("--batch-alpha", type=float, default=0.15, metavar="A",
                   help="batch inflation c(b) = 1 + A (b - 1) (default 0.15)")
    p.add_argument("--policies", default=None,
                   metavar="LIST", help="comma-separated policies (default: "
                   "orloj,fifo,edf,nexus,clockwork,oracle; with --batching step: "
                   "orloj,oracle,fcfs-step,edf-step,orloj-step); a name with +hint "
                   "(orloj+hint) uses cost hints, which need --hint-cv")
    p.add_argument("--batching", choices=("whole", "step"), default="whole",
                   help="whole: a batch runs to its longest member (default); step: the "
                   "model re-forms its batch every --step units of solo work, so members "
                   "leave when done and requests join at every step boundary (the step "
                   "policies need it; whole-batch policies still run whole batches)")
    p.add_argument("--step", type=positive(float), default=0.1, metavar="S",
                   help="solo work per step for --batching step, in units of the mean solo "
                   "time; a step of b members takes c(b) S (default 0.1)")
    p.add_argument("--hint-cv", type=float, default=None, metavar="H",
                   help="give requests cost hints: the true solo time times LogNormal noise "
                   "with CoV H (off by default)")
    p.add_argument("--prior-samples", type=positive(int), default=20_000, metavar="N",
                   help="size of the profile the policies' prior comes from (default 20000)")
    p.add_argument("--policy-param", action="append", metavar="[POLICY:]KEY=VALUE",
                   help="a constructor argument of a policy, e.g. orloj:theta=0.8 (repeat "
                   "for more); without POLICY: it goes to every policy of the cell that has "
                   "KEY. VALUE reads as true/false, none, an integer, a number, a "
                   "comma-separated list, or else text. The same keys as `orloj-rt start "
                   "--policy-param`")
    p.add_argument("--variants", metavar="SPEC",
                   help="the model's variants, NAME:COST:ACCURACY comma-separated, the full "
                   "model first (e.g. full:1.0:1.0,half:0.5:0.93,quarter:0.25:0.85): a "
                   "variant runs a batch in COST times the full model's time; policies "
                   "orloj+variants and loki-threshold serve with them (docs/simulation.md)")
    p.add_argument("--priorities", metavar="SPEC",
                   help="priority tiers, TIER:SHARE[:WEIGHT] comma-separated (e.g. 1:0.2:10): "
                   "SHARE of the requests get tier TIER (1..7; tier 0 takes the rest, "
                   "weight 1), worth WEIGHT (default 10^TIER) each in orloj's utility")
    p.add_argument("--fairness", type=float, default=0.0, metavar="F",
                   help="orloj's fairness gain across apps (0 = off, the default): under "
                   "overload the apps' weights adapt so that their finish rates stay "
                   "within a band (docs/simulation.md)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    from orloj_rt.cluster import sim_cli

    sim_cli.add_args(p, positive)
    p.set_defaults(func=run)


def parse_variants_flag(text: str) -> tuple:
    """--variants NAME:COST:ACCURACY,... -> ((name, cost, accuracy), ...); ValueError
    naming the flag and the field."""
    out = []
    for i, item in enumerate(t for t in text.split(",") if t.strip()):
        parts = [p.strip() for p in item.split(":")]
        if len(parts) != 3:
            missing = "accuracy" if len(parts) == 2 else "cost scale and accuracy"
            raise ValueError(f"--variants: variant {i} {item.strip()!r} is not "
                             f"NAME:COST:ACCURACY ({missing} missing), e.g. half:0.5:0.93")
        name, cost, acc = parts
        if not name or not all(ch.isalnum() or ch in "_.-" for ch in name):
            raise ValueError(f"--variants: variant {i} has the name {name!r}: use letters, "
                             "digits, '_', '-' or '.'")
        try:
            cost_f = float(cost)
        except ValueError:
            raise ValueError(f"--variants: variant {name!r}: cost scale {cost!r} is not a "
                             "number") from None
        try:
            acc_f = float(acc)
        except ValueError:
            raise ValueError(f"--variants: variant {name!r}: accuracy {acc!r} is not a "
                             "number") from None
        if not cost_f > 0 or cost_f == float("inf"):
            raise ValueError(f"--variants: variant {name!r}: cost scale {cost_f!r} must be "
                             "a number > 0")
        if not 0.0 <= acc_f <= 1.0:
            raise ValueError(f"--variants: variant {name!r}: accuracy {acc_f!r} must be in "
                             "[0, 1]")
        if name in [v[0] for v in out]:
            raise ValueError(f"--variants: the variant name {name!r} is given twice")
        out.append((name, cost_f, acc_f))
    if len(out) < 2:
        raise ValueError("--variants: give the full model and at least one cheaper variant, "
                         "e.g. full:1.0:1.0,half:0.5:0.93")
    return tuple(out)


def parse_priorities_flag(text: str) -> tuple:
    """--priorities TIER:SHARE[:WEIGHT],... -> ((tier, share, weight), ...); ValueError
    naming the flag and the field."""
    from orloj_rt.policies.utility import DEFAULT_TIER_BASE, MAX_TIER

    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        parts = item.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"--priorities: {item!r} is not TIER:SHARE[:WEIGHT], e.g. 1:0.2:10")
        try:
            tier = int(parts[0])
        except ValueError:
            raise ValueError(f"--priorities: {item!r}: the priority {parts[0]!r} is not an "
                             f"integer tier in 1..{MAX_TIER}") from None
        if not 1 <= tier <= MAX_TIER:
            raise ValueError(f"--priorities: {item!r}: priority {tier} is out of range: a "
                             f"tier is 1..{MAX_TIER} (tier 0 takes the rest)")
        try:
            share = float(parts[1])
            weight = float(parts[2]) if len(parts) == 3 else DEFAULT_TIER_BASE**tier
        except ValueError:
            raise ValueError(f"--priorities: {item!r}: SHARE and WEIGHT must be numbers") \
                from None
        if not 0 < share <= 1:
            raise ValueError(f"--priorities: {item!r}: the share {share!r} must be in (0, 1]")
        if not (weight > 0 and weight != float("inf")):
            raise ValueError(f"--priorities: {item!r}: the weight {weight!r} must be > 0")
        if tier in [t for t, _, _ in out]:
            raise ValueError(f"--priorities: tier {tier} is given twice")
        out.append((tier, share, weight))
    if not out:
        raise ValueError("--priorities names no tier; e.g. --priorities 1:0.2:10")
    if sum(s for _, s, _ in out) > 1 + 1e-9:
        raise ValueError("--priorities: the tiers' shares add up to more than 1")
    return tuple(out)


def config_from_args(args):
    from orloj_rt.engine.pure.batch_model import Inflation
    from orloj_rt.policies import POLICIES, STEP_POLICIES
    from orloj_rt.sim.experiment import (
        ALL_POLICIES,
        HINT_SUFFIX,
        STEP_CELL_POLICIES,
        SimConfig,
        policy_base,
    )
    from orloj_rt.sim.mix import parse_apps
    from orloj_rt.sim.policy_params import parse_for_cell
    from orloj_rt.sim.workloads import DEFAULT_TRACE, MIX, WorkloadSpec

    apps = ()
    if args.apps is not None:
        if args.workload is not None:
            raise ValueError("--apps and --workload exclude each other: each app names its "
                             "workload (NAME:WORKLOAD[:slo=S][:share=P][:mean=M])")
        if args.hint_cv is not None:
            raise ValueError("--hint-cv is not supported with --apps (cost hints are fitted "
                             "for one app); leave one of them out")
        apps = parse_apps(args.apps, args.slo_mult)
    else:
        missing = [f for f, v in (("--workload", args.workload), ("--slo-mult", args.slo_mult))
                   if v is None]
        if missing:
            raise ValueError(f"the following arguments are required: {', '.join(missing)} "
                             "(or give --apps SPEC for a multi-app cell)")
    if args.policies is None:
        names = STEP_CELL_POLICIES if args.batching == "step" else ALL_POLICIES
    else:
        names = tuple(n.strip() for n in args.policies.split(",") if n.strip())
    if not names:
        raise ValueError("--policies names no policy")
    for name in names:
        base = policy_base(name)
        if base not in POLICIES and base not in STEP_POLICIES:
            raise ValueError(
                f"unknown policy {name!r}; choose from {', '.join(POLICIES)} "
                f"(or NAME{HINT_SUFFIX}), or with --batching step from "
                f"{', '.join(STEP_POLICIES)}"
            )
        if name.removesuffix("+variants").endswith(HINT_SUFFIX) and args.hint_cv is None:
            raise ValueError(f"policy {name!r} uses cost hints: give --hint-cv")
    trace = args.trace
    uses_trace = args.workload == "trace" or any(a.workload == "trace" for a in apps)
    if trace is None and (uses_trace or args.arrival == "trace"):
        if not DEFAULT_TRACE.exists():
            raise ValueError(f"--workload/--arrival trace needs --trace FILE "
                             f"(the default {DEFAULT_TRACE} is missing)")
        trace = str(DEFAULT_TRACE)
    spec = WorkloadSpec(
        solo=MIX if apps else args.workload,
        slo=args.slo_mult if args.slo_mult is not None else 1.0,  # unused with --apps
        load=args.load,
        requests=args.requests,
        seed=args.seed,
        arrival=args.arrival,
        arrival_cv=args.arrival_cv,
        trace=trace,
        time_col=args.time_col,
        cost_col=args.cost_col,
        trace_offset=args.trace_offset,
        prior_samples=args.prior_samples,
        hint_cv=args.hint_cv,
        app_mix=apps,
    )
    step = args.step if args.batching == "step" else None
    params = parse_for_cell(args.policy_param, names, max_batch=args.max_batch,
                            inflation=Inflation(args.max_batch, args.batch_alpha).table,
                            step=step)
    variants = parse_variants_flag(args.variants) if args.variants is not None else ()
    priorities = parse_priorities_flag(args.priorities) if args.priorities is not None else ()
    if not (args.fairness >= 0 and args.fairness != float("inf")):
        raise ValueError(f"--fairness must be a number >= 0 (0 = off), got {args.fairness!r}")
    return SimConfig(
        variants=variants,
        priorities=priorities,
        fairness=args.fairness,
        workload=spec,
        workers=args.workers,
        max_batch=args.max_batch,
        batch_alpha=args.batch_alpha,
        policies=names,
        policy_params=params,
        batching=args.batching,
        step=args.step,
    )


def format_table(result: dict) -> str:
    cfg = result["config"]
    slo = "" if cfg["slo"] is None else f" slo={cfg['slo']:g}"
    lines = [
        f"workload={cfg['solo']}{slo} load={cfg['load']:g} "
        f"arrival={cfg['arrival']} requests={cfg['requests']} seed={cfg['seed']} "
        f"workers={cfg['workers']} max_batch={cfg['max_batch']} alpha={cfg['batch_alpha']:g}"
        + (f" batching=step step={cfg['step']:g}" if cfg.get("batching") == "step" else ""),
        f"{'policy':12} {'finish':>7} {'completed':>9} {'late':>6} {'dropped':>7} "
        f"{'ended':>6} {'rejected':>8} {'p50':>7} {'p99':>7} {'batch':>6}",
    ]

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    for name, m in result["policies"].items():
        lines.append(
            f"{name:12} {m['finish_rate']:7.3f} {m['completed']:9d} {m['late']:6d} "
            f"{m['dropped']:7d} {m['ended']:6d} {m['rejected']:8d} {num(m['p50_latency']):>7} "
            f"{num(m['p99_latency']):>7} {m['mean_batch']:6.2f}"
        )
    if cfg.get("variants") or cfg.get("priorities") or cfg.get("fairness"):
        lines += ["", f"{'policy':16} {'in slo':>7} {'accuracy':>8} {'utility':>8}"
                  + ("  tiers (finish rate)" if cfg.get("priorities") else "")
                  + ("  jain" if "jain" in next(iter(result["policies"].values())) else "")]
        for name, m in result["policies"].items():
            acc = "-" if m["mean_accuracy"] is None else f"{m['mean_accuracy']:.3f}"
            tiers = "  " + " ".join(f"{t}:{r['finish_rate']:.3f}"
                                    for t, r in m.get("tiers", {}).items())  # fmt: skip
            j = f"  {m['jain']:.3f}" if "jain" in m else ""
            lines.append(f"{name:16} {m['answered_in_slo']:7.3f} {acc:>8} {m['utility']:8.3f}"
                         + (tiers if cfg.get("priorities") else "") + j)
    if cfg.get("app_mix"):
        lines += ["", *format_app_table(result)]
    return "\n".join(lines)


def format_app_table(result: dict) -> list[str]:
    """Per app: its law and SLO, then each policy's finish rate and on-time count."""
    mix = result["config"]["app_mix"]
    lines = ["apps: " + "; ".join(
        f"{a['name']}: {a['workload']} x {a['mean']:g}, slo {a['slo']:g} "
        f"(= {a['slo_units']:g} units), share {a['share']:.3g}" for a in mix)]
    first = next(iter(result["policies"].values()))["apps"]
    width = max(18, *(len(a["name"]) + 9 for a in mix))
    heads = [f"{a['name']} ({first[a['name']]['requests']})" for a in mix]
    lines.append(f"{'finish by app':12} " + " ".join(f"{h:>{width}}" for h in heads))
    for name, m in result["policies"].items():
        cells = []
        for a in mix:
            r = m["apps"][a["name"]]
            text = f"{r['finish_rate']:.3f} {r['finished']:>5d}/{r['requests']}"
            cells.append(f"{text:>{width}}")
        lines.append(f"{name:12} " + " ".join(cells))
    return lines


def run(args) -> int:
    from orloj_rt.cluster import sim_cli
    from orloj_rt.sim.experiment import run as run_cell

    try:
        config = config_from_args(args)
        if args.nodes is not None:  # across nodes: orloj_rt/sim/cluster.py
            return sim_cli.run(args, config.workload)
        sim_cli.check_without_nodes(args)
        result = run_cell(config)
    except (ValueError, OSError) as exc:
        print(f"orloj-rt sim: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(format_table(result))
    return 0
