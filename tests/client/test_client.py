"""The Python client, synchronous and asyncio, against a real server with the built-in
models (early_exit, resnet_static) on the CPU."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from orloj_rt.client import AsyncClient, Client, InferResult, ServerError
from orloj_rt.client.codec import decode_reply, encode_infer, wire_dtype
from orloj_rt.models.early_exit import tokens_for_depth
from orloj_rt.runtime.launcher import ServerProcess

SEED = 11


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    log = tmp_path_factory.mktemp("client") / "server.log"
    with open(log, "w") as f, ServerProcess(["--cpu-workers", "1"], stderr=f) as server:
        yield server.endpoint
    assert server.returncode == 0, log.read_text()[-3000:]


def test_sync_infer_health_models_stats(endpoint):
    rng = np.random.default_rng(SEED)
    with Client(endpoint, timeout_s=30) as c:
        assert c.health()["status"] == "ok"
        assert {m["name"] for m in c.models()} == {"early_exit", "resnet_static"}
        r = c.infer("early_exit", {"tokens": tokens_for_depth(4, 10, rng)}, slo_ms=1000,
                    app="search")  # fmt: skip
        assert isinstance(r, InferResult) and r.ok and r.raise_for_status() is r
        assert int(r.outputs["exit_layer"]) == 4 and r.met_slo
        img = rng.standard_normal((3, 32, 32), dtype=np.float32)
        r = c.infer("resnet_static", {"image": img})
        assert r.ok and r.outputs["logits"].shape == (10,)
        assert c.stats()["models"]["early_exit"]["ok"] >= 1


def test_non_ok_statuses_are_results_not_exceptions(endpoint):
    with Client(endpoint, timeout_s=30) as c:
        r = c.infer("resnet_static", {"image": np.zeros((3, 32, 31), np.float32)})
        assert r.status == "error" and "expects [3, 32, 32]" in r.error
        with pytest.raises(ServerError, match="error: .*expects"):
            r.raise_for_status()


def test_async_many_in_flight(endpoint):
    rng = np.random.default_rng(SEED)
    toks = [tokens_for_depth(int(d), 12, rng) for d in rng.integers(1, 13, size=40)]

    async def main():
        async with AsyncClient(endpoint, timeout_s=60) as ac:
            h = await ac.health()
            rs = await asyncio.gather(*(ac.infer("early_exit", {"tokens": t}, slo_ms=5000)
                                        for t in toks))  # fmt: skip
            return h, rs

    h, rs = asyncio.run(main())
    assert h["status"] == "ok"
    assert len(rs) == 40 and all(r.status in ("ok", "dropped") for r in rs)
    ok = [(r, t) for r, t in zip(rs, toks, strict=True) if r.ok]
    assert ok and all(int(r.outputs["exit_layer"]) == 1 + (int(t[0]) - 1) % 12 for r, t in ok)
    assert max(r.timing["batch_size"] for r, _ in ok) > 1  # concurrent requests get batched


def test_timeouts_name_the_knob():
    with Client("tcp://127.0.0.1:1", timeout_s=0.2) as c, pytest.raises(TimeoutError,
                                                                         match="timeout_s"):
        c.health()

    async def main():
        async with AsyncClient("tcp://127.0.0.1:1", timeout_s=0.2) as ac:
            await ac.infer("m", {"x": np.zeros(1, np.float32)})

    with pytest.raises(TimeoutError, match="timeout_s"):
        asyncio.run(main())


def test_codec():
    assert wire_dtype(np.zeros(1, np.int8)) == "int8"
    assert wire_dtype(np.zeros(1, bool)) == "bool"
    with pytest.raises(TypeError, match="not a wire dtype"):
        wire_dtype(np.zeros(1, np.float64))
    frames = encode_infer(1, "m", {"x": np.arange(6, dtype=">i4").reshape(2, 3)[:, ::2]})
    import msgpack

    h = msgpack.unpackb(frames[0])
    assert h["inputs"] == [{"name": "x", "dtype": "int32", "shape": [2, 2]}]
    assert np.frombuffer(frames[1], "<i4").tolist() == [0, 2, 3, 5]
    reply = [msgpack.packb({"v": 1, "id": 1, "status": "ok", "met_slo": True,
                            "outputs": [{"name": "y", "dtype": "int64", "shape": []}]}),
             np.array(7, np.int64).tobytes()]  # fmt: skip
    _, r = decode_reply(reply)
    assert r.ok and int(r.outputs["y"]) == 7 and r.outputs["y"].shape == ()


def test_an_empty_input_is_sent_and_the_server_answers(endpoint):
    """A zero-length variable dim cannot be cast to a byte view (memoryview refuses a shape
    with a zero): the client sends it anyway and returns the server's answer."""
    empty = np.zeros((0,), np.int64)
    frames = encode_infer(1, "early_exit", {"tokens": empty})
    assert bytes(frames[1]) == b""
    with Client(endpoint, timeout_s=30) as c:
        r = c.infer("early_exit", {"tokens": empty})
        assert r.status == "error" and "input 'tokens' dim 0 is 0" in r.error, r
        r0 = c.infer("resnet_static", {"image": np.zeros((0, 32, 32), np.float32)})
        assert r0.status == "error" and "expects [3, 32, 32]" in r0.error, r0
        assert c.health()["status"] == "ok"  # the connection serves on

    async def main():
        async with AsyncClient(endpoint, timeout_s=30) as ac:
            return await ac.infer("early_exit", {"tokens": empty})

    ra = asyncio.run(main())
    assert ra.status == "error" and ra.error == r.error, ra
