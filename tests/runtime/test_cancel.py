"""Cancellation end to end (`op: "cancel"`, docs/protocol.md): a live server (real
processes, sockets, shared memory; CPU).

Every cancelled request gets exactly one reply, `cancelled` (or its answer, if that went
out first), and the cancel is answered with where its target was: a queued request leaves
the queue and frees its ring slot at once; a member of a running whole batch is answered
at once, its result discarded and its slot freed when the batch ends; a step-level member
is ended at its next step boundary. Unknown, already answered and other clients' ids are
told apart, and the server serves on."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from orloj_rt.client import AsyncClient, Client
from orloj_rt.models import generate

from .helpers import RawDealer, header, running_server

pytest.importorskip("torch")

SLEEP_SLO_MS = 10_000.0
REPO = {
    # batches of one and three ring slots: what is queued and what runs is known
    "sleep.toml": 'builtin = "sleep"\nring_slots = 3\nmax_batch_size = 1\n'
                  "default_slo_ms = 10000.0\n",
    "gen.toml": 'builtin = "generate"\nname = "gen"\nmax_batch_size = 4\n'
                "default_slo_ms = 60000\nfactory_args = { num_layers = 4 }\n",
}  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("cancel_repo")
    for name, text in REPO.items():
        (repo / name).write_text(text)
    with running_server(tmp_path_factory.mktemp("logs"), "--models", str(repo), "--policy",
                        "orloj-step") as s:  # fmt: skip
        yield s


def sleep_ms(ms: float) -> dict:
    return {"ms": np.float32(ms)}


def counters(c: Client, model: str) -> dict:
    return c.stats()["models"][model]


def test_a_queued_request_never_runs_and_frees_its_slot(server):
    with Client(server.endpoint, timeout_s=30) as c:
        running = c.submit("sleep", sleep_ms(600), slo_ms=SLEEP_SLO_MS)
        time.sleep(0.15)  # it runs now; the next two wait behind it (batches of one)
        queued = [c.submit("sleep", sleep_ms(600), slo_ms=SLEEP_SLO_MS) for _ in range(2)]
        time.sleep(0.05)
        t0 = time.monotonic()
        assert c.cancel(queued[0]) == "queued"
        r = c.result(queued[0])
        assert r.status == "cancelled" and "before it ran" in r.error
        assert time.monotonic() - t0 < 0.3  # answered at once, not after the running one
        # its ring slot is free again: three slots, two taken, one more fits
        extra = c.submit("sleep", sleep_ms(1), slo_ms=SLEEP_SLO_MS)
        for rid in (running, queued[1], extra):
            assert c.result(rid).status == "ok", rid
        assert c.cancel(queued[0]) == "answered"  # its answer went out
        assert counters(c, "sleep")["cancelled"] >= 1


def test_a_running_whole_batch_member_is_answered_at_once_and_its_result_discarded(server):
    with Client(server.endpoint, timeout_s=30) as c:
        rid = c.submit("sleep", sleep_ms(700), slo_ms=SLEEP_SLO_MS)
        time.sleep(0.2)
        t0 = time.monotonic()
        assert c.cancel(rid) == "running"
        r = c.result(rid)
        assert r.status == "cancelled" and "while it ran" in r.error
        assert time.monotonic() - t0 < 0.3  # not after the sleep ends
        # the batch ends ~0.5 s later: its result is discarded (no second reply) and the
        # slot comes back: three more requests at once all fit after it
        time.sleep(0.7)
        later = [c.submit("sleep", sleep_ms(1), slo_ms=SLEEP_SLO_MS) for _ in range(3)]
        assert [c.result(x).status for x in later] == ["ok"] * 3
        assert not c._sock.poll(200)  # nothing else arrived: one reply per request


def test_a_step_level_member_is_ended_at_its_next_boundary(server):
    rng = np.random.default_rng(0)
    prompt = generate.prompt_for_length(generate.MAX_NEW_TOKENS, 8, rng)
    with Client(server.endpoint, timeout_s=60) as c:
        t0 = time.monotonic()
        assert c.infer("gen", {"prompt": prompt}, slo_ms=60_000).status == "ok"
        alone = time.monotonic() - t0
        rid = c.submit("gen", {"prompt": prompt}, slo_ms=60_000)
        time.sleep(min(0.3 * alone, 0.5))
        t1 = time.monotonic()
        where = c.cancel(rid)
        r = c.result(rid)
        assert (where, r.status) == ("running", "cancelled"), (where, r.status, alone)
        assert time.monotonic() - t1 < 0.5 * alone + 0.2
        deadline = time.monotonic() + 5  # the scheduler's stats come every second or so
        while time.monotonic() < deadline:
            steps = c.stats()["models"]["gen"]["scheduler"].get("steps", {})
            if steps.get("ended", 0) >= 1:
                break
            time.sleep(0.1)
        assert steps.get("ended", 0) >= 1, steps  # ended, not run to its end
        # the worker goes on serving
        assert c.infer("gen", {"prompt": prompt[:2].copy()}, slo_ms=60_000).status == "ok"


def test_unknown_foreign_and_bad_cancels(server):
    with Client(server.endpoint, timeout_s=30) as a, Client(server.endpoint, timeout_s=30) as b:
        assert a.cancel(123456) == "unknown"
        rid = a.submit("sleep", sleep_ms(300), slo_ms=SLEEP_SLO_MS)
        assert b.cancel(rid) == "unknown"  # another client cannot cancel it
        assert a.result(rid).status == "ok"
    with RawDealer(server.endpoint) as d:
        for target in (None, [1], 1.5, "x" * 300):
            d.send([header(id="c", op="cancel", target=target)])
            h, _ = d.recv()
            assert h["status"] == "error" and "target" in h["error"], h
        d.send([header(id="c2", op="cancel", target=7), b"data"])
        h, _ = d.recv()
        assert h["status"] == "error" and "no data frames" in h["error"]
        assert d.quiet()


def test_the_async_client_cancels_on_task_cancellation_and_timeout(server):
    async def main():
        async with AsyncClient(server.endpoint, timeout_s=30) as ac:
            task = asyncio.ensure_future(ac.infer("sleep", sleep_ms(400), slo_ms=SLEEP_SLO_MS))
            task2 = asyncio.ensure_future(ac.infer("sleep", sleep_ms(400),
                                                   slo_ms=SLEEP_SLO_MS))  # fmt: skip
            await asyncio.sleep(0.1)
            task2.cancel()  # queued behind the first: it never runs
            with pytest.raises(asyncio.CancelledError):
                await task2
            with pytest.raises(TimeoutError):
                await ac.infer("sleep", sleep_ms(400), slo_ms=SLEEP_SLO_MS, timeout_s=0.05)
            assert (await task).status == "ok"

    with Client(server.endpoint, timeout_s=30) as c:
        before = counters(c, "sleep")["cancelled"]
        asyncio.run(main())
        deadline = time.monotonic() + 5
        while counters(c, "sleep")["cancelled"] < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert counters(c, "sleep")["cancelled"] == before + 2
