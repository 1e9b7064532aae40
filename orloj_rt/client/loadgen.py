"""Open-loop load: send requests at given times whatever the replies, collect every reply.

Used by `orloj-rt demo` and the benchmarks. Requests are encoded before the clock starts,
so the generator's own cost per request is a send and a receive. Every wait is bounded:
after the last send, replies are awaited for at most `drain_timeout_s`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from orloj_rt.client.codec import decode_header, encode_infer


@dataclass
class Outcome:
    """What happened to one request (latency in seconds, as the client saw it)."""

    status: str = "lost"  # "lost": no reply before the drain timeout
    latency_s: float = 0.0
    met_slo: bool = False
    error: str | None = None
    batch_size: int = 0


@dataclass
class LoadReport:
    outcomes: list[Outcome] = field(default_factory=list)
    duration_s: float = 0.0
    extra_replies: int = 0  # replies to ids already answered, or unknown ids (must be 0)

    @property
    def counts(self) -> Counter:
        return Counter(o.status for o in self.outcomes)

    @property
    def finish_rate(self) -> float:
        n = len(self.outcomes)
        return sum(o.status == "ok" and o.met_slo for o in self.outcomes) / n if n else 0.0

    def latency_quantile(self, q: float, status: str = "ok") -> float:
        lat = sorted(o.latency_s for o in self.outcomes if o.status == status)
        if not lat:
            return float("nan")
        return lat[min(len(lat) - 1, int(q * len(lat)))]


def run_open_loop(
    endpoint: str,
    requests: list[dict],
    send_times: list[float],
    drain_timeout_s: float = 10.0,
) -> LoadReport:
    """Sends `requests[i]` (keyword arguments of `encode_infer` without `req_id`) at
    `send_times[i]` seconds after the start, on one DEALER socket."""
    import zmq

    if len(requests) != len(send_times):
        raise ValueError("give one send time per request")
    frames = [[b"", *encode_infer(i, **r)] for i, r in enumerate(requests)]
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    n = len(requests)
    outcomes = [Outcome() for _ in range(n)]
    sent_at = [0.0] * n
    answered = 0
    extra = 0

    def receive(timeout_ms: float) -> None:
        nonlocal answered, extra
        if not sock.poll(max(0.0, timeout_ms), zmq.POLLIN):
            return
        while True:
            try:
                reply = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            now = time.perf_counter()
            header = decode_header(reply[1])
            rid = header.get("id")
            if not isinstance(rid, int) or not 0 <= rid < n or outcomes[rid].status != "lost":
                extra += 1
                continue
            o = outcomes[rid]
            o.status = header.get("status", "error")
            o.latency_s = now - sent_at[rid]
            o.met_slo = bool(header.get("met_slo"))
            o.error = header.get("error")
            o.batch_size = header.get("timing", {}).get("batch_size", 0)
            answered += 1

    try:
        start = time.perf_counter()
        for i in range(n):
            due = start + send_times[i]
            while True:
                left = due - time.perf_counter()
                if left <= 0:
                    break
                receive(left * 1000.0)
            sent_at[i] = time.perf_counter()
            sock.send_multipart(frames[i], copy=False)
            receive(0)
        deadline = time.perf_counter() + drain_timeout_s
        while answered < n:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            receive(min(left, 0.1) * 1000.0)
        duration = time.perf_counter() - start
        # anything that still arrives (a duplicate would) is counted, briefly
        receive(50)
    finally:
        sock.close(linger=0)
    return LoadReport(outcomes, duration, extra)
