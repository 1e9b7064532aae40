"""The frontend's reply outbox: replies that ZeroMQ cannot route now wait, not vanish.

A ROUTER normally drops a reply whose peer is gone, and a peer is gone for a moment
whenever its connection breaks: ZeroMQ closes a connection that sends a frame above
`ZMQ_MAXMSGSIZE`, a network blip resets it. The client's socket reconnects by itself,
but on a new connection ZeroMQ gives it a new random identity, so the replies to the
requests it still has in flight went nowhere. That broke "exactly one reply per request".

Here the ROUTER is `ZMQ_ROUTER_MANDATORY` (a send to an unknown peer raises instead of
vanishing) and `ZMQ_ROUTER_HANDOVER` (a reconnecting peer with the same routing id takes
its identity over). A reply that cannot go out now is parked under its peer's identity,
in order, and retried when that peer sends again and every few milliseconds, for
`grace_s`. A client that sets its own routing id (`ZMQ_ROUTING_ID`, as orloj_rt's clients
and the HTTP gateway do) therefore gets every reply across a reconnect; one that does not
set it comes back as a new peer, and its parked replies expire after `grace_s`. The same
path holds replies for a client that stops reading until its queue (`SNDHWM`) drains.

    send(frames) --routable--> ZeroMQ
        |  EHOSTUNREACH (peer gone) / EAGAIN (peer's queue full)
        v
    parked[identity] = [(expires_at, frames), ...]  --retry(now) / peer_seen(id)--> ZeroMQ
        |  expires_at passed, or more than max_parked parked in all
        v
    dropped (counted in `expired`, logged)
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque

log = logging.getLogger("orloj_rt.frontend")

DEFAULT_GRACE_S = 30.0  # how long a reply waits for its client to come back
DEFAULT_MAX_PARKED = 100_000  # replies parked at once, all peers together
RETRY_S = 0.02  # how often parked replies are retried while any wait


class ReplyOutbox:
    """Sends replies on a ROUTER socket, parking those it cannot route yet."""

    def __init__(self, router, zmq, grace_s: float = DEFAULT_GRACE_S,
                 max_parked: int = DEFAULT_MAX_PARKED):  # fmt: skip
        self._router = router
        self._zmq = zmq
        self._unreachable = zmq.EHOSTUNREACH
        self.grace_s = grace_s
        self.max_parked = max_parked
        self._parked: OrderedDict[bytes, deque] = OrderedDict()  # oldest peer first
        self.n_parked = 0
        self.expired = 0  # replies given up on: their client never came back in time
        self.delivered_late = 0  # replies that went out after waiting here
        self._next_retry = 0.0

    @staticmethod
    def configure(router, zmq) -> None:
        """Called on the ROUTER before it binds: raise on unroutable, let peers reconnect."""
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.ROUTER_HANDOVER, 1)

    def send(self, frames: list) -> None:
        """Sends `frames` ([identity, ..., b"", header, data...]) now, or parks them."""
        peer = frames[0]
        # behind what already waits for this peer, to keep the order
        if peer in self._parked or not self._try(frames):
            self._park(peer, frames)

    def peer_seen(self, peer: bytes) -> None:
        """Called when `peer` sends a message: it is connected, so its replies can go."""
        if peer in self._parked:
            self._flush(peer)

    def retry(self, now: float | None = None) -> None:
        """Retries every parked reply, and drops those past their grace period."""
        now = time.monotonic() if now is None else now
        if not self._parked or now < self._next_retry:
            return
        self._next_retry = now + RETRY_S
        lost = 0
        for peer in list(self._parked):
            self._flush(peer)
            q = self._parked.get(peer)
            while q and q[0][0] <= now:
                q.popleft()
                lost += 1
            if q is not None and not q:
                del self._parked[peer]
        self._lost(lost)

    def poll_timeout_ms(self, default_ms: float) -> float:
        """How long the loop may sleep: short while replies wait."""
        return min(default_ms, RETRY_S * 1000) if self._parked else default_ms

    def drop_all(self) -> int:
        """At shutdown: gives up on every parked reply; returns how many."""
        n = self.n_parked
        if n:
            self._lost(n)
        self._parked.clear()
        self.n_parked = 0
        return n

    # ------------------------------------------------------------------ internals
    def _try(self, frames: list) -> bool:
        zmq = self._zmq
        try:
            self._router.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False  # the peer's queue is full: it is not reading
        except zmq.ZMQError as exc:
            if exc.errno == self._unreachable:
                return False  # not connected now (it may be reconnecting)
            raise
        return True

    def _park(self, peer: bytes, frames: list) -> None:
        if self.n_parked >= self.max_parked:
            oldest = next(iter(self._parked))
            q = self._parked[oldest]
            q.popleft()
            if not q:
                del self._parked[oldest]
            self._lost(1)
        q = self._parked.get(peer)
        if q is None:
            q = self._parked[peer] = deque()
        q.append((time.monotonic() + self.grace_s, frames))
        self.n_parked += 1

    def _flush(self, peer: bytes) -> None:
        q = self._parked[peer]
        while q:
            if not self._try(q[0][1]):
                return
            q.popleft()
            self.n_parked -= 1
            self.delivered_late += 1
        del self._parked[peer]

    def _lost(self, n: int) -> None:
        if n <= 0:
            return
        self.expired += n
        self.n_parked = max(0, self.n_parked - n)
        log.info("%d repl%s dropped: the client did not come back within %g s",
                 n, "y" if n == 1 else "ies", self.grace_s)  # fmt: skip
