"""Every scheduling policy by name, behind one factory, for the simulator and the runtime.

    policy = make_policy("orloj", max_batch=32, inflation=table_or_None, **params)
    policy.set_default_distribution(prior)

All policies implement `orloj_rt.engine.interface.Policy`. `orloj` comes from the active
engine (compiled, or the pure twin with ORLOJ_RT_PURE=1); the baselines are Python over the
active engine's `RequestQueue`:

    fifo       Triton's dynamic batcher: oldest first, queue timeout = SLO -> rejected
    edf        earliest deadline first; drops the expired
    nexus      a deterministic offline profile: the largest batch whose mean meets the
               earliest deadline; drops what cannot finish alone
    clockwork  the maximum of the last 10 measured batch times per size; drops what that
               estimate says cannot make it
    oracle     the clairvoyant twin of orloj: knows each request's true time (an upper
               reference; the simulator gives it the true times)

`orloj_rt.policies.hint_classes.HintClassPolicy` wraps orloj so that per-request cost
hints choose a cost class (build the inner orloj with pools=True).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orloj_rt.engine import OrlojPolicy
from orloj_rt.engine.interface import Policy
from orloj_rt.policies.clockwork import ClockworkPolicy
from orloj_rt.policies.edf import EdfPolicy
from orloj_rt.policies.fifo import TritonFifoPolicy
from orloj_rt.policies.nexus import NexusPolicy
from orloj_rt.policies.oracle import ClairvoyantOraclePolicy

PolicyFactory = Callable[..., Policy]

#: name -> factory(max_batch=..., inflation=..., **params)
POLICIES: dict[str, PolicyFactory] = {
    "orloj": OrlojPolicy,
    "fifo": TritonFifoPolicy,
    "edf": EdfPolicy,
    "nexus": NexusPolicy,
    "clockwork": ClockworkPolicy,
    "oracle": ClairvoyantOraclePolicy,
}

#: The policies a deployment may choose; the oracle needs true times only a simulator has.
BASELINES = ("fifo", "edf", "nexus", "clockwork")


def make_policy(
    name: str,
    *,
    max_batch: int,
    inflation: Sequence[float] | None = None,
    **params,
) -> Policy:
    """Builds policy `name` for one model; ValueError naming the choices if unknown."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(
            f"unknown policy {name!r}; choose one of: {', '.join(sorted(POLICIES))}"
        ) from None
    if inflation is not None:
        return factory(max_batch=max_batch, inflation=list(inflation), **params)
    return factory(max_batch=max_batch, **params)
