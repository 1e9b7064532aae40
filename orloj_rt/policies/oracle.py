"""`oracle`: the clairvoyant twin of orloj. An upper reference, not a policy to ship.

It knows every request's true solo time X_i (the simulator passes it as the `hint` of
`enqueue`; the class says `clairvoyant = True`). It follows orloj's decision with that
knowledge, where every probability is 0 or 1:

1. drop every request that cannot finish even alone and now: c(1) * X_i > deadline - now;
2. for each cap m on the solo time (the queue's solo-time quartiles, as orloj forms pools
   of its fastest apps or hint classes) and each batch size b, form a batch greedily in
   deadline order among the requests with X_i <= m: the most urgent request that could
   finish in a batch of b (c(b) * X_i <= its slack) anchors it, and the next requests
   join while the batch still finishes for every member: c(b) * max X <= the anchor's
   slack (the smallest of the members' slacks);
3. dispatch the candidate with the most finishes per unit of batch time,
   b / (c(b) * max X) (ties: the smaller cap, then the smaller batch).
"""

from __future__ import annotations

import numpy as np

from orloj_rt.policies.base import QueuedPolicy

CAP_LEVELS = (0.25, 0.5, 0.75, 1.0)


class ClairvoyantOraclePolicy(QueuedPolicy):
    name = "oracle"
    clairvoyant = True

    def enqueue(self, req_id, app, arrival, deadline, hint=None, priority=0) -> None:
        if hint is None or not float(hint) >= 0:
            raise ValueError(
                f"the oracle needs each request's true solo time as its hint, got {hint!r}"
            )
        super().enqueue(req_id, app, arrival, deadline, float(hint))

    def decide(self, now: float):
        """Called when a worker is idle: drop the exactly hopeless, dispatch the batch with
        the most finishes per unit of time."""
        entries = self._queue.head(len(self._requests))
        if not entries:
            return self.decision()
        ids = np.fromiter((rid for _, rid in entries), dtype=np.int64, count=len(entries))
        slack = np.fromiter((k for k, _ in entries), dtype=np.float64, count=len(entries)) - now
        solo = np.fromiter(
            (self._requests[rid].hint for _, rid in entries), dtype=np.float64, count=len(entries)
        )
        c = self._c
        hopeless = c[0] * solo > slack
        dropped = ids[hopeless].tolist()
        for rid in dropped:
            self._queue.remove(rid)
            self._forget(rid)
        keep = ~hopeless
        ids, slack, solo = ids[keep], slack[keep], solo[keep]
        n = len(ids)
        best_score = -1.0
        best: np.ndarray | None = None
        # the caps: the queue's solo-time quartiles, as orloj's pools of its fastest classes
        caps = np.unique(np.quantile(solo, CAP_LEVELS)) if n else solo
        for cap in caps:
            short = solo <= cap
            for b in range(1, min(int(short.sum()), self._max_batch) + 1):
                cb = c[b - 1]
                fits = np.flatnonzero(short & (cb * solo <= slack))
                if len(fits) == 0:
                    continue
                anchor = fits[0]
                later = fits[1:]
                later = later[cb * solo[later] <= slack[anchor]]
                if len(later) < b - 1:
                    continue
                members = np.concatenate(([anchor], later[: b - 1]))
                score = b / (cb * float(solo[members].max()))
                if score > best_score:
                    best_score = score
                    best = members
        if best is None:
            return self.decision(dropped=dropped)
        batch = ids[best].tolist()
        for rid in batch:
            self._queue.remove(rid)
            self._forget(rid)
        return self.decision(batch=batch, dropped=dropped)
