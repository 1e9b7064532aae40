"""Every scheduling policy by name, behind one factory, for the simulator and the runtime.

    policy = make_policy("orloj", max_batch=32, inflation=table_or_None, **params)
    policy.set_default_distribution(prior)

All policies implement `orloj_rt.engine.interface.Policy`. `orloj` comes from the active
engine (compiled, or the pure twin with ORLOJ_RT_PURE=1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from orloj_rt.engine import OrlojPolicy
from orloj_rt.engine.interface import Policy

PolicyFactory = Callable[..., Policy]

#: name -> factory(max_batch=..., inflation=..., **params)
POLICIES: dict[str, PolicyFactory] = {
    "orloj": OrlojPolicy,
}


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
