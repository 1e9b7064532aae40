"""The scheduler's per-app state is bounded (issue 19, item 3): a cap per model with an
overflow app, idle apps forgotten everywhere (the learning records, the policy), and a
`stats` reply that lists a bounded number of apps. The last test drives a live server
with thousands of distinct apps."""

from __future__ import annotations

import time

import msgpack
import numpy as np

from orloj_rt.engine.apps import OVERFLOW_APP
from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.protocol import messages as msgs
from orloj_rt.protocol.messages import ModelProfile
from orloj_rt.serving.model import STATS_MAX_APPS, ModelCore

from .helpers import running_server


def queue(**params) -> ModelCore:
    entry = BUILTIN_MODELS["noop"]
    mq = ModelCore(0, entry.spec, "orloj", params)
    b = entry.spec.max_batch_size
    mq.configure(ModelProfile([0.001, 0.002, 0.003], [1.0 + 0.1 * i for i in range(b)], None))
    return mq


def arrive(mq: ModelCore, token: int, app: str, now: float) -> str:
    """What ServingCore._enqueue does with an arriving request; returns its live app."""
    name = mq.live_app(app, now)
    mq.policy.enqueue(token, name, now, now + 1.0)
    mq.slots[token] = (0, 0, name, now + 1.0, None, None)
    return name


def test_the_cap_files_newcomers_under_the_overflow_app_and_the_policy_has_no_more():
    mq = queue(max_apps=4)
    assert mq.policy.max_apps == 0  # the scheduler's table decides, not the policy's
    names = [arrive(mq, t, f"tenant-{t}", 0.0) for t in range(50)]
    assert names[:3] == ["tenant-0", "tenant-1", "tenant-2"]
    assert set(names[3:]) == {OVERFLOW_APP}
    assert set(mq.policy.apps) == {"tenant-0", "tenant-1", "tenant-2", OVERFLOW_APP}
    d = mq.policy.decide(0.0)
    assert d.batch  # still decided and served
    mq.learn([mq.slots.pop(t)[2] for t in d.batch], 0.002 * len(d.batch), None)
    assert set(mq.apps) <= {"tenant-0", "tenant-1", "tenant-2", OVERFLOW_APP}
    assert mq.stats()["apps_live"] == 4 and mq.stats()["max_apps"] == 4


def test_idle_apps_are_forgotten_everywhere_but_not_while_in_flight():
    mq = queue(max_apps=100, app_idle_s=1.0)
    for t in range(20):
        arrive(mq, t, f"app-{t}", 0.0)
    d = mq.policy.decide(0.0)
    for t in d.batch:
        mq.learn([mq.slots.pop(t)[2]], 0.002, None)  # batches of one teach solo times
    running = sorted(mq.slots)  # still queued: in flight
    learned = set(mq.apps)
    assert learned and len(mq.policy.apps) == 20
    assert mq.evict_idle(0.5) == 0  # not idle for long enough yet
    gone = mq.evict_idle(2.0)
    kept = {mq.slots[t][2] for t in running}
    assert gone == 20 - len(kept)
    assert set(mq.policy.apps) == kept  # the policy forgot them too
    assert set(mq.apps) == learned & kept
    assert mq.stats()["apps_evicted"] == gone
    # an evicted app that comes back starts afresh, from the prior
    assert arrive(mq, 1000, "app-0", 3.0) == "app-0"


def test_stats_list_a_bounded_number_of_apps():
    mq = queue(max_apps=1000)
    for t in range(600):
        app = arrive(mq, t, f"app-{t:04d}", 0.0)
        mq.slots.pop(t)
        mq.policy.remove(t)
        for _ in range(1 + t % 7):  # traffic differs: the busiest are listed
            mq.learn([app], 0.002, None)
    st = mq.stats()
    assert len(st["apps"]) == STATS_MAX_APPS == 64
    assert st["apps_omitted"] == 600 - 64 and st["apps_live"] == 600
    assert min(a["samples"] for a in st["apps"].values()) == 7
    size = len(msgs.encode(msgs.SchedulerStats({"noop": st})))
    assert size < 8_000, size


def test_a_live_server_keeps_at_most_max_apps_and_answers_every_request(tmp_path):
    """3,000 requests, each from an app of its own, 128 in flight, against --max-apps 16:
    every request gets one reply, and the scheduler never holds more than 16 apps."""
    import zmq

    from orloj_rt.client import Client
    from orloj_rt.client.codec import encode_infer

    cap, n, window = 16, 3000, 128
    x = np.arange(4, dtype=np.float32)
    with running_server(tmp_path, "--max-apps", str(cap), light=True) as server:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server.endpoint)
        live_seen = []
        replies: dict = {}
        try:
            with Client(server.endpoint, timeout_s=10) as c:
                sent = 0
                deadline = time.monotonic() + 120
                next_look = 0.0
                while len(replies) < n:
                    assert time.monotonic() < deadline, f"{len(replies)} replies of {n}"
                    if sent < n and sent - len(replies) < window:
                        frames = encode_infer(sent + 1, "noop", {"x": x}, slo_ms=1000.0,
                                              app=f"tenant-{sent}")  # fmt: skip
                        sock.send_multipart([b"", *frames])
                        sent += 1
                    elif sock.poll(100, zmq.POLLIN):
                        while sock.poll(0, zmq.POLLIN):
                            got = sock.recv_multipart()
                            h = msgpack.unpackb(got[1], raw=False)
                            replies.setdefault(h["id"], []).append(h["status"])
                    if time.monotonic() >= next_look:  # the scheduler's view, as it goes
                        next_look = time.monotonic() + 0.5
                        sched = c.stats()["models"]["noop"]["scheduler"]
                        if sched:
                            live_seen.append(sched["apps_live"])
                time.sleep(1.2)  # a fresh stats tick from the scheduler
                sched = c.stats()["models"]["noop"]["scheduler"]
        finally:
            sock.close(linger=0)
    assert sorted(replies) == list(range(1, n + 1))
    assert all(len(v) == 1 for v in replies.values())
    statuses = [v[0] for v in replies.values()]
    assert statuses.count("ok") >= 0.9 * n, {s: statuses.count(s) for s in set(statuses)}
    live_seen.append(sched["apps_live"])
    assert max(live_seen) <= cap and sched["max_apps"] == cap
    assert sched["apps_live"] == cap  # the cap was reached: 15 apps and the overflow app
    assert len(sched["apps"]) <= cap


def test_the_max_apps_flag_reaches_the_scheduler_options(capsys):
    import argparse

    from orloj_rt.cli._server_args import add_server_arguments, options_from_args

    p = argparse.ArgumentParser()
    add_server_arguments(p)
    opts, code = options_from_args(p.parse_args(["--cpu-workers", "1"]))
    assert code == 0 and opts.policy_params == {"max_apps": 256}
    opts, code = options_from_args(p.parse_args(["--cpu-workers", "1", "--max-apps", "8"]))
    assert code == 0 and opts.policy_params == {"max_apps": 8}
    assert options_from_args(p.parse_args(["--cpu-workers", "1", "--max-apps", "0"])) == (None, 2)
    assert "--max-apps 0" in capsys.readouterr().err
