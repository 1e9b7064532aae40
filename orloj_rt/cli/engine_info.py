"""`orloj-rt engine`: which scheduling engine is active, and a one-line self-check."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "engine",
        help="show which scheduling engine (compiled or pure Python) is active",
        description="Show which scheduling engine is active and run a tiny decision.",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from orloj_rt.engine import IMPL, Distribution, OrlojPolicy

    policy = OrlojPolicy(max_batch=8)
    policy.set_default_distribution(Distribution.from_mean_cov(0.01, 1.0))
    for i in range(16):
        policy.enqueue(i, "default", 0.0, 0.02 + 0.01 * i)
    decision = policy.decide(0.0)
    print(f"engine: {IMPL}")
    print(f"self-check: a decision over 16 requests dispatched {len(decision.batch)}, "
          f"dropped {len(decision.dropped)}")
    return 0
