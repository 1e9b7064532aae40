"""orloj-rt across nodes.

- `orloj_rt.cluster.routing`: which node serves a new request (pure decision code): the
  routers (random, round-robin, p2c, orloj), `NodeState` (what a node publishes) and
  `node_state(core, node, now)` (a node's state read off its serving core).
  docs/cluster-routing.md has the design and its measurements.
- The cluster simulator is `orloj_rt.sim.cluster` (`orloj-rt sim --nodes N ...`).

Nothing here imports Ray: the routing runs anywhere.
"""
