"""The HTTP gateway's building blocks, timed side by side (the choices in docs/http.md).

    .venv/bin/python bench/gateway_parts.py            # table
    .venv/bin/python bench/gateway_parts.py --json     # one JSON object

1. A ZeroMQ DEALER round trip from an asyncio loop to a ROUTER in another process (ipc,
   abstract name, 100-byte message): with zmq.asyncio, and with a plain socket driven by
   `loop.add_reader` on its FD (what `http_gateway.FrontendLink` does).
2. An aiohttp server (hello world, POST of 77 bytes) in another process, round trips from
   a raw keep-alive socket and from http.client; with uvloop as well, where it is
   installed.

Runs alternate between the variants, so that a machine whose load drifts treats them
alike. Every loop is bounded in count; the helper processes are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import socket
import sys
import time

ROUNDS = 3


def _echo(endpoint: str) -> None:
    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(endpoint)
    while router.poll(10_000):
        frames = router.recv_multipart()
        if frames[-1] == b"quit":
            break
        router.send_multipart(frames)
    router.close(linger=0)


async def _zmq_asyncio(endpoint: str, n: int) -> list[float]:
    import zmq
    import zmq.asyncio

    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await sock.send_multipart([b"", b"x" * 100])
        await asyncio.wait_for(sock.recv_multipart(), 10)
        out.append(time.perf_counter() - t0)
    sock.close(linger=0)
    ctx.term()
    return out


async def _zmq_reader(endpoint: str, n: int) -> list[float]:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future] = []

    def drain() -> None:
        while sock.get(zmq.EVENTS) & zmq.POLLIN:
            frames = sock.recv_multipart(zmq.NOBLOCK)
            waiting.pop(0).set_result(frames)

    loop.add_reader(sock.FD, drain)
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fut = loop.create_future()
        waiting.append(fut)
        sock.send_multipart([b"", b"x" * 100], zmq.NOBLOCK)
        drain()
        await asyncio.wait_for(fut, 10)
        out.append(time.perf_counter() - t0)
    loop.remove_reader(sock.FD)
    sock.close(linger=0)
    ctx.term()
    return out


def _hello_server(port: int, use_uvloop: bool) -> None:
    from aiohttp import web

    async def handle(request):
        body = await request.read()
        return web.Response(body=b'{"a":1}' + body[:16], content_type="application/json")

    app = web.Application()
    app.add_routes([web.post("/x", handle)])
    if use_uvloop:
        import uvloop

        uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


BODY = json.dumps({"inputs": []}).encode() + b"x" * 64


def _raw_client(port: int, n: int) -> list[float]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = (b"POST /x HTTP/1.1\r\nHost: b\r\nContent-Length: %d\r\n\r\n" % len(BODY)) + BODY
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(req)
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, rest = buf.split(b"\r\n\r\n", 1)
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))  # fmt: skip
            while len(rest) < length:
                rest += s.recv(65536)
            out.append(time.perf_counter() - t0)
    finally:
        s.close()
    return out


def _http_client(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.request("POST", "/x", body=BODY)
            conn.getresponse().read()
            out.append(time.perf_counter() - t0)
    finally:
        conn.close()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"the hello server did not listen on {port} within {timeout_s} s")


def p50_us(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--n", type=int, default=1500,
                    help="round trips per run (default: %(default)s)")
    args = ap.parse_args()
    ctx = multiprocessing.get_context("spawn")
    warm = args.n // 10
    res: dict[str, list[float]] = {}

    endpoint = f"ipc://@orloj_rt.bench.{os.getpid()}"
    echo = ctx.Process(target=_echo, args=(endpoint,))
    echo.start()
    try:
        for _ in range(ROUNDS):
            for name, fn in (("zmq.asyncio", _zmq_asyncio), ("plain socket + add_reader",
                                                              _zmq_reader)):  # fmt: skip
                res.setdefault(f"zeromq round trip, {name}", []).extend(
                    asyncio.run(fn(endpoint, args.n))[warm:])
    finally:
        import zmq

        s = zmq.Context.instance().socket(zmq.DEALER)
        s.connect(endpoint)
        s.send_multipart([b"", b"quit"])
        echo.join(5)
        if echo.is_alive():
            echo.terminate()
        s.close(linger=0)

    try:
        import uvloop  # noqa: F401

        loops = [False, True]
    except ImportError:
        loops = [False]
    for use_uvloop in loops:
        port = _free_port()
        server = ctx.Process(target=_hello_server, args=(port, use_uvloop), daemon=True)
        server.start()
        try:
            _wait_listening(port)
            loop_name = "uvloop" if use_uvloop else "asyncio"
            for _ in range(ROUNDS):
                for cname, fn in (("raw socket", _raw_client), ("http.client", _http_client)):
                    res.setdefault(f"aiohttp ({loop_name}) hello, {cname} client", []).extend(
                        fn(port, args.n)[warm:])
        finally:
            server.terminate()
            server.join(5)

    out = {k: p50_us(v) for k, v in res.items()}
    if args.json:
        print(json.dumps({"p50_us": out, "cpus": os.cpu_count()}))
        return 0
    print(f"gateway parts ({os.cpu_count()} CPUs; {ROUNDS} alternating runs of {args.n})")
    for k, v in out.items():
        print(f"{k:<55} p50 {v:>7.0f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
