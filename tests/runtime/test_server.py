"""One live server (real processes, sockets, shared memory; CPU) and the protocol's paths:
every status, bad inputs, concurrent DEALER clients, a REQ client, health under load."""

from __future__ import annotations

import math
import threading
import time

import msgpack
import numpy as np
import pytest

from orloj_rt.client import Client
from orloj_rt.client.codec import encode_infer
from orloj_rt.models.early_exit import tokens_for_depth

from .helpers import RawDealer, header, process_alive

SEED = 20240611


@pytest.fixture(scope="module")
def rng():
    print(f"random seed {SEED}")
    return np.random.default_rng(SEED)


def tokens(rng, depth: int = 2, length: int = 8) -> np.ndarray:
    return tokens_for_depth(depth, length, rng)


def good_request(dealer: RawDealer, rng, req_id: int = 99) -> None:
    """The server still serves after whatever came before."""
    dealer.send(encode_infer(req_id, "noop", {"x": np.arange(4, dtype=np.float32)}))
    h, data = dealer.recv()
    assert h["id"] == req_id and h["status"] == "ok", h
    assert np.frombuffer(data[0], np.float32).tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------------- control ops
def test_health_models_stats(server):
    with Client(server.endpoint, timeout_s=10) as c:
        h = c.health()
        assert h["status"] == "ok" and h["workers"] == 1 and h["workers_ready"] == 1
        pids = h["pids"]
        assert pids["supervisor"] == server.pid
        for pid in [pids["frontend"], pids["scheduler"], *pids["workers"]]:
            assert process_alive(pid)
        models = {m["name"]: m for m in c.models()}
        assert set(models) == {"early_exit", "noop", "sleep", "flaky", "typed"}
        ee = models["early_exit"]
        assert ee["inputs"] == [{"name": "tokens", "dtype": "int64", "shape": [-1],
                                 "max_shape": [32]}]  # fmt: skip
        assert ee["max_batch_size"] == 16 and ee["default_slo_ms"] == 50.0
        stats = c.stats()
        for key in ("received", "ok", "dropped", "rejected", "error", "finish_rate"):
            assert key in stats and key in stats["models"]["noop"]


# ---------------------------------------------------------------------- statuses
def test_ok_early_exit(server, rng):
    with Client(server.endpoint, timeout_s=30) as c:
        for depth in (1, 5, 12):
            r = c.infer("early_exit", {"tokens": tokens(rng, depth, 16)}, slo_ms=5000, app="t")
            assert r.ok, r
            assert r.outputs["logits"].shape == (10,) and r.outputs["logits"].dtype == np.float32
            assert int(r.outputs["exit_layer"]) == depth
            assert r.met_slo is True
            assert set(r.timing) == {"queue_us", "exec_us", "total_us", "batch_size"}
            assert r.timing["total_us"] >= r.timing["exec_us"] > 0


def test_dropped(server, rng):
    with Client(server.endpoint, timeout_s=30) as c:
        r = c.infer("early_exit", {"tokens": tokens(rng)}, slo_ms=0.001)
        assert r.status == "dropped", r
        assert "could no longer finish" in r.error and not r.outputs


def test_rejected_when_ring_full(server):
    """sleep has 3 ring slots and batches of one: a 4th concurrent request is rejected at
    once, while the first three still run."""
    with RawDealer(server.endpoint) as d:
        for i in range(3):
            d.send(encode_infer(i, "sleep", {"ms": np.array(400, np.float32)}))
        time.sleep(0.1)
        t0 = time.monotonic()
        d.send(encode_infer(3, "sleep", {"ms": np.array(1, np.float32)}))
        replies = {}
        while 3 not in replies:
            h, _ = d.recv()
            replies[h["id"]] = h
        assert time.monotonic() - t0 < 0.3, "a full ring must be answered at once"
        assert replies[3]["status"] == "rejected", replies
        assert "ring is full" in replies[3]["error"] and "ring_slots" in replies[3]["error"]
        while len(replies) < 4:
            h, _ = d.recv()
            replies[h["id"]] = h
        assert [replies[i]["status"] for i in range(3)] == ["ok"] * 3
        assert d.quiet()


def test_error_when_the_model_fails(server):
    with Client(server.endpoint, timeout_s=30) as c:
        r = c.infer("flaky", {"x": np.array([666, 1], np.float32)})
        assert r.status == "error"
        assert "flaky" in r.error and "magic input 666" in r.error
        r = c.infer("flaky", {"x": np.array([1, 2], np.float32)})
        assert r.ok and r.outputs["y"].tolist() == [2, 4]


def test_every_wire_dtype_and_a_variable_dim(server):
    import torch

    b = torch.tensor([1.5, -2.0], dtype=torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    inputs = {
        "h": np.array([0.5, 0.25], np.float16),
        "b": b,
        "m": np.array([True, False, True]),
        "u": np.array([1, 2, 3, 4, 5], np.uint8),
        "i8": np.array(-3, np.int8),
        "i32": np.array([[1, 2], [3, 4]], np.int32),
    }
    expected = 0.75 - 0.5 + 2 + 15 - 3 + 10
    with RawDealer(server.endpoint) as d:
        frames = encode_infer(5, "typed", inputs, dtypes={"b": "bfloat16"})
        d.send(frames)
        h, data = d.recv()
        assert h["status"] == "ok", h
        outs = {o["name"]: (o, f) for o, f in zip(h["outputs"], data, strict=True)}
        assert outs["total"][0] == {"name": "total", "dtype": "float32", "shape": []}
        assert math.isclose(np.frombuffer(outs["total"][1], np.float32)[0], expected)
        assert outs["b_copy"][0]["dtype"] == "bfloat16"
        assert outs["b_copy"][1] == b.tobytes()


# ---------------------------------------------------------------------- bad inputs
def _frames_for(case: str) -> tuple[list, bool]:
    tok = np.ones(8, np.int64)
    meta = [{"name": "tokens", "dtype": "int64", "shape": [8]}]
    ok_hdr = dict(model="early_exit", inputs=meta)
    cases = {
        "unknown model": ([header(model="nope", inputs=meta), tok.tobytes()], True),
        "wrong dtype": ([header(model="early_exit", inputs=[
            {"name": "tokens", "dtype": "float32", "shape": [8]}]),
            np.ones(8, np.float32).tobytes()], True),
        "unknown dtype": ([header(model="early_exit", inputs=[
            {"name": "tokens", "dtype": "complex64", "shape": [8]}]), tok.tobytes()], True),
        "wrong ndim": ([header(model="early_exit", inputs=[
            {"name": "tokens", "dtype": "int64", "shape": [2, 4]}]), tok.tobytes()], True),
        "wrong fixed shape": ([header(model="noop", inputs=[
            {"name": "x", "dtype": "float32", "shape": [5]}]),
            np.ones(5, np.float32).tobytes()], True),
        "byte size": ([header(**ok_hdr), tok.tobytes()[:-1]], True),
        "missing frame": ([header(**ok_hdr)], True),
        "extra frame": ([header(**ok_hdr), tok.tobytes(), b"extra"], True),
        "missing input": ([header(model="early_exit", inputs=[])], True),
        "unknown input": ([header(model="early_exit", inputs=[
            {"name": "words", "dtype": "int64", "shape": [8]}]), tok.tobytes()], True),
        "garbage header": ([b"\xc1\xff\x00garbage", tok.tobytes()], True),
        "header not a map": ([msgpack.packb([1, 2, 3])], True),
        "negative slo": ([header(slo_ms=-5, **ok_hdr), tok.tobytes()], True),
        "nan slo": ([header(slo_ms=float("nan"), **ok_hdr), tok.tobytes()], True),
        "zero slo": ([header(slo_ms=0, **ok_hdr), tok.tobytes()], True),
        "string slo": ([header(slo_ms="fast", **ok_hdr), tok.tobytes()], True),
        "shape above max": ([header(model="early_exit", inputs=[
            {"name": "tokens", "dtype": "int64", "shape": [100]}]),
            np.ones(100, np.int64).tobytes()], True),
        "huge shape": ([header(model="early_exit", inputs=[
            {"name": "tokens", "dtype": "int64", "shape": [10**15]}]), tok.tobytes()], True),
        "wrong version": ([header(v=2, **ok_hdr), tok.tobytes()], True),
        "no version": ([msgpack.packb({"id": 1, "model": "early_exit"}), tok.tobytes()], True),
        "no id": ([msgpack.packb({"v": 1, "model": "early_exit"}), tok.tobytes()], True),
        "unknown op": ([header(op="reboot")], True),
        "app not a string": ([header(app=7, **ok_hdr), tok.tobytes()], True),
        "no delimiter": ([header(**ok_hdr), tok.tobytes()], False),
        "health with data": ([header(op="health"), b"x"], True),
    }
    return cases[case]


BAD_INPUTS = {
    "unknown model": "unknown model 'nope'",
    "wrong dtype": "expects 'int64'",
    "unknown dtype": "unknown dtype",
    "wrong ndim": "expects 1 dim",
    "wrong fixed shape": "expects [4]",
    "byte size": "needs 64",
    "missing frame": "1 input(s) but 0 data frame(s)",
    "extra frame": "1 input(s) but 2 data frame(s)",
    "missing input": "missing input(s) ['tokens']",
    "unknown input": "unknown input 'words'",
    "garbage header": "not valid msgpack",
    "header not a map": "must be a msgpack map",
    "negative slo": "slo_ms",
    "nan slo": "slo_ms",
    "zero slo": "slo_ms",
    "string slo": "slo_ms",
    "shape above max": "outside [1, 32]",
    "huge shape": "outside [1, 32]",
    "wrong version": "unsupported protocol version 2",
    "no version": "no protocol version",
    "no id": "no \"id\"",
    "unknown op": "unknown op 'reboot'",
    "app not a string": "\"app\" must be",
    "no delimiter": "empty delimiter",
    "health with data": "takes no data frames",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gets_error_and_the_server_serves_on(server, rng, case):
    frames, delimiter = _frames_for(case)
    with RawDealer(server.endpoint) as d:
        d.send(frames, delimiter=delimiter)
        h, data = d.recv()
        assert h["status"] == "error", h
        assert BAD_INPUTS[case] in h["error"], h["error"]
        assert not data and "outputs" not in h
        if case not in ("garbage header", "header not a map", "no id", "no delimiter"):
            assert h["id"] == 1
        else:
            assert h["id"] is None
        assert d.quiet(0.05)
        good_request(d, rng)


# ---------------------------------------------------------------------- concurrency
def test_exactly_one_reply_per_request_under_a_burst_of_dealers(server, rng):
    n_clients, per_client = 8, 60
    toks = [tokens(rng, int(rng.integers(1, 13)), 8) for _ in range(per_client)]
    results: dict[int, dict] = {}
    failures: list[str] = []

    def client(k: int) -> None:
        with RawDealer(server.endpoint) as d:
            for i in range(per_client):
                rid = k * 1000 + i
                if i % 2:
                    frames = encode_infer(rid, "early_exit", {"tokens": toks[i]}, slo_ms=2000)
                else:
                    frames = encode_infer(rid, "noop", {"x": np.full(4, i, np.float32)})
                d.send(frames)
            seen: dict[int, int] = {}
            deadline = time.monotonic() + 60
            while len(seen) < per_client and time.monotonic() < deadline:
                h, data = d.recv()
                seen[h["id"]] = seen.get(h["id"], 0) + 1
                results[h["id"]] = h
                even_ok = h["status"] == "ok" and h["id"] % 2 == 0
                if even_ok and np.frombuffer(data[0], np.float32)[0] != h["id"] % 1000:
                    failures.append(f"request {h['id']} got another request's output")
            if not d.quiet(0.3):
                failures.append(f"client {k}: a reply beyond one per request")
            if sorted(seen) != [k * 1000 + i for i in range(per_client)]:
                failures.append(f"client {k}: missing replies")
            if any(v != 1 for v in seen.values()):
                failures.append(f"client {k}: duplicate replies")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "a client did not finish in time"
    assert not failures, failures
    assert len(results) == n_clients * per_client
    statuses = {h["status"] for h in results.values()}
    assert statuses <= {"ok", "dropped", "rejected"}, statuses
    assert sum(h["status"] == "ok" for h in results.values()) > len(results) // 2


def test_req_client(server, rng):
    import zmq

    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    try:
        for i in range(3):
            sock.send_multipart(encode_infer(i, "early_exit", {"tokens": tokens(rng, 3)}))
            assert sock.poll(30000, zmq.POLLIN)
            frames = sock.recv_multipart()
            h = msgpack.unpackb(frames[0], raw=False)
            assert h["id"] == i and h["status"] == "ok"
            assert len(frames) == 3  # header, logits, exit_layer
        sock.send_multipart([msgpack.packb({"v": 1, "id": "h", "op": "health"})])
        assert sock.poll(10000, zmq.POLLIN)
        assert msgpack.unpackb(sock.recv_multipart()[0], raw=False)["result"]["status"] == "ok"
    finally:
        sock.close(linger=0)


def test_health_answers_at_once_under_load(server):
    """A backlog of slow work (the sleep model's ring full, 200 noop requests queued)
    does not delay health: the frontend answers it from its own state."""
    with RawDealer(server.endpoint) as load, Client(server.endpoint, timeout_s=10) as c:
        for i in range(3):
            load.send(encode_infer(i, "sleep", {"ms": np.array(300, np.float32)}))
        for i in range(3, 203):
            load.send(encode_infer(i, "noop", {"x": np.zeros(4, np.float32)}))
        t0 = time.monotonic()
        h = c.health()
        elapsed = time.monotonic() - t0
        assert h["status"] == "ok"
        assert elapsed < 0.5, f"health took {elapsed:.3f} s under load"
        got = set()
        while len(got) < 203:
            r, _ = load.recv()
            got.add(r["id"])
        assert load.quiet()


def test_stats_count_what_happened(server, rng):
    with Client(server.endpoint, timeout_s=10) as c:
        before = c.stats()
        c.infer("noop", {"x": np.zeros(4, np.float32)})
        c.infer("nope", {"x": np.zeros(4, np.float32)})
        after = c.stats()
    assert after["received"] == before["received"] + 2
    assert after["ok"] == before["ok"] + 1
    assert after["error"] == before["error"] + 1
    noop = after["models"]["noop"]
    assert noop["ok"] == before["models"]["noop"]["ok"] + 1
    assert 0.0 <= after["finish_rate"] <= 1.0
    assert noop["in_flight"] == 0 and noop["ring_slots"] == 4096


def test_the_scheduler_learns_per_app_and_reports_it(server, rng):
    """early_exit reports its layers run: every answered request teaches its app a solo
    time; after MIN_APP_SAMPLES the learned distribution replaces the warm-up prior."""
    from orloj_rt.runtime.scheduler import MIN_APP_SAMPLES

    with Client(server.endpoint, timeout_s=30) as c:
        for i in range(MIN_APP_SAMPLES + 4):
            r = c.infer("early_exit", {"tokens": tokens(rng, 1 + i % 12, 8)}, slo_ms=5000,
                        app="learner")  # fmt: skip
            assert r.ok
        deadline = time.monotonic() + 5  # SchedulerStats arrive once a second
        while True:
            sched = c.stats()["models"]["early_exit"]["scheduler"]
            app = sched.get("apps", {}).get("learner")
            if app and app["samples"] >= MIN_APP_SAMPLES or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert app is not None and app["samples"] >= MIN_APP_SAMPLES, sched
    assert app["source"] == "learned" and app["mean_solo_ms"] > 0
    assert sched["batches"] >= MIN_APP_SAMPLES and sched["inflation_max"] >= 1.0
