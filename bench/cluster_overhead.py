"""orloj-rt on a local Ray cluster: what the entry point costs, and a node killed under load.

    .venv/bin/python bench/cluster_overhead.py            # table
    .venv/bin/python bench/cluster_overhead.py --json     # one JSON object

One run, on one machine: a Ray cluster of 3 nodes (ray.cluster_utils.Cluster, one CPU
each), `orloj-rt cluster start --local` with the built-in early_exit (random weights,
max batch 8) and noop, one CPU worker per node, the router (`--router`, default orloj)
on loopback.

1. Routing overhead, one `noop` request at a time (the runtime's path without a model's
   milliseconds, whose noise would hide a difference of 100 us; closed loop, one Python
   client): blocks of
   `--block` requests alternate between sending to a node directly (the nodes in turn),
   sending to the entry point, and sending through libzmq's own forwarder in C
   (`zmq.proxy` between two DEALERs, one per node: the floor of any extra hop on this
   machine), `--requests`
   of each in all; the overhead is the entry point's p50 minus the direct p50. Target:
   <= 150 us p50. Beside it, the router's own mean decision time (`choose`) from its
   stats, and the same requests through `orloj_rt.cluster.client.ClusterClient`, which
   runs the same router in the client and sends to the node it picks (no hop).
2. A node killed under load: an open loop of `--rate` requests/s for `--load-s` seconds
   through the entry point; after a third of it one node's instance gets SIGKILL (every
   process of it: the crash of a node's server). Every request must get exactly one
   reply (lost = none, duplicated = more than one; the replies are read for 2 s more).
   Recovery: from the kill until the entry point routes to the node's new instance
   (its health lists the node with a new supervisor pid and a ready worker). Target:
   <= 10 s.

Everything is bounded in count and time, and stopped at the end (the cluster included).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time

import msgpack
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NODES = 3
OBJECT_STORE = 80_000_000
TOKENS = np.array([3, 17, 99, 250], dtype=np.int64)
NOOP_X = np.ones(4, dtype=np.float32)
OVERHEAD_TARGET_US = 150.0
RECOVERY_TARGET_S = 10.0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


PROXY = ("import sys, zmq\nctx = zmq.Context()\na = ctx.socket(zmq.DEALER)\n"
         "a.bind(sys.argv[1])\nb = ctx.socket(zmq.DEALER)\nb.connect(sys.argv[2])\n"
         "zmq.proxy(a, b)\n")  # libzmq's own forwarder, in C: what any extra hop costs here


def free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def timed(clients: list, k: int, block: int, out: list, apps: list) -> int:
    for i in range(block):
        c = clients[k % len(clients)]
        k += 1
        t0 = time.perf_counter()
        r = c.infer("noop", {"x": NOOP_X}, slo_ms=1000, app=apps[i % len(apps)])
        out.append((time.perf_counter() - t0) * 1e6)
        assert r.status == "ok", r
    return k


def overhead(entry: str, nodes: list[str], n: int, block: int, router: str,
             kinds: int = 1) -> dict:  # fmt: skip
    import subprocess

    from orloj_rt.client import Client
    from orloj_rt.cluster.client import ClusterClient

    direct, routed, proxied, client_side = [], [], [], []
    apps = ["default"] if kinds == 1 else [f"k{i}" for i in range(kinds)]
    proxy_eps = [free_endpoint() for _ in nodes]
    proxies = [subprocess.Popen([sys.executable, "-c", PROXY, pe, ep])
               for pe, ep in zip(proxy_eps, nodes, strict=True)]  # fmt: skip
    clients = [Client(ep, timeout_s=30) for ep in nodes]
    via_proxy = [Client(ep, timeout_s=30) for ep in proxy_eps]
    entry_c = Client(entry, timeout_s=30)
    cc = ClusterClient(entry, router=router, timeout_s=30)
    try:
        assert cc.wait_nodes(len(nodes), 30) == len(nodes), "the client-side router lacks nodes"
        for c in [*clients, *via_proxy, entry_c, cc]:  # warm every path
            for i in range(20):
                c.infer("noop", {"x": NOOP_X}, slo_ms=1000, app=apps[i % len(apps)])
        k = kp = 0
        while len(routed) < n:
            k = timed(clients, k, block, direct, apps)
            timed([entry_c], 0, block, routed, apps)
            kp = timed(via_proxy, kp, block, proxied, apps)
            timed([cc], 0, block, client_side, apps)
        stats = entry_c.stats()
    finally:
        for c in [*clients, *via_proxy, entry_c, cc]:
            c.close()
        for p in proxies:
            p.terminate()
            p.wait(10)
    return {
        "client_side_p50_us": round(pct(client_side, 0.5), 1),
        "client_side_added_p50_us": round(pct(client_side, 0.5) - pct(direct, 0.5), 1),
        "client_side_rerouted": cc.rerouted,
        "proxy_p50_us": round(pct(proxied, 0.5), 1),
        "proxy_added_p50_us": round(pct(proxied, 0.5) - pct(direct, 0.5), 1),
        "requests": n,
        "kinds": kinds,
        "direct_p50_us": round(pct(direct, 0.5), 1),
        "direct_p99_us": round(pct(direct, 0.99), 1),
        "entry_p50_us": round(pct(routed, 0.5), 1),
        "entry_p99_us": round(pct(routed, 0.99), 1),
        "added_p50_us": round(pct(routed, 0.5) - pct(direct, 0.5), 1),
        "added_mean_us": round(statistics.fmean(routed) - statistics.fmean(direct), 1),
        "decision_us_mean": stats.get("decision_us_mean", 0.0),
        # the router's relay (compiled or python) and the requests and replies its C
        # fast path relayed (decisions made ahead: docs/cluster.md)
        "relay": stats.get("relay", "python"),
        "relayed_in_c": stats.get("relayed_in_c", [0, 0]),
    }


def kill_under_load(address: str, entry: str, rate: float, load_s: float) -> dict:
    import zmq

    from orloj_rt.client import Client
    from orloj_rt.cluster import control

    st = control.status(address)
    victim = st["nodes"][-1]
    n_req = int(rate * load_s)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(entry)
    sent: list[int] = []

    def load() -> None:
        t0 = time.monotonic()
        for i in range(n_req):
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            h = {"v": 1, "id": i, "model": "early_exit", "slo_ms": 1000.0,
                 "inputs": [{"name": "tokens", "dtype": "int64", "shape": [4]}]}  # fmt: skip
            sock.send_multipart([b"", msgpack.packb(h), TOKENS.tobytes()])
            sent.append(i)

    replies: dict[int, list[str]] = {}
    lock = threading.Lock()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            if sock.poll(20):
                h = msgpack.unpackb(sock.recv_multipart()[1])
                with lock:
                    replies.setdefault(h["id"], []).append(h["status"])

    loader = threading.Thread(target=load, daemon=True)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    loader.start()
    while len(sent) < n_req // 3:
        time.sleep(0.005)
    t_kill = time.monotonic()
    old_pid = control.kill_instance(address, victim["node"])
    recovered = None
    with Client(entry, timeout_s=10) as c:
        deadline = t_kill + 60
        while time.monotonic() < deadline:
            n = c.health()["nodes"].get(victim["node"])
            if n and n["supervisor_pid"] != old_pid and n["workers_ready"] > 0 and n["connected"]:
                recovered = time.monotonic() - t_kill
                break
            time.sleep(0.02)
    loader.join(load_s + 30)
    end = time.monotonic() + 30
    while time.monotonic() < end:
        with lock:
            if len(replies) >= n_req:
                break
        time.sleep(0.02)
    time.sleep(2.0)  # duplicates would come now
    done.set()
    reader.join(5)
    sock.close()
    statuses: dict[str, int] = {}
    for v in replies.values():
        for s in v:
            statuses[s] = statuses.get(s, 0) + 1
    return {
        "node": victim["node"],
        "requests": n_req,
        "answered": sum(1 for i in range(n_req) if i in replies),
        "lost": sum(1 for i in range(n_req) if i not in replies),
        "duplicated": sum(1 for v in replies.values() if len(v) > 1),
        "statuses": statuses,
        "recovered_s": None if recovered is None else round(recovered, 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--requests", type=int, default=2000, help="of each path (default 2000)")
    ap.add_argument("--block", type=int, default=100)
    ap.add_argument("--router", default="orloj")
    ap.add_argument("--rate", type=float, default=100.0, help="req/s in part 2 (default 100)")
    ap.add_argument("--load-s", type=float, default=9.0, help="part 2's length (default 9 s)")
    ap.add_argument("--kinds", type=int, default=1,
                    help="part 1's requests cycle over this many apps, each a kind of request "
                    "to the router (default 1)")  # fmt: skip
    args = ap.parse_args()
    if args.kinds < 1:
        ap.error("--kinds must be >= 1")
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        print("bench/cluster_overhead.py needs Ray: pip install 'orloj-rt[ray]'", file=sys.stderr)
        return 2
    from orloj_rt.cluster import control
    from orloj_rt.cluster.controller import ClusterConfig

    models = tempfile.mkdtemp(prefix="orloj-bench-models-")
    with open(os.path.join(models, "early_exit.toml"), "w") as f:
        f.write('builtin = "early_exit"\nmax_batch_size = 8\n')
    with open(os.path.join(models, "noop.toml"), "w") as f:
        f.write('builtin = "noop"\n')
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False})
    # the machine's 1-minute load average before the cluster starts and at the end: on a
    # 2-core VM shared with other jobs, the figures move with it (docs/cluster.md)
    out: dict = {"nodes": NODES, "router": args.router,
                 "load_avg_before": round(os.getloadavg()[0], 2)}
    try:
        for _ in range(NODES - 1):
            c.add_node(num_cpus=1, object_store_memory=OBJECT_STORE)
        cfg = ClusterConfig(models=models, local=True, bind="tcp://127.0.0.1:*",
                            router=args.router)  # fmt: skip
        st = control.start(c.address, cfg, wait_s=180)
        entry = st["router"]["endpoint"]
        nodes = [n["endpoint"] for n in st["nodes"]]
        from orloj_rt.client import Client

        with Client(entry, timeout_s=10) as cl:  # the router has heard every node
            deadline = time.monotonic() + 30
            while cl.health()["nodes_ready"] < NODES and time.monotonic() < deadline:
                time.sleep(0.05)
        out["overhead"] = overhead(entry, nodes, args.requests, args.block, args.router,
                                   args.kinds)  # fmt: skip
        out["kill"] = kill_under_load(c.address, entry, args.rate, args.load_s)
    finally:
        with contextlib.suppress(Exception):
            control.stop(c.address, timeout_s=30)
        with contextlib.suppress(Exception):
            ray.shutdown()
        c.shutdown()
    out["load_avg_after"] = round(os.getloadavg()[0], 2)
    o, k = out["overhead"], out["kill"]
    out["targets"] = {
        "added_p50_us<=150": o["added_p50_us"] <= OVERHEAD_TARGET_US,
        "client_side_added_p50_us<=150": o["client_side_added_p50_us"] <= OVERHEAD_TARGET_US,
        "no_reply_lost_or_duplicated": k["lost"] == 0 and k["duplicated"] == 0,
        "serving_again_s<=10": k["recovered_s"] is not None
        and k["recovered_s"] <= RECOVERY_TARGET_S,
    }
    if args.json:
        print(json.dumps(out, sort_keys=True))
        return 0
    print(f"orloj-rt on a local Ray cluster: {NODES} nodes x 1 CPU worker, early_exit, "
          f"router {args.router}; 1-minute load average {out['load_avg_before']} before, "
          f"{out['load_avg_after']} after")  # fmt: skip
    print("\n1. routing overhead (one request at a time)")
    print(f"   {'path':<22} {'p50 us':>9} {'p99 us':>9}")
    print(f"   {'node directly':<22} {o['direct_p50_us']:>9} {o['direct_p99_us']:>9}")
    print(f"   {'entry point (router)':<22} {o['entry_p50_us']:>9} {o['entry_p99_us']:>9}")
    print(f"   {'zmq.proxy hop (C)':<22} {o['proxy_p50_us']:>9} {'':>9}")
    print(f"   {'ClusterClient':<22} {o['client_side_p50_us']:>9} {'':>9}")
    print(f"   added p50: {o['added_p50_us']} us (target <= {OVERHEAD_TARGET_US:g}); mean "
          f"{o['added_mean_us']} us; router decision {o['decision_us_mean']} us mean; "
          f"{o['requests']} requests each, of {o['kinds']} kind(s); relay {o['relay']}, "
          f"{o['relayed_in_c'][0]} of {o['requests'] + 20} requests relayed in C")  # fmt: skip
    print(f"   (floor: an extra hop through libzmq's own C forwarder adds "
          f"{o['proxy_added_p50_us']} us p50 here)")  # fmt: skip
    print(f"   routing in the client (ClusterClient, router {args.router}) adds "
          f"{o['client_side_added_p50_us']} us p50 (target <= {OVERHEAD_TARGET_US:g})")
    print(f"\n2. node {k['node']} killed (SIGKILL) under {args.rate:g} req/s")
    print(f"   requests {k['requests']}, answered {k['answered']}, lost {k['lost']}, "
          f"duplicated {k['duplicated']}; statuses {k['statuses']}")  # fmt: skip
    print(f"   serving again after {k['recovered_s']} s (target <= {RECOVERY_TARGET_S:g})")
    print("\ntargets: " + ", ".join(f"{n} {'met' if v else 'MISSED'}"
                                    for n, v in out["targets"].items()))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
