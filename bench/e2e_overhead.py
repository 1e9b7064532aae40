"""End-to-end overhead of the runtime on the CPU: added latency and no-op throughput.

    .venv/bin/python bench/e2e_overhead.py            # table
    .venv/bin/python bench/e2e_overhead.py --json     # one JSON object

1. Added latency, one request at a time, tiny model (`tiny_mlp`: 16 -> 32 -> 4 floats):
   the client-observed latency through a real server (Python client -> ZeroMQ -> frontend
   -> ring -> scheduler -> worker -> frontend -> client) minus the latency of calling the
   same model directly in this process (numpy in, torch forward, numpy out, one torch
   thread in both cases). Targets: p50 <= 300 us, p99 <= 1 ms.
2. Throughput with batching, no-op model (`noop`, returns its 4 floats): a window of
   requests kept in flight from one DEALER socket for a fixed time; ok replies per second.
   Target: >= 10,000 req/s.

Side by side in the same run: the direct call; the server path; the *architecture floor*,
the same chain of processes and sockets (client -ZeroMQ-> process A -socket pair-> B ->
C -> A -ZeroMQ-> client) forwarding bytes with no work at all, which bounds from below
what any implementation of this process layout can reach on the machine; and the
throughput at a window of 1 (no batching possible) next to the large window. Every load
is bounded in count and time. The server's processes and this client share the machine:
on a 2-core machine the client's own cost is part of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orloj_rt.client import Client  # noqa: E402
from orloj_rt.client.codec import encode_infer  # noqa: E402
from orloj_rt.runtime.launcher import ServerProcess  # noqa: E402

TARGETS = {
    "added_latency_p50_us": ("<=", 300.0),
    "added_latency_p99_us": ("<=", 1000.0),
    "noop_throughput_rps": (">=", 10_000.0),
}


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def direct_latency(n: int, idle_s: float = 0.0) -> list[float]:
    """Calling tiny_mlp in this process, the way a user would without a server; with
    `idle_s`, after sleeping that long before each call, as each server process idles
    between sequential requests (on a VM a call after an idle period can be several times
    slower than in a tight loop: caches and the vCPU go cold)."""
    import torch

    from orloj_rt.models.builtin import BUILTIN_MODELS
    from orloj_rt.models.loading import build_module

    torch.set_num_threads(1)
    module = build_module(BUILTIN_MODELS["tiny_mlp"])
    x = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    out = []
    for i in range(n + n // 10):
        if idle_s:
            time.sleep(idle_s)
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = module(torch.from_numpy(x[None])).numpy()
        t1 = time.perf_counter()
        if i >= n // 10:  # the first tenth warms up
            out.append(t1 - t0)
    assert y.shape == (1, 4)
    return out


def server_latency(endpoint: str, n: int) -> tuple[list[float], list[dict]]:
    x = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    lat, timings = [], []
    with Client(endpoint, timeout_s=10) as c:
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            r = c.infer("tiny_mlp", {"x": x})
            t1 = time.perf_counter()
            if not r.ok:
                raise RuntimeError(f"tiny_mlp request failed: {r.status} {r.error}")
            if i >= n // 10:
                lat.append(t1 - t0)
                timings.append(r.timing)
    return lat, timings


def _floor_frontend(endpoint: str, to_b, from_c) -> None:
    import zmq

    from orloj_rt.runtime.channel import Channel

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    b, c = Channel(to_b), Channel(from_c)
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    poller.register(c.fileno(), zmq.POLLIN)
    envelope: list = []
    while True:
        for sock, _ in poller.poll(10_000):
            if sock is router:
                frames = router.recv_multipart()
                if frames[-1] == b"quit":
                    router.close(linger=0)
                    return
                envelope = frames[:2]
                b.send([frames[2]])
            else:
                for parts in c.recv():
                    router.send_multipart([*envelope, bytes(parts[0])])


def _floor_forwarder(inbound, outbound) -> None:
    import select

    from orloj_rt.runtime.channel import Channel, ChannelClosed

    src, dst = Channel(inbound), Channel(outbound)
    poller = select.poll()
    poller.register(src.fileno(), select.POLLIN)
    while poller.poll(10_000):
        try:
            for parts in src.recv():
                dst.send([bytes(parts[0])])
        except ChannelClosed:
            return


def architecture_floor(n: int) -> list[float]:
    """Round trips through three processes that only forward bytes (see the docstring)."""
    import multiprocessing

    import zmq

    from orloj_rt.runtime.channel import Channel

    ctx = multiprocessing.get_context("spawn")
    a_b, b_c, c_a = Channel.pair(), Channel.pair(), Channel.pair()
    with socket.socket() as probe:  # a free port, as the server's tcp://127.0.0.1:* gets
        probe.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{probe.getsockname()[1]}"
    procs = [
        ctx.Process(target=_floor_frontend, args=(endpoint, a_b[0], c_a[1])),
        ctx.Process(target=_floor_forwarder, args=(a_b[1], b_c[0])),
        ctx.Process(target=_floor_forwarder, args=(b_c[1], c_a[0])),
    ]
    for p in procs:
        p.start()
    for pair in (a_b, b_c, c_a):
        for s in pair:
            s.close()
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    payload = b"x" * 100
    out = []
    try:
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            sock.send_multipart([b"", payload])
            if not sock.poll(10_000, zmq.POLLIN):
                raise TimeoutError("the floor chain did not answer within 10 s")
            sock.recv_multipart()
            if i >= n // 10:
                out.append(time.perf_counter() - t0)
        sock.send_multipart([b"", b"quit"])
    finally:
        sock.close(linger=0)
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(5)
    return out


def throughput(endpoint: str, window: int, duration_s: float) -> dict:
    """Keeps `window` noop requests in flight for `duration_s`; counts replies by status."""
    import msgpack
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(endpoint)
    x = np.zeros(4, np.float32)
    header, data = encode_infer(0, "noop", {"x": x})
    base = msgpack.unpackb(header)
    # one pre-packed header per id slot: the generator's cost is a send and a receive
    pool = []
    for k in range(window):
        base["id"] = k
        pool.append([b"", msgpack.packb(base), bytes(data)])
    counts: dict[str, int] = {}
    batch_sizes = []
    in_flight = 0
    try:
        for k in range(window):
            sock.send_multipart(pool[k], copy=False)
        in_flight = window
        start = time.perf_counter()
        end = start + duration_s
        while True:
            now = time.perf_counter()
            if now >= end:
                break
            if not sock.poll(min(100.0, (end - now) * 1000), zmq.POLLIN):
                continue
            while True:
                try:
                    reply = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                h = msgpack.unpackb(reply[1].buffer)
                status = h["status"]
                counts[status] = counts.get(status, 0) + 1
                if status == "ok" and len(batch_sizes) < 100_000:
                    batch_sizes.append(h["timing"]["batch_size"])
                sock.send_multipart(pool[h["id"]], copy=False)
        elapsed = time.perf_counter() - start
        # drain what is in flight (bounded) so the server ends idle
        deadline = time.perf_counter() + 10
        while in_flight and time.perf_counter() < deadline:
            if sock.poll(100, zmq.POLLIN):
                sock.recv_multipart()
                in_flight -= 1
    finally:
        sock.close(linger=0)
    ok = counts.get("ok", 0)
    return {
        "window": window,
        "seconds": elapsed,
        "ok_per_s": ok / elapsed,
        "statuses": counts,
        "mean_batch_size": statistics.fmean(batch_sizes) if batch_sizes else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--requests", type=int, default=3000,
                    help="sequential requests for the latency part (default: %(default)s)")
    ap.add_argument("--duration", type=float, default=5.0,
                    help="seconds of the throughput part (default: %(default)s)")
    ap.add_argument("--window", type=int, default=512,
                    help="requests in flight for the throughput part (default: %(default)s)")
    args = ap.parse_args()

    direct = direct_latency(args.requests)
    direct_idle = direct_latency(args.requests // 2, idle_s=0.0005)
    floor = architecture_floor(args.requests)
    with tempfile.TemporaryDirectory() as repo:
        for name in ("tiny_mlp", "noop"):
            (Path(repo) / f"{name}.toml").write_text(f'builtin = "{name}"\n')
        server_args = ["--cpu-workers", "1", "--worker-threads", "1", "--models", repo,
                       "--log-level", "WARNING"]  # fmt: skip
        with open(os.devnull, "w") as quiet, ServerProcess(server_args, stderr=quiet) as srv:
            served, timings = server_latency(srv.endpoint, args.requests)
            one = throughput(srv.endpoint, 1, min(2.0, args.duration))
            many = throughput(srv.endpoint, args.window, args.duration)
        if srv.returncode != 0:
            print(f"the server exited with code {srv.returncode}", file=sys.stderr)
            return 1

    d50, d99 = quantile(direct, 0.5) * 1e6, quantile(direct, 0.99) * 1e6
    s50, s99 = quantile(served, 0.5) * 1e6, quantile(served, 0.99) * 1e6
    result = {
        "added_latency_p50_us": s50 - d50,
        "added_latency_p99_us": s99 - d99,
        "noop_throughput_rps": many["ok_per_s"],
        "direct_after_idle_p50_us": quantile(direct_idle, 0.5) * 1e6,
        "direct_after_idle_p99_us": quantile(direct_idle, 0.99) * 1e6,
        "floor_p50_us": quantile(floor, 0.5) * 1e6,
        "floor_p99_us": quantile(floor, 0.99) * 1e6,
        "direct_p50_us": d50,
        "direct_p99_us": d99,
        "served_p50_us": s50,
        "served_p99_us": s99,
        "server_side_total_p50_us": quantile([t["total_us"] for t in timings], 0.5),
        "server_side_queue_p50_us": quantile([t["queue_us"] for t in timings], 0.5),
        "server_side_exec_p50_us": quantile([t["exec_us"] for t in timings], 0.5),
        "noop_throughput_window1_rps": one["ok_per_s"],
        "noop_throughput_detail": many,
        "requests": args.requests,
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"orloj-rt end-to-end overhead ({os.cpu_count()} CPUs; {args.requests} sequential "
          f"requests; throughput: {args.duration:g} s at a window of {args.window})")
    print(f"{'measure':<50} {'value':>12}  {'target':>12}")

    def row(name: str, value: float, unit: str, key: str | None = None) -> None:
        target = ""
        if key in TARGETS:
            op, bound = TARGETS[key]
            ok = value <= bound if op == "<=" else value >= bound
            target = f"{op} {bound:g} {'ok' if ok else 'MISSED'}"
        print(f"{name:<50} {value:>9.0f} {unit:<3} {target:>14}")

    row("tiny_mlp called directly, p50", d50, "us")
    row("tiny_mlp called directly, p99", d99, "us")
    row("tiny_mlp directly, 0.5 ms idle before each, p50", result["direct_after_idle_p50_us"],
        "us")
    row("tiny_mlp directly, 0.5 ms idle before each, p99", result["direct_after_idle_p99_us"],
        "us")
    row("floor: bytes through the same process chain, p50", result["floor_p50_us"], "us")
    row("floor: bytes through the same process chain, p99", result["floor_p99_us"], "us")
    row("tiny_mlp through the server, p50", s50, "us")
    row("tiny_mlp through the server, p99", s99, "us")
    row("  added latency, p50", result["added_latency_p50_us"], "us", "added_latency_p50_us")
    row("  added latency, p99", result["added_latency_p99_us"], "us", "added_latency_p99_us")
    row("  server side: queue (frontend -> worker), p50", result["server_side_queue_p50_us"], "us")
    row("  server side: exec (worker), p50", result["server_side_exec_p50_us"], "us")
    row("  server side: total (in -> out), p50", result["server_side_total_p50_us"], "us")
    row("noop throughput, window 1 (no batching)", one["ok_per_s"], "/s")
    row(f"noop throughput, window {args.window} (batching)", many["ok_per_s"], "/s",
        "noop_throughput_rps")
    print(f"  mean batch size {many['mean_batch_size']:.1f}; statuses {many['statuses']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
