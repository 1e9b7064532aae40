"""Cost-hint classes, learned online per (model, app): what a hint says about a request.

A cost hint is a number known when a request arrives that predicts its cost: a client's
`hint`, or one the frontend derives from the request (a model's `hint = "length(tokens)"`,
docs/models.md). A distribution-aware policy cannot use a raw number; it uses
distributions. So the serving core turns hints into *classes*: each app's hints are cut
at quantiles of the hints it has seen (equal shares of requests), and each class is an app
of the policy (`app#h<k>`, k = 0 for the smallest hints) with its own distribution of
solo times, learned from the work reports of its own members exactly as an app's is
(orloj_rt/serving/model.py: the prior until `MIN_APP_SAMPLES` samples, then its own).
Each class's distribution is much narrower than the app's, and orloj's pools (built with
`pools=True`, see orloj_rt/engine/pure/orloj.py) batch short requests with short ones.

Online, per app (`HintClasses`):
- until `MIN_FIT_HINTS` hints have been seen, hinted requests are filed under the app
  itself (no classes yet); their (hint, solo) pairs are kept;
- the edges are the quantiles of the last `HINT_WINDOW` hints, refitted every
  `REFIT_EVERY` hints when they moved by more than `REFIT_MOVE` of the hints' spread
  (a drift), so that classes keep equal shares;
- after each (re)fit, every class's distribution is rebuilt from the last `PAIR_WINDOW`
  (hint, solo) pairs that fall in its new range (the prior where fewer than
  `MIN_APP_SAMPLES`); requests already queued keep the class they were filed under.

Which policies get classes: `orloj_rt.policies.HINTED` (orloj, orloj-step, sjf-hint).
Once a request is filed under a class, whole-batch orloj is tuned for classes with
`HINT_TUNING` (its patience, price share and epsilon; a key its params set is kept).
The baselines that stand for systems without hints (fifo, edf, nexus, clockwork) get
none: the systems they stand for ignore them. `hint_classes=0` (a scheduler option, as
`max_apps`) turns classes off.
"""

from __future__ import annotations

import bisect
import heapq
from collections import OrderedDict, deque

#: classes per app unless configured (`--policy-param hint_classes=K`)
DEFAULT_HINT_CLASSES = 8
#: whole-batch orloj's settings once a request is filed under a class, each unless the
#: policy's params set it (orloj_rt/engine/pure/orloj.py; orloj has `set_<key>` for each):
#: - patience: the long classes' requests below theta do not hold the worker while short
#:   ones keep arriving;
#: - price_share (step 3b): a larger batch that is almost as efficient beats the
#:   best-scoring small batch of the shortest class;
#: - epsilon: drop only what has under 2% alone (10% without classes; with classes the
#:   two are within 0.002 of each other in the simulator).
#: Each from the simulator's sweeps with hints (docs/results.md, "Cost hints through the
#: serving core"); without classes orloj keeps its defaults.
HINT_TUNING = {"patience": 0.5, "price_share": 0.5, "epsilon": 0.02}
#: the app's policy name of class k: f"{app}{CLASS_SEPARATOR}{k}"
CLASS_SEPARATOR = "#h"
#: hints seen before the first edges (until then hinted requests use the app's law)
MIN_FIT_HINTS = 64
#: the edges are quantiles of this many most recent hints
HINT_WINDOW = 1024
#: hints between two looks at whether the edges moved
REFIT_EVERY = 256
#: an edge moved this share of the hints' spread (5% to 95%): refit
REFIT_MOVE = 0.1
#: (hint, solo) pairs kept per app, to rebuild the classes after a refit
PAIR_WINDOW = 2048
#: apps whose classes are kept per model (least recently used beyond)
MAX_HINTED_APPS = 256


def class_app(app: str, k: int) -> str:
    """The policy's app of class k of `app`."""
    return f"{app}{CLASS_SEPARATOR}{k}"


def check_classes(value) -> int:
    """`hint_classes` validated: an integer >= 0 (0: hints ignored)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"hint_classes must be an integer >= 0 (0: hints ignored), got "
                         f"{value!r}")  # fmt: skip
    return value


def quantile_edges(hints, classes: int) -> list[float]:
    """The `classes - 1` cuts that split `hints` into equal shares, each midway between
    the two hints it separates (so a gap between two clusters is cut in its middle); fewer
    where hints repeat (equal cuts merge). A hint equal to a cut is in the upper class."""
    ranked = sorted(hints)
    n = len(ranked)
    cuts = set()
    for i in range(1, classes):
        j = (i * n) // classes
        if 0 < j < n:
            cuts.add(ranked[j] if ranked[j - 1] == ranked[j] else
                     0.5 * (ranked[j - 1] + ranked[j]))  # fmt: skip
    return sorted(cuts)


class HintClasses:
    """One app's classes: its recent hints, its edges, and its recent (hint, solo) pairs."""

    __slots__ = ("classes", "hints", "pairs", "edges", "since_fit", "refits", "seen", "stale")

    def __init__(self, classes: int) -> None:
        self.classes = classes
        self.hints: deque[float] = deque(maxlen=HINT_WINDOW)
        self.pairs: deque[tuple[float, float]] = deque(maxlen=PAIR_WINDOW)
        self.edges: list[float] | None = None
        self.since_fit = 0
        self.refits = 0  # fits so far, the first included
        self.seen = 0  # hints seen
        self.stale: set[int] = set()  # classes to rebuild from the pairs when next used

    def observe(self, hint: float) -> bool:
        """A hinted request arrived; True if the edges were (re)fitted just now."""
        self.hints.append(hint)
        self.seen += 1
        self.since_fit += 1
        if self.edges is None:
            if len(self.hints) < MIN_FIT_HINTS:
                return False
        elif self.since_fit < REFIT_EVERY:
            return False
        self.since_fit = 0
        edges = quantile_edges(self.hints, self.classes)
        if self.edges is not None and not self._moved(edges):
            return False
        self.edges = edges
        self.refits += 1
        self.stale = set(range(len(edges) + 1))
        return True

    def _moved(self, edges: list[float]) -> bool:
        old = self.edges
        if len(edges) != len(old):
            return True
        ranked = sorted(self.hints)
        n = len(ranked)
        spread = ranked[(95 * n) // 100 - 1 if n >= 20 else -1] - ranked[(5 * n) // 100]
        if spread <= 0:
            return edges != old
        return max(abs(a - b) for a, b in zip(edges, old, strict=True)) > REFIT_MOVE * spread

    def class_of(self, hint: float) -> int | None:
        """The class of `hint`; None before the first fit."""
        if self.edges is None:
            return None
        return bisect.bisect_right(self.edges, hint)

    def buckets(self) -> list[list[float]]:
        """The kept solo times of each class under the current edges."""
        out: list[list[float]] = [[] for _ in range(len(self.edges or ()) + 1)]
        for h, x in self.pairs:
            out[self.class_of(h) or 0].append(x)
        return out

    def ranges(self) -> list[tuple[float | None, float | None]]:
        """Each class's hint range [lo, hi) (None: unbounded)."""
        cuts = [None, *(self.edges or ()), None]
        return list(zip(cuts[:-1], cuts[1:], strict=True))


class HintBook:
    """A model's `HintClasses` per app, at most `MAX_HINTED_APPS` (least recently used
    forgotten beyond). `seed`: (hint, solo) pairs of the warm-up's examples, where the
    model derives hints: every app's classes start from them."""

    def __init__(self, classes: int) -> None:
        self.classes = check_classes(classes)
        self.apps: OrderedDict[str, HintClasses] = OrderedDict()
        self.seed: list[tuple[float, float]] = []

    def get(self, app: str) -> HintClasses:
        hc = self.apps.get(app)
        if hc is None:
            hc = self.apps[app] = HintClasses(self.classes)
            for h, x in self.seed[-PAIR_WINDOW:]:
                hc.pairs.append((h, x))
                hc.hints.append(h)
            if len(hc.hints) >= MIN_FIT_HINTS:
                hc.edges = quantile_edges(hc.hints, hc.classes)
                hc.refits = 1
            if len(self.apps) > MAX_HINTED_APPS:
                self.apps.popitem(last=False)
        else:
            self.apps.move_to_end(app)
        return hc

    def stats(self, limit: int) -> dict:
        """Per app, at most `limit` apps (those with the most hints seen): hints seen,
        fits, and each class's hint range."""
        shown = heapq.nlargest(limit, self.apps.items(), key=lambda kv: kv[1].seen)
        return {
            app: {
                "hints_seen": hc.seen,
                "fits": hc.refits,
                "classes": [
                    {"app": class_app(app, k), "hint_from": lo, "hint_below": hi}
                    for k, (lo, hi) in enumerate(hc.ranges())
                ] if hc.edges is not None else [],
            }
            for app, hc in shown
        }
