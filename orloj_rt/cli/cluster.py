"""`orloj-rt cluster start|status|stop`: orloj-rt on a Ray cluster (docs/cluster.md).

Ray is an optional extra (`pip install 'orloj-rt[ray]'`); it is imported only when one of
these commands runs, and without it they say how to install it."""

from __future__ import annotations

import json
import os
import sys


def register(sub) -> None:
    from orloj_rt.protocol.wire import DEFAULT_ENDPOINT

    p = sub.add_parser(
        "cluster",
        help="serve on a Ray cluster: one instance per node, one entry point",
        description=(
            "Serve on a Ray cluster (docs/cluster.md): `start` places one orloj-rt instance "
            "on each Ray node with the resources (a Ray actor pinned to the node owns it and "
            "restarts it) and a router, the one entry point, on this machine; `status` shows "
            "them; `stop` stops them all. Needs Ray: pip install 'orloj-rt[ray]'."
        ),
    )
    cmds = p.add_subparsers(dest="cluster_command", metavar="ACTION")
    s = cmds.add_parser("start", help="start the instances and the router")
    s.add_argument("--address", required=True, metavar="RAY_ADDRESS",
                   help="the Ray cluster's address, e.g. HEAD_IP:6379 or auto")  # fmt: skip
    s.add_argument("--models", metavar="DIR",
                   help="a model repository, at the same path on every node (default: the "
                   "built-in models early_exit and resnet_static)")  # fmt: skip
    s.add_argument("--gpus-per-node", type=int, default=0, metavar="N",
                   help="GPU workers per node; a node needs N GPUs to get an instance "
                   "(default: 0, CPU workers)")  # fmt: skip
    s.add_argument("--cpu-workers", type=int, default=1, metavar="N",
                   help="CPU workers per node when --gpus-per-node is 0; a node needs N CPUs "
                   "(default: %(default)s)")  # fmt: skip
    s.add_argument("--nodes", type=int, default=0, metavar="K",
                   help="use at most K nodes (default: every node with the resources)")
    s.add_argument("--bind", default=DEFAULT_ENDPOINT, metavar="ENDPOINT",
                   help="the entry point clients connect to, on this machine (default: "
                   "%(default)s)")  # fmt: skip
    s.add_argument("--http-port", type=int, metavar="P",
                   help="also serve KServe v2 over HTTP at the entry point (0 picks a port)")
    s.add_argument("--router", default="orloj", choices=["orloj", "p2c", "round-robin", "random"],
                   help="how the entry point picks a node (docs/cluster-routing.md; "
                   "default: %(default)s)")  # fmt: skip
    s.add_argument("--policy", default="orloj", help="each node's batching policy")
    s.add_argument("--allow-remote", action="store_true",
                   help="let --bind and --http-port listen beyond this machine")
    s.add_argument("--local", action="store_true",
                   help="every Ray node runs on this machine (a test cluster): every socket "
                   "binds 127.0.0.1")  # fmt: skip
    s.add_argument("--wait", type=float, default=300.0, metavar="S",
                   help="wait at most S seconds for the nodes to serve (default: %(default)s)")
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    s.set_defaults(func=run_start)
    st = cmds.add_parser("status", help="the router and each node's instance")
    st.add_argument("--address", required=True, metavar="RAY_ADDRESS")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.set_defaults(func=run_status)
    sp = cmds.add_parser("stop", help="stop every instance and the router")
    sp.add_argument("--address", required=True, metavar="RAY_ADDRESS")
    sp.add_argument("--timeout", type=float, default=60.0, metavar="S")
    sp.set_defaults(func=run_stop)
    p.set_defaults(func=lambda args: (p.print_help(sys.stderr), 2)[1])


def _fail(exc) -> int:
    print(f"orloj-rt cluster: {exc}", file=sys.stderr)
    return 2


def print_status(st: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(st, sort_keys=True))
        return
    r = st["router"]
    http = f"; http {r['http']}" if r.get("http") else ""
    print(f"orloj-rt: cluster entry point {r['endpoint']} (router {r['policy']}, pid "
          f"{r['pid']}{http})")  # fmt: skip
    print(f"{'node':<24} {'state':<12} {'endpoint':<26} {'pid':>8} {'restarts':>8}  last exit")
    for n in st["nodes"]:
        print(f"{n['node']:<24} {n.get('state', '?'):<12} {n.get('endpoint', ''):<26} "
              f"{n.get('supervisor_pid', 0):>8} {n.get('restarts', 0):>8}  "
              f"{n.get('last_exit') or n.get('error', '')}")  # fmt: skip
    if st.get("nodes_lost"):
        print(f"nodes that left the Ray cluster: {', '.join(st['nodes_lost'])}")
    if st.get("warning"):
        print(f"warning: {st['warning']}")


def run_start(args) -> int:
    from orloj_rt.cluster.control import ClusterError, start
    from orloj_rt.cluster.controller import ClusterConfig

    if args.models and not os.path.isdir(args.models):
        return _fail(f"--models {args.models}: no such directory (it must exist at the same "
                     "path on every node)")  # fmt: skip
    if args.cpu_workers < 1 or args.gpus_per_node < 0 or args.nodes < 0:
        return _fail("--cpu-workers must be >= 1, --gpus-per-node and --nodes >= 0")
    from orloj_rt.runtime.security import check_bind

    problem = check_bind(args.bind, args.allow_remote)
    if problem:
        return _fail(problem)
    config = ClusterConfig(
        models=os.path.abspath(args.models) if args.models else "",
        gpus_per_node=args.gpus_per_node, cpu_workers=args.cpu_workers, nodes=args.nodes,
        bind=args.bind, router=args.router, http_port=args.http_port,
        allow_remote=args.allow_remote, local=args.local, policy=args.policy,
    )  # fmt: skip
    try:
        st = start(args.address, config, args.wait)
    except ClusterError as exc:
        return _fail(exc)
    print_status(st, args.json)
    return 0


def run_status(args) -> int:
    from orloj_rt.cluster.control import ClusterError, status

    try:
        st = status(args.address)
    except ClusterError as exc:
        return _fail(exc)
    print_status(st, args.json)
    return 0


def run_stop(args) -> int:
    from orloj_rt.cluster.control import ClusterError, stop

    try:
        out = stop(args.address, args.timeout)
    except ClusterError as exc:
        return _fail(exc)
    for name, n in sorted(out.get("nodes", {}).items()):
        print(f"orloj-rt: stopped node {name} ({n.get('state')}, {n.get('last_exit', '')})")
    print("orloj-rt: stopped the cluster router and every node")
    return 0
