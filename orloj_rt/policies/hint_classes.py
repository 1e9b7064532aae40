"""Cost hints for a distribution-aware policy: a hint picks a cost class.

A cost hint is a number known when a request arrives that predicts its execution time:
an input length, or a length predictor's output. orloj's distributions are per app; this
adapter makes each (app, hint class) an app of the inner policy, with the distribution of
solo times *given* a hint in that class. The classes are the quantiles of the hints seen
in a profile (equal shares of requests), so each class's distribution is much narrower
than the app's, and orloj's per-pool member choice (`pools=True`, see
orloj_rt/engine/pure/orloj.py) then batches short requests with short ones. Without
pools, orloj puts every class behind the slowest class's bar and most of the gain is lost.

    inner = make_policy("orloj", max_batch=32, pools=True)
    policy = HintClassPolicy.fit(inner, solo, hints)

A request without a hint uses its app's own distribution. Each class keeps the
distribution it was fitted with: the batch timings that the scheduler observes do not say
which member was slow, so they cannot teach a class (refit from per-request work reports
to follow a drift).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from orloj_rt.engine.interface import Decision, Policy

DEFAULT_CLASSES = 8
CLASS_SEPARATOR = "#h"


class HintClassPolicy(Policy):
    """Wraps `inner`, mapping (app, hint) to the inner app `app#h<class>`."""

    def __init__(self, inner: Policy, edges: dict[str, Sequence[float]]):
        self._inner = inner
        self._edges = {app: sorted(float(e) for e in cuts) for app, cuts in edges.items()}
        self.name = f"{inner.name}+hint"

    @classmethod
    def fit(
        cls,
        inner: Policy,
        solo: Sequence[float],
        hints: Sequence[float],
        *,
        app: str = "default",
        classes: int = DEFAULT_CLASSES,
        distribution=None,
    ) -> HintClassPolicy:
        """Fits `classes` hint classes of `app` from a profile of (solo time, hint) pairs
        and gives the inner policy each class's distribution."""
        if distribution is None:
            from orloj_rt.engine import Distribution as distribution
        if len(solo) != len(hints) or not len(solo):
            raise ValueError("the profile needs one hint per solo time, and some of each")
        if not (isinstance(classes, int) and classes >= 1):
            raise ValueError(f"classes must be an integer >= 1, got {classes!r}")
        ranked = sorted(float(h) for h in hints)
        n = len(ranked)
        edges = sorted({ranked[(i * n) // classes] for i in range(1, classes)})
        buckets: list[list[float]] = [[] for _ in range(len(edges) + 1)]
        for x, h in zip(solo, hints, strict=True):
            buckets[bisect.bisect_right(edges, float(h))].append(float(x))
        policy = cls(inner, {app: edges})
        for k, xs in enumerate(buckets):
            if xs:  # an empty class falls back to the app's default distribution
                inner.set_distribution(policy.class_app(app, k), distribution.from_samples(xs))
        return policy

    @staticmethod
    def class_app(app: str, k: int) -> str:
        return f"{app}{CLASS_SEPARATOR}{k}"

    @property
    def inner(self) -> Policy:
        return self._inner

    def hint_class(self, app: str, hint: float | None) -> int | None:
        """The class of a hint for `app`; None without a hint or fitted classes."""
        edges = self._edges.get(app)
        if hint is None or edges is None:
            return None
        return bisect.bisect_right(edges, float(hint))

    def enqueue(self, req_id, app, arrival, deadline, hint=None) -> None:
        """Called once per arrival: the request joins its (app, class)."""
        k = self.hint_class(app, hint)
        inner_app = app if k is None else self.class_app(app, k)
        self._inner.enqueue(req_id, inner_app, arrival, deadline, hint)

    def remove(self, req_id) -> None:
        self._inner.remove(req_id)

    def decide(self, now: float) -> Decision:
        return self._inner.decide(now)

    def next_wakeup(self, now: float) -> float | None:
        return self._inner.next_wakeup(now)

    def set_default_distribution(self, dist) -> None:
        self._inner.set_default_distribution(dist)

    def set_distribution(self, app: str, dist) -> None:
        self._inner.set_distribution(app, dist)

    def observe_solo(self, app: str, solo_time: float) -> None:
        self._inner.observe_solo(app, solo_time)

    def observe_batch(self, apps, exec_time) -> None:
        """Called when a batch has run: teaches the members' apps, not their classes."""
        self._inner.observe_batch(apps, exec_time)

    def __len__(self) -> int:
        return len(self._inner)
