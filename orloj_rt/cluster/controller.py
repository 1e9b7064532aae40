"""The cluster controller: a detached Ray actor (`orloj-rt-controller`, namespace
`orloj-rt`) on the node where `orloj-rt cluster start` ran. It owns the router process
(router.py: the cluster's one entry point) and places one node actor (node_actor.py) on
each Ray node with the resources, up to `--nodes`.

    controller --subprocess--> `python -m orloj_rt.cluster.router` (restarted if it dies,
                                on the same ports)
               --every RECONCILE_S--> ray.nodes(): a node actor on each alive node that has
                                the resources and none yet; a dead node's actor is dropped

Node actors are detached and named (`orloj-rt-node-<node>`), Ray restarts them
(max_restarts=-1), and each restarts its instance. Ray restarts the controller too, on
its node (up to CONTROLLER_RESTARTS times): the new one reads the endpoints the first
one kept in Ray's key-value store, starts the router on the same ports, and adopts the
node actors as they run (their instances are not restarted). A node added to the Ray cluster later
gets an instance at the next reconcile; a node that leaves is forgotten (the router has
already answered or re-routed what it held: router.py).

The plain class is here; control.py wraps it with `ray.remote`, and it wraps the node
actor's class.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from orloj_rt.cluster.node_actor import InstanceSpec, _pdeathsig, free_port

NAMESPACE = "orloj-rt"
CONTROLLER_NAME = "orloj-rt-controller"
NODE_ACTOR_PREFIX = "orloj-rt-node-"
RECONCILE_S = 1.0
#: how many times Ray restarts a controller that died while its node lives
CONTROLLER_RESTARTS = 10
#: the key of the endpoints a restarted controller serves again (Ray's internal KV)
ENDPOINTS_KEY = "controller-endpoints"
ROUTER_READY_TIMEOUT_S = 90.0
ROUTER_READY_RE = re.compile(r"cluster router on (\S+) \(state ")
HTTP_RE = re.compile(r"; http (http://[^;)\s]+)")
NODE_ACTOR_CONCURRENCY = 4  # status and stop while wait_ready waits


@dataclass
class ClusterConfig:
    """What `orloj-rt cluster start` asked for."""

    models: str = ""
    gpus_per_node: int = 0
    cpu_workers: int = 1
    nodes: int = 0  # at most this many nodes; 0: every node with the resources
    bind: str = "tcp://127.0.0.1:5555"  # the entry point
    router: str = "orloj"
    http_port: int | None = None
    allow_remote: bool = False
    local: bool = False  # every Ray node is on this machine: everything binds 127.0.0.1
    policy: str = "orloj"
    extra_args: list = field(default_factory=list)


def node_label(node: dict) -> str:
    """A node's name in the cluster: its IP and the head of its Ray node id."""
    return f"{node['NodeManagerAddress']}-{node['NodeID'][:8]}"


def eligible(node: dict, config: ClusterConfig) -> bool:
    res = node.get("Resources", {})
    if not node.get("Alive"):
        return False
    if config.gpus_per_node > 0:
        return res.get("GPU", 0) >= config.gpus_per_node
    return res.get("CPU", 0) >= config.cpu_workers


class ClusterController:
    """See the module docstring. Its methods are the actor's."""

    def __init__(self, config: ClusterConfig):
        import ray

        from orloj_rt.cluster.node_actor import NodeInstance

        self.config = config
        self.node_actor_cls = ray.remote(NodeInstance)
        self.host = "127.0.0.1" if config.local else ray.util.get_node_ip_address()
        self.router_proc: subprocess.Popen | None = None
        self.endpoint = ""
        self.state_endpoint = f"tcp://{self.host}:{free_port(self.host)}"
        self.http_url = ""
        self.router_starts = 0
        # a controller Ray started again (the last one died): the same endpoints, and the
        # node actors adopted as they run
        kept = _endpoints_kept() if ray.get_runtime_context().was_current_actor_reconstructed \
            else None  # fmt: skip
        self.restarts = 0
        self._adopt = kept is not None
        if kept is not None:
            self.endpoint = kept["endpoint"]
            self.state_endpoint = kept["state_endpoint"]
            self.http_url = kept["http"]
            self.restarts = kept.get("restarts", 0) + 1
        self.actors: dict[str, tuple] = {}  # label -> (ray node id, actor handle)
        self.lost: list[str] = []  # labels of nodes that left
        self._stop = threading.Event()
        self._router_ready = threading.Event()
        self._router_failed = ""
        self._lock = threading.Lock()
        threading.Thread(target=self._watch_router, name="orloj-rt-router", daemon=True).start()
        if not self._router_ready.wait(ROUTER_READY_TIMEOUT_S) or self._router_failed:
            self._stop.set()
            self._kill_router()
            raise RuntimeError(self._router_failed or "the cluster router was not ready within "
                               f"{ROUTER_READY_TIMEOUT_S:g} s")  # fmt: skip
        _keep_endpoints({"endpoint": self.endpoint, "state_endpoint": self.state_endpoint,
                         "http": self.http_url, "restarts": self.restarts})  # fmt: skip
        self.reconcile()
        self._adopt = False
        threading.Thread(target=self._reconcile_loop, name="orloj-rt-reconcile",
                         daemon=True).start()  # fmt: skip

    # ------------------------------------------------------------------ the router
    def _router_cmd(self) -> list[str]:
        c = self.config
        cmd = [sys.executable, "-m", "orloj_rt.cluster.router", "--bind", self.endpoint or c.bind,
               "--state-bind", self.state_endpoint, "--router", c.router]  # fmt: skip
        if c.models:
            cmd += ["--models", c.models]
        if c.http_port is not None:
            # the same port again after a restart of the router
            port = int(self.http_url.rsplit(":", 1)[1]) if self.http_url else c.http_port
            cmd += ["--http-port", str(port)]
        if c.allow_remote:
            cmd.append("--allow-remote")
        return cmd

    def _watch_router(self) -> None:
        while not self._stop.is_set():
            cmd = self._router_cmd()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                                    preexec_fn=_pdeathsig)  # fmt: skip
            with self._lock:
                self.router_proc = proc
            self.router_starts += 1
            for line in proc.stdout:
                m = ROUTER_READY_RE.search(line)
                if m:
                    self.endpoint = m.group(1)
                    h = HTTP_RE.search(line)
                    if h:
                        self.http_url = h.group(1)
                    self._router_ready.set()
            code = proc.wait()
            if not self._router_ready.is_set():
                self._router_failed = (f"the cluster router exited with code {code} before it "
                                       f"was ready: {' '.join(cmd)} (its log is the "
                                       "controller actor's stderr: `ray logs`)")  # fmt: skip
                self._router_ready.set()
                return
            self._stop.wait(0.2)

    def _kill_router(self) -> None:
        with self._lock:
            p = self.router_proc
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    # ------------------------------------------------------------------ the nodes
    def _spec(self) -> InstanceSpec:
        c = self.config
        return InstanceSpec(state_endpoint=self.state_endpoint, models=c.models,
                            gpus=c.gpus_per_node, cpu_workers=c.cpu_workers,
                            host="127.0.0.1" if c.local else "", policy=c.policy,
                            extra_args=list(c.extra_args))  # fmt: skip

    def reconcile(self) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = ray.nodes()
        alive = {n["NodeID"] for n in nodes if n.get("Alive")}
        with self._lock:
            for label, (node_id, actor) in list(self.actors.items()):
                if node_id not in alive:  # the node left: Ray cannot restart its actor there
                    with contextlib.suppress(Exception):
                        ray.kill(actor, no_restart=True)
                    del self.actors[label]
                    self.lost.append(label)
            placed = {node_id for node_id, _ in self.actors.values()}
            limit = self.config.nodes or len(nodes)
            c = self.config
            for n in sorted(nodes, key=lambda n: n["NodeID"]):
                if len(self.actors) >= limit or self._stop.is_set():
                    break
                if n["NodeID"] in placed or not eligible(n, c):
                    continue
                label = node_label(n)
                name = NODE_ACTOR_PREFIX + label
                with contextlib.suppress(ValueError):
                    old = ray.get_actor(name, namespace=NAMESPACE)
                    if self._adopt:  # ours, placed by the controller before this one
                        self.actors[label] = (n["NodeID"], old)
                        continue
                    ray.kill(old, no_restart=True)  # a detached one from an earlier cluster
                opts = {"num_gpus": c.gpus_per_node} if c.gpus_per_node else {
                    "num_cpus": c.cpu_workers}  # fmt: skip
                actor = self.node_actor_cls.options(
                    name=name, namespace=NAMESPACE, lifetime="detached", max_restarts=-1,
                    max_task_retries=0, max_concurrency=NODE_ACTOR_CONCURRENCY,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
                    **opts,
                ).remote(label, self._spec())  # fmt: skip
                self.actors[label] = (n["NodeID"], actor)

    def _reconcile_loop(self) -> None:
        while not self._stop.wait(RECONCILE_S):
            try:
                self.reconcile()
            except Exception as exc:  # noqa: BLE001 - the GCS may be briefly unreachable
                print(f"orloj-rt controller: reconcile failed: {exc}", file=sys.stderr)

    # ------------------------------------------------------------------ the actor's API
    def status(self, timeout_s: float = 10.0) -> dict:
        import ray

        with self._lock:
            actors = dict(self.actors)
        refs = {label: a.status.remote() for label, (_, a) in actors.items()}
        nodes = []
        for label, ref in refs.items():
            try:
                nodes.append(ray.get(ref, timeout=timeout_s))
            except Exception as exc:  # noqa: BLE001 - a dead or restarting actor
                nodes.append({"node": label, "state": "unreachable",
                              "error": f"{type(exc).__name__}: {str(exc)[:200]}"})  # fmt: skip
        p = self.router_proc
        return {
            "router": {"endpoint": self.endpoint, "state_endpoint": self.state_endpoint,
                       "http": self.http_url, "pid": p.pid if p and p.poll() is None else 0,
                       "starts": self.router_starts, "policy": self.config.router},
            "nodes": sorted(nodes, key=lambda d: d["node"]),
            "nodes_lost": list(self.lost),
            "controller_pid": os.getpid(),
            "controller_restarts": self.restarts,
        }  # fmt: skip

    def wait_serving(self, n: int, timeout_s: float) -> dict:
        """Waits (bounded) until n nodes serve; the status then."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status()
            serving = sum(d.get("state") == "serving" for d in st["nodes"])
            if serving >= n or time.monotonic() > deadline:
                return st
            time.sleep(0.2)

    def kill_instance(self, label: str) -> int:
        """SIGKILL to one node's instance (tests, benchmarks): its actor restarts it."""
        import ray

        _, actor = self.actors[label]
        return ray.get(actor.kill_instance.remote(), timeout=30)

    def stop(self, timeout_s: float = 60.0) -> dict:
        """Stops every instance (each drains and removes its shared memory), kills the node
        actors, stops the router; what each node reported at its stop."""
        import ray

        self._stop.set()
        with self._lock:
            actors = dict(self.actors)
            self.actors.clear()
        refs = {label: a.stop.remote() for label, (_, a) in actors.items()}
        out = {}
        for label, ref in refs.items():
            try:
                out[label] = ray.get(ref, timeout=timeout_s)
            except Exception as exc:  # noqa: BLE001
                out[label] = {"node": label, "state": f"stop failed: {exc}"}
        for _, a in actors.values():
            with contextlib.suppress(Exception):
                ray.kill(a, no_restart=True)
        self._kill_router()
        _keep_endpoints(None)
        return {"nodes": out}


def _keep_endpoints(value: dict | None) -> None:
    """Keeps (None: forgets) the endpoints in Ray's key-value store, for a controller that
    Ray starts again after this one dies."""
    from ray.experimental.internal_kv import _internal_kv_del, _internal_kv_put

    if value is None:
        _internal_kv_del(ENDPOINTS_KEY, namespace=NAMESPACE)
    else:
        _internal_kv_put(ENDPOINTS_KEY, json.dumps(value), namespace=NAMESPACE)


def _endpoints_kept() -> dict | None:
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ENDPOINTS_KEY, namespace=NAMESPACE)
    return None if raw is None else json.loads(raw)
