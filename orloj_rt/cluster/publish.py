"""A node's state, published from its scheduler process to the cluster's router.

    scheduler (core) --PUB, every STATE_INTERVAL_S--> router's SUB (router.py)

Off unless the environment names the router: `orloj-rt cluster start` starts each node's
instance with ORLOJ_RT_CLUSTER_STATE=tcp://ROUTER_HOST:PORT (the router's state socket)
and ORLOJ_RT_CLUSTER_NODE=<node id>; a plain `orloj-rt start` has neither, and its
scheduler builds no publisher (`state_publisher` returns None). The scheduler calls
`tick(core, now)` once per loop and bounds its poll by `next_at`.

One message is one msgpack frame, a map:
`{"v": 1, "node": str, "endpoint": str, "pid": int, "seq": int, "workers": int,
"workers_ready": int, "state": NodeState.to_wire()}`. `endpoint` is the node's client
endpoint (its frontend's --bind, a concrete port) and `pid` its supervisor's: the router
connects to `endpoint` when it first hears of the node, and again when the pair changes
(the instance was restarted). The router reads `workers_ready` to route nothing to a node
that cannot serve yet. A send never blocks: with nobody reading (no router yet), messages
are dropped (a PUB drops at its high-water mark), and only the newest state matters.
"""

from __future__ import annotations

import logging
import os

import msgpack

log = logging.getLogger("orloj_rt.cluster.publish")

STATE_ENV = "ORLOJ_RT_CLUSTER_STATE"  # the router's state endpoint (tcp://HOST:PORT)
NODE_ENV = "ORLOJ_RT_CLUSTER_NODE"  # this node's id in the cluster
STATE_INTERVAL_S = 0.005  # how often a node publishes (a few ms: the "every few ms")
STATE_VERSION = 1


class StatePublisher:
    """A PUB socket that the scheduler's loop feeds; see the module docstring."""

    def __init__(self, endpoint: str, node: str, client_endpoint: str, supervisor_pid: int,
                 interval_s: float = STATE_INTERVAL_S):  # fmt: skip
        import zmq

        from orloj_rt.cluster.routing import node_state  # no ray, no torch

        self._node_state = node_state
        self._zmq = zmq
        self._ctx = zmq.Context.instance()
        self.sock = self._ctx.socket(zmq.PUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 8)  # only the newest state matters
        self.sock.connect(endpoint)
        self.node = node
        self.endpoint = client_endpoint
        self.pid = supervisor_pid
        self.interval_s = interval_s
        self.next_at = 0.0
        self.seq = 0
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def tick(self, core, now: float) -> None:
        """Publishes the core's state if the interval has passed since the last one."""
        if now < self.next_at:
            return
        self.next_at = now + self.interval_s
        self.seq += 1
        workers = core.workers
        msg = {
            "v": STATE_VERSION, "node": self.node, "endpoint": self.endpoint, "pid": self.pid,
            "seq": self.seq, "workers": len(workers),
            "workers_ready": sum(1 for w in workers if w.ready),
            "state": self._node_state(core, self.node, now).to_wire(),
        }  # fmt: skip
        # a PUB never blocks nor fails here: at its high-water mark it drops the message
        self.sock.send(self._pack(msg), self._zmq.NOBLOCK)

    def close(self) -> None:
        self.sock.close(linger=0)


def state_publisher(config) -> StatePublisher | None:
    """The publisher for this instance (its InstanceConfig), or None outside a cluster."""
    endpoint = os.environ.get(STATE_ENV, "")
    if not endpoint:
        return None
    node = os.environ.get(NODE_ENV, "") or f"{os.uname().nodename}-{config.supervisor_pid}"
    if "*" in config.client_endpoint:
        log.error("%s is set but --bind %s names no port: the router could not reach this "
                  "node; not publishing", STATE_ENV, config.client_endpoint)  # fmt: skip
        return None
    log.info("publishing node state as %r to %s every %g ms", node, endpoint,
             STATE_INTERVAL_S * 1000)  # fmt: skip
    return StatePublisher(endpoint, node, config.client_endpoint, config.supervisor_pid)
