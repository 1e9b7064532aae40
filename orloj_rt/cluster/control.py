"""Start, inspect and stop orloj-rt on a Ray cluster, from any machine of it: what
`orloj-rt cluster start|status|stop` call (orloj_rt/cli/cluster.py). docs/cluster.md.

The only module, with controller.py and node_actor.py, that imports Ray, and only inside
its functions: without Ray, `require_ray` says how to install it.
"""

from __future__ import annotations

import contextlib

from orloj_rt.cluster.controller import (
    CONTROLLER_NAME,
    NAMESPACE,
    NODE_ACTOR_PREFIX,
    ClusterConfig,
    eligible,
)

INSTALL_HINT = "pip install 'orloj-rt[ray]'"
CONTROLLER_CONCURRENCY = 8  # status and kill_instance while wait_serving waits


class ClusterError(RuntimeError):
    """What went wrong, and what to do about it."""


def require_ray():
    try:
        import ray
    except ImportError:
        raise ClusterError(f"Ray is not installed; install it with {INSTALL_HINT} (on every "
                           "node of the cluster)") from None  # fmt: skip
    return ray


def connect(address: str):
    """Joins the Ray cluster at `address` as a driver (no-op if already connected)."""
    import logging

    ray = require_ray()
    if ray.is_initialized():
        return ray
    _check_reachable(address)
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot connect to the Ray cluster at {address!r}: {exc}; start it "
                           "first (`ray start --head` on one machine, `ray start --address "
                           "HEAD:6379` on the others) and pass its address") from None  # fmt: skip
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Ray retries an unreachable GCS for minutes: a HOST:PORT that refuses is said at once."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", or what Ray itself resolves
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); "
                           "start it first (`ray start --head` on one machine, `ray start "
                           "--address HEAD:6379` on the others) and pass its address, e.g. "
                           "HEAD_IP:6379") from None  # fmt: skip


def controller(ray):
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def start(address: str, config: ClusterConfig, wait_s: float = 300.0) -> dict:
    """Places the controller on this machine's Ray node; waits (bounded) until every node
    that has the resources serves (at most config.nodes); its status."""
    ray = connect(address)
    if controller(ray) is not None:
        raise ClusterError("orloj-rt already runs on this Ray cluster: `orloj-rt cluster "
                           "status` shows it, `orloj-rt cluster stop` stops it")  # fmt: skip
    nodes = [n for n in ray.nodes() if eligible(n, config)]
    want = min(len(nodes), config.nodes) if config.nodes else len(nodes)
    if want == 0:
        need = (f"{config.gpus_per_node} GPU(s)" if config.gpus_per_node
                else f"{config.cpu_workers} CPU(s)")  # fmt: skip
        raise ClusterError(f"no alive Ray node has {need} for an instance; add nodes or ask "
                           "for fewer (--gpus-per-node, --cpu-workers)")  # fmt: skip
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from orloj_rt.cluster.controller import CONTROLLER_RESTARTS, ClusterController

    here = ray.get_runtime_context().get_node_id()
    ctl = ray.remote(ClusterController).options(
        name=CONTROLLER_NAME, namespace=NAMESPACE, lifetime="detached", num_cpus=0,
        max_restarts=CONTROLLER_RESTARTS, max_concurrency=CONTROLLER_CONCURRENCY,
        scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=False),
    ).remote(config)  # fmt: skip
    try:
        status = ray.get(ctl.wait_serving.remote(want, wait_s), timeout=wait_s + 120)
    except Exception as exc:
        with contextlib.suppress(Exception):
            ray.get(ctl.stop.remote(), timeout=60)
        with contextlib.suppress(Exception):
            ray.kill(ctl)
        raise ClusterError(f"the cluster did not start: {exc}") from None
    serving = sum(d.get("state") == "serving" for d in status["nodes"])
    status["wanted"] = want
    if serving < want:
        status["warning"] = (f"{serving} of {want} node(s) serve after {wait_s:g} s; the rest "
                             "may still be starting: see `orloj-rt cluster status` and each "
                             "node's log")  # fmt: skip
    return status


def status(address: str) -> dict:
    ray = connect(address)
    ctl = controller(ray)
    if ctl is None:
        raise ClusterError("orloj-rt does not run on this Ray cluster (start it with "
                           "`orloj-rt cluster start`)")  # fmt: skip
    return ray.get(ctl.status.remote(), timeout=60)


def wait_serving(address: str, n: int, timeout_s: float) -> dict:
    ray = connect(address)
    ctl = controller(ray)
    if ctl is None:
        raise ClusterError("orloj-rt does not run on this Ray cluster")
    return ray.get(ctl.wait_serving.remote(n, timeout_s), timeout=timeout_s + 60)


def kill_instance(address: str, node: str) -> int:
    """SIGKILL to one node's instance (a crash, for tests and benchmarks)."""
    ray = connect(address)
    ctl = controller(ray)
    if ctl is None:
        raise ClusterError("orloj-rt does not run on this Ray cluster")
    return ray.get(ctl.kill_instance.remote(node), timeout=60)


def stop(address: str, timeout_s: float = 60.0) -> dict:
    """Stops every instance and the router, and removes the actors; what was stopped."""
    ray = connect(address)
    ctl = controller(ray)
    out: dict = {"nodes": {}}
    if ctl is not None:
        try:
            out = ray.get(ctl.stop.remote(timeout_s), timeout=timeout_s + 60)
        finally:
            with contextlib.suppress(Exception):
                ray.kill(ctl, no_restart=True)
    # node actors whose controller is gone (it died): stop their instances, then kill them
    leftovers = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == NAMESPACE and a["name"].startswith(NODE_ACTOR_PREFIX)]
    for name in leftovers:
        with contextlib.suppress(Exception):
            a = ray.get_actor(name, namespace=NAMESPACE)
            out["nodes"].setdefault(name[len(NODE_ACTOR_PREFIX):],
                                    ray.get(a.stop.remote(), timeout=timeout_s))  # fmt: skip
            ray.kill(a, no_restart=True)
    if ctl is None and not leftovers:
        raise ClusterError("orloj-rt does not run on this Ray cluster: nothing to stop")
    return out
