"""`orloj-rt sim --nodes N ...`: the simulator across nodes (orloj_rt/sim/cluster.py),
its flags and its output. orloj_rt/cli/sim.py adds the flags and hands a run with
`--nodes` here.

    orloj-rt sim --workload trace --arrival trace --slo-mult 2 --load 0.6 \\
                 --nodes 16 --workers-per-node 1 --node-speeds unequal --state-age 2
"""

from __future__ import annotations

import json
import sys


def add_args(p, positive) -> None:
    """The cluster flags, on `orloj-rt sim`'s parser."""
    g = p.add_argument_group("across nodes (docs/cluster-routing.md)")
    g.add_argument("--nodes", type=positive(int), default=None, metavar="N",
                   help="simulate N nodes, each the serving core with its workers, behind "
                   "one router; --load is then per node (the arrival rate is N x L)")
    g.add_argument("--workers-per-node", type=positive(int), default=1, metavar="W",
                   help="workers of each node (default 1; with --nodes)")
    g.add_argument("--router", default="random,round-robin,p2c,orloj", metavar="LIST",
                   help="routers to compare on the same requests, comma-separated: random, "
                   "round-robin, p2c, orloj (default all four; with --nodes)")
    g.add_argument("--node-speeds", default="equal", metavar="SPEC",
                   help="equal (default), unequal (every second node 2x slower), or N "
                   "comma-separated relative speeds (with --nodes)")
    g.add_argument("--state-age", type=float, default=0.0, metavar="S",
                   help="the router sees each node's state S units old (units of the mean "
                   "solo time; default 0: as it is; with --nodes)")
    g.add_argument("--state-period", type=positive(float), default=0.1, metavar="P",
                   help="with --state-age > 0, each node publishes its state every P units "
                   "(default 0.1)")
    g.add_argument("--router-param", action="append", metavar="[ROUTER:]KEY=VALUE",
                   help="a router parameter, e.g. orloj:choices=2 or stale_after=20 (all "
                   "routers); repeat for more (with --nodes)")


DEFAULTS = {"workers_per_node": 1, "router": "random,round-robin,p2c,orloj",
            "node_speeds": "equal", "state_age": 0.0, "state_period": 0.1,
            "router_param": None}  # fmt: skip


def check_without_nodes(args) -> None:
    """A cluster flag given without --nodes: ValueError naming it."""
    given = [k for k, v in DEFAULTS.items() if getattr(args, k, v) != v]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"{flags} simulate(s) nodes behind a router: give --nodes N too")


def _value(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"--router-param value {text!r} is not a number") from None


def router_params(items, routers) -> dict:
    """{router: {key: value}} from `--router-param [ROUTER:]KEY=VALUE` items."""
    out: dict = {r: {} for r in routers}
    for item in items or ():
        head, eq, value = item.partition("=")
        if not eq or not head:
            raise ValueError(f"--router-param {item!r}: write [ROUTER:]KEY=VALUE, e.g. "
                             "orloj:choices=2")  # fmt: skip
        name, colon, key = head.rpartition(":")
        targets = [name] if colon else list(routers)
        for r in targets:
            if r not in out:
                raise ValueError(f"--router-param {item!r}: router {r!r} is not in --router "
                                 f"({', '.join(routers)})")  # fmt: skip
            out[r][key] = _value(value)
    return {r: p for r, p in out.items() if p}


def config_from_args(args, spec):
    """The ClusterConfig of `orloj-rt sim --nodes ...`, `spec` the WorkloadSpec that
    `orloj-rt sim` built from the workload flags (its load read per node)."""
    from orloj_rt.cluster.routing import make_router
    from orloj_rt.policies import POLICIES
    from orloj_rt.sim.cluster import ClusterConfig, parse_speeds

    if args.batching != "step" and args.workers != 1:
        raise ValueError("--workers is for one node; with --nodes give --workers-per-node W")
    if args.batching == "step":
        raise ValueError("--nodes simulates whole-batch serving only; leave out --batching "
                         "step")  # fmt: skip
    if args.hint_cv is not None:
        raise ValueError("--nodes does not pass cost hints; leave out --hint-cv")
    names = ["orloj"] if args.policies is None else [
        n.strip() for n in args.policies.split(",") if n.strip()]  # fmt: skip
    if len(names) != 1 or names[0] not in POLICIES:
        raise ValueError(f"with --nodes, --policies names the one whole-batch policy every "
                         f"node runs (default orloj), one of {', '.join(POLICIES)}; got "
                         f"{args.policies!r}")  # fmt: skip
    routers = tuple(r.strip() for r in args.router.split(",") if r.strip())
    for r in routers:
        make_router(r)  # an unknown name: ValueError naming the choices
    parse_speeds(args.node_speeds, args.nodes)
    params = router_params(args.router_param, routers)
    for r, p in params.items():
        make_router(r, **p)  # an unknown key: ValueError naming the keys
    return ClusterConfig(
        workload=spec,
        nodes=args.nodes,
        workers_per_node=args.workers_per_node,
        speeds=args.node_speeds,
        routers=routers,
        router_params=params,
        state_age=args.state_age,
        state_period=args.state_period,
        policy=names[0],
        max_batch=args.max_batch,
        batch_alpha=args.batch_alpha,
    )


def format_table(result: dict) -> str:
    cfg = result["config"]
    speeds = cfg["speeds"] if isinstance(cfg["speeds"], str) else "list"
    lines = [
        f"workload={cfg['solo']} slo={cfg['slo']:g} load/node={cfg['load_per_node']:g} "
        f"arrival={cfg['arrival']} requests={cfg['requests']} seed={cfg['seed']} "
        f"nodes={cfg['nodes']}x{cfg['workers_per_node']} speeds={speeds} "
        f"state_age={cfg['state_age']:g} policy={cfg['policy']} max_batch={cfg['max_batch']}",
        f"{'router':12} {'finish':>7} {'completed':>9} {'late':>6} {'dropped':>7} "
        f"{'rejected':>8} {'p50':>7} {'p99':>7} {'batch':>6}  share (finish) by node speed",
    ]

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    for name, m in result["routers"].items():
        by = " ".join(f"{s}: {v['share']:.2f} ({num(v['finish_rate'])})"
                      for s, v in m["by_speed"].items())  # fmt: skip
        lines.append(
            f"{name:12} {m['finish_rate']:7.3f} {m['completed']:9d} {m['late']:6d} "
            f"{m['dropped']:7d} {m['rejected']:8d} {num(m['p50_latency']):>7} "
            f"{num(m['p99_latency']):>7} {m['mean_batch']:6.2f}  {by}"
        )
    return "\n".join(lines)


def run(args, spec) -> int:
    from orloj_rt.sim.cluster import run_cluster

    try:
        result = run_cluster(config_from_args(args, spec))
    except (ValueError, OSError) as exc:
        print(f"orloj-rt sim: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result) if args.json else format_table(result))
    return 0
