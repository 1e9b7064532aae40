"""Step-level batching end to end: a live server (real processes, sockets, shared memory;
CPU) under a step policy (`orloj-step`, `fcfs-step`), with the step models `generate`
(token) and `early_exit` (layer), made small, and a user model without steps.

Every request gets exactly one reply (sent on one DEALER socket, replies matched by id,
then silence); an `ok` answer of a step model is the model's solo answer, computed here
from the same weights (the factories are seeded); the scheduler's stats show that the
members ran step by step, several to a step. A model without steps falls back to whole
batches (orloj-step -> orloj, fcfs-step -> fifo). Under overload with tight SLOs,
orloj-step answers the hopeless `dropped` instead of late, where fcfs-step, which never
drops, answers late."""

from __future__ import annotations

import time

import numpy as np
import pytest

from orloj_rt.client import Client
from orloj_rt.client.codec import InferResult, decode_reply, encode_infer
from orloj_rt.models import early_exit, generate

from .helpers import RawDealer, running_server

torch = pytest.importorskip("torch")

SEED = 88
GEN_LAYERS = 1
EE_LAYERS = 6
MAX_BATCH = 8
GENEROUS_SLO_MS = 60_000.0
REPLIES_TIMEOUT_S = 60.0
#: a reference generation is used only where every token's logit beats the runner-up by
#: this much: batching changes the float reductions by ~1e-7, so an argmax this clear
#: cannot flip and the server's tokens must equal the solo ones exactly
MIN_LOGIT_GAP = 1e-4

REPO = {
    "gen.toml": f'builtin = "generate"\nname = "gen"\nmax_batch_size = {MAX_BATCH}\n'
                f"default_slo_ms = 10000\nfactory_args = {{ num_layers = {GEN_LAYERS} }}\n",
    "ee.toml": f'builtin = "early_exit"\nname = "ee"\nmax_batch_size = {MAX_BATCH}\n'
               f"default_slo_ms = 10000\nfactory_args = {{ num_layers = {EE_LAYERS} }}\n",
    "double.toml": 'name = "double"\nfactory = "double.py:build"\nmax_batch_size = 8\n'
                   "default_slo_ms = 10000\n\n[[inputs]]\nname = \"x\"\ndtype = \"float32\"\n"
                   "shape = [4]\n\n[[outputs]]\nname = \"y\"\ndtype = \"float32\"\n"
                   "shape = [4]\n",
    "double.py": "import torch\n\n\nclass Double(torch.nn.Module):\n"
                 "    def forward(self, x):\n        return 2 * x\n\n\n"
                 "def build():\n    return Double()\n",
}  # fmt: skip
#: the whole-batch policy that serves a model without steps (step_scheduling.py)
FALLBACK = {"orloj-step": "orloj", "fcfs-step": "fifo"}


@pytest.fixture(scope="module", params=["orloj-step", "fcfs-step"])
def server(request, tmp_path_factory):
    """One server per policy; pytest runs every test of one before starting the other."""
    repo = tmp_path_factory.mktemp("step_repo")
    for name, text in REPO.items():
        (repo / name).write_text(text)
    policy = request.param
    with running_server(tmp_path_factory.mktemp("logs"), "--models", str(repo), "--policy",
                        policy, "--cpu-workers", "1") as s:  # fmt: skip
        s.policy = policy
        yield s


@pytest.fixture(scope="module")
def reference():
    """The served models' weights, here, for solo answers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = generate.build(num_layers=GEN_LAYERS).eval()
    ee = early_exit.build(num_layers=EE_LAYERS).eval()
    yield {"gen": gen, "ee": ee}
    torch.set_num_threads(before)


def solo_generation(model, prompt: np.ndarray) -> tuple[np.ndarray, int, float]:
    """(tokens, length, the smallest gap between the chosen logit and the runner-up)."""
    gaps = []
    real = model._next_token

    def spy(h):
        logits = model.lm_head(model.norm(h))
        logits[:, 0] = float("-inf")
        top = logits.topk(2, -1).values
        gaps.append(float((top[:, 0] - top[:, 1]).min()))
        return real(h)

    model._next_token = spy
    try:
        with torch.inference_mode():
            tokens, count = model(torch.from_numpy(prompt)[None])
    finally:
        del model._next_token
    return tokens[0].numpy(), int(count[0]), min(gaps)


def solo_exit(model, tokens: np.ndarray) -> tuple[np.ndarray, int]:
    with torch.inference_mode():
        logits, depth = model(torch.from_numpy(tokens)[None])
    return logits[0].numpy(), int(depth[0])


def clear_prompts(model, rng, n: int, lengths: tuple[int, int]) -> list[np.ndarray]:
    """n prompts with lengths in `lengths` whose solo generation has clear argmaxes."""
    out = []
    for _ in range(20 * n):  # bounded; nearly every prompt qualifies
        prompt = generate.prompt_for_length(int(rng.integers(*lengths)),
                                            int(rng.integers(1, generate.MAX_PROMPT + 1)),
                                            rng)  # fmt: skip
        if solo_generation(model, prompt)[2] >= MIN_LOGIT_GAP:
            out.append(prompt)
            if len(out) == n:
                return out
    raise AssertionError(f"only {len(out)} of {n} prompts have clear argmaxes")


def exchange(endpoint: str, requests: list[tuple[str, dict, float, str]]) -> list[InferResult]:
    """Sends every request (model, inputs, slo_ms, app) at once on one socket; returns
    their replies in request order, asserting that each request got exactly one (and
    nothing else came)."""
    replies: dict[int, InferResult] = {}
    with RawDealer(endpoint) as d:
        for i, (model, inputs, slo_ms, app) in enumerate(requests):
            d.send(encode_infer(i, model, inputs, slo_ms=slo_ms, app=app))
        deadline = time.monotonic() + REPLIES_TIMEOUT_S
        while len(replies) < len(requests):
            left = deadline - time.monotonic()
            if left <= 0 or not d.sock.poll(left * 1000, d.zmq.POLLIN):
                missing = sorted(set(range(len(requests))) - set(replies))
                raise AssertionError(f"no reply within {REPLIES_TIMEOUT_S} s to {missing}")
            frames = d.sock.recv_multipart()
            assert frames[0] == b""
            _, r = decode_reply(frames[1:])
            assert r.id in range(len(requests)), f"a reply to an unknown id {r.id!r}"
            assert r.id not in replies, f"request {r.id} answered twice: {replies[r.id]}, {r}"
            replies[r.id] = r
        assert d.quiet(0.3), "a reply more than requests sent"
    return [replies[i] for i in range(len(requests))]


def scheduler_stats(endpoint: str, model: str, until, timeout_s: float = 5.0) -> dict:
    """The model's stats once `until(stats)` holds (the scheduler's figures reach the
    frontend once a second), or the last seen after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with Client(endpoint, timeout_s=10) as c:
        while True:
            st = c.stats()["models"][model]
            if until(st) or time.monotonic() > deadline:
                return st
            time.sleep(0.1)


# ---------------------------------------------------------------------- tests
def test_step_models_answer_as_alone_and_batch_by_steps(server, reference):
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}, policy {server.policy}")
    prompts = clear_prompts(reference["gen"], rng, 40, (1, 49))
    seqs = [early_exit.tokens_for_depth(int(rng.integers(1, EE_LAYERS + 1)),
                                        int(rng.integers(1, early_exit.MAX_LEN + 1)), rng)
            for _ in range(20)]  # fmt: skip
    # apps of a few requests each: every app keeps the warm-up prior (an app's learned
    # distribution replaces it after 32 finished members, and then orloj-step ends longer
    # members whatever their SLO: test_orloj_step_ends_members_beyond_what_it_learned)
    requests = [("gen", {"prompt": p}, GENEROUS_SLO_MS, f"g{i % 8}")
                for i, p in enumerate(prompts)]  # fmt: skip
    requests += [("ee", {"tokens": t}, GENEROUS_SLO_MS, f"e{i % 4}") for i, t in enumerate(seqs)]
    order = rng.permutation(len(requests))  # the models' requests interleaved
    before = {m: step_totals(server.endpoint, m) for m in ("gen", "ee")}
    replies = exchange(server.endpoint, [requests[i] for i in order])
    by_request = dict(zip(order.tolist(), replies, strict=True))
    sizes = []
    for i, p in enumerate(prompts):
        r = by_request[i]
        assert r.ok, r
        want_tokens, want_length, _ = solo_generation(reference["gen"], p)
        assert int(r.outputs["generated"]) == want_length
        np.testing.assert_array_equal(r.outputs["tokens"], want_tokens, err_msg=f"prompt {i}")
        assert r.met_slo is True
        sizes.append(r.timing["batch_size"])
    for j, t in enumerate(seqs):
        r = by_request[len(prompts) + j]
        assert r.ok, r
        want_logits, want_depth = solo_exit(reference["ee"], t)
        assert int(r.outputs["exit_layer"]) == want_depth
        np.testing.assert_allclose(r.outputs["logits"], want_logits, rtol=0, atol=1e-4)
    assert max(sizes) > 1, f"every generation ran alone: {sizes}"
    assert all(1 <= b <= MAX_BATCH for b in sizes), sizes
    # each generation of length L ran L - 1 steps; each early exit at depth d, d steps
    work = {"gen": sum(solo_generation(reference["gen"], p)[1] - 1 for p in prompts),
            "ee": sum(solo_exit(reference["ee"], t)[1] for t in seqs)}  # fmt: skip
    for model, n in (("gen", len(prompts)), ("ee", len(seqs))):
        b0 = before[model]
        st = scheduler_stats(server.endpoint, model, lambda s, n=n, b0=b0: (
            s["scheduler"]["steps"]["finished"] - b0["finished"] == n
            and s["scheduler"]["steps"]["running"] == 0))  # fmt: skip
        assert st["ok"] - b0["ok"] == n, st
        assert st["dropped"] == st["error"] == st["rejected"] == 0, st
        sched = st["scheduler"]
        assert sched["policy"] == server.policy
        steps = sched["steps"]
        assert steps["batching"] == "step"
        assert steps["finished"] - b0["finished"] == n and steps["ended"] == 0
        assert steps["running"] == 0 and sched["batches"] == steps["steps"]
        assert steps["reports"] > b0["reports"] and steps["decisions"] > b0["decisions"]
        # every member's steps were run and counted (an early exit's catch-up layers run
        # alone, before it joins: they are not the batch's steps), and steps were shared
        n_steps = steps["steps"] - b0["steps"]
        members = steps["mean_members"] * steps["steps"] - b0["members"]
        if model == "gen":
            assert members == pytest.approx(work[model], abs=0.5), steps
        else:
            assert 0 < members <= work[model] + 0.5, steps
        assert 0 < n_steps < work[model], f"{model}: no step was shared"
        assert 1.0 < members / n_steps <= MAX_BATCH


def step_totals(endpoint: str, model: str) -> dict:
    """What a step model's stats have counted so far (steps, members, ...), once the
    scheduler's step stats have reached the frontend and nothing runs."""
    st = scheduler_stats(endpoint, model, lambda s: "steps" in s["scheduler"]
                         and s["scheduler"]["steps"]["running"] == 0)  # fmt: skip
    steps = st["scheduler"]["steps"]
    return {"ok": st["ok"], "finished": steps["finished"], "steps": steps["steps"],
            "members": steps["mean_members"] * steps["steps"], "reports": steps["reports"],
            "decisions": steps["decisions"]}  # fmt: skip


def test_a_model_without_steps_is_served_in_whole_batches(server):
    rng = np.random.default_rng(SEED + 1)
    xs = [rng.standard_normal(4).astype(np.float32) for _ in range(24)]
    replies = exchange(server.endpoint, [("double", {"x": x}, GENEROUS_SLO_MS, "d") for x in xs])
    for x, r in zip(xs, replies, strict=True):
        assert r.ok, r
        np.testing.assert_array_equal(r.outputs["y"], 2 * x)
    st = scheduler_stats(server.endpoint, "double",
                         lambda s: s["scheduler"].get("batches", 0) > 0
                         and s["scheduler"]["batches"] * s["scheduler"]["mean_batch_size"]
                         >= len(xs) - 0.5)  # fmt: skip
    sched = st["scheduler"]
    assert sched["policy"] == FALLBACK[server.policy]
    assert "steps" not in sched, "served step by step"
    assert 1 <= sched["batches"] <= len(xs)
    assert sched["batches"] * sched["mean_batch_size"] == pytest.approx(len(xs))
    assert st["ok"] == len(xs)


def test_overload_with_tight_slos(server):
    """A full batch of 60-token generations alone takes T; then 48 generations of 40-60
    tokens arrive at once with an SLO of 1.5 T: about a batch of them can finish in time.
    orloj-step answers the others `dropped` (from the queue, or ended while running),
    not late; fcfs-step drops nothing, ends nothing, and answers most late."""
    rng = np.random.default_rng(SEED + 2)
    print(f"seed {SEED + 2}, policy {server.policy}")
    calibration = [("gen", {"prompt": generate.prompt_for_length(60, 8, rng)},
                    GENEROUS_SLO_MS, "calibration") for _ in range(MAX_BATCH)]  # fmt: skip
    full_batch_ms = float("inf")
    for _ in range(2):  # the faster of two: noise only adds time
        replies = exchange(server.endpoint, calibration)
        assert all(r.ok for r in replies), replies
        full_batch_ms = min(full_batch_ms, max(r.timing["total_us"] for r in replies) / 1e3)
    slo_ms = 1.5 * full_batch_ms
    n = 48
    prompts = [generate.prompt_for_length(int(rng.integers(40, 61)), 8, rng) for _ in range(n)]
    before = scheduler_stats(server.endpoint, "gen", lambda s: True)
    replies = exchange(server.endpoint, [("gen", {"prompt": p}, slo_ms, "overload")
                                         for p in prompts])  # fmt: skip
    counts = {s: sum(r.status == s for r in replies) for s in ("ok", "dropped", "error",
                                                               "rejected")}  # fmt: skip
    late = sum(r.ok and not r.met_slo for r in replies)
    on_time = sum(r.ok and r.met_slo for r in replies)
    print(f"a full batch {full_batch_ms:.1f} ms, SLO {slo_ms:.1f} ms: {counts}, {late} late, "
          f"{on_time} on time")  # fmt: skip
    assert counts["ok"] + counts["dropped"] == n, counts
    for p, r in zip(prompts, replies, strict=True):
        if r.ok:
            assert int(r.outputs["generated"]) == 1 + (int(p[0]) - 1) % generate.MAX_NEW_TOKENS
        else:
            assert "could no longer finish" in r.error, r
    after = scheduler_stats(server.endpoint, "gen",
                            lambda s: s["dropped"] - before["dropped"] == counts["dropped"]
                            and s["scheduler"]["steps"]["running"] == 0)  # fmt: skip
    assert after["dropped"] - before["dropped"] == counts["dropped"]
    ended = after["scheduler"]["steps"]["ended"] - before["scheduler"]["steps"]["ended"]
    if server.policy == "orloj-step":
        assert counts["dropped"] >= n // 4, f"hopeless requests were served: {counts}"
        assert late <= max(3, n // 10), f"{late} answered late instead of dropped"
        assert on_time >= 1, "nothing was served in time"
        assert ended <= counts["dropped"]
    else:  # fcfs-step: everyone is admitted, and everyone waits: the load was overload
        assert counts["dropped"] == 0 and counts["ok"] == n and ended == 0
        assert late >= n // 4, f"not an overload: {late} late"


# ---------------------------------------------------------------------- beyond the support
# (a regression: orloj-step once gave a member beyond its app's learned support a chance
# of 0 and ended it whatever its slack, and the app never learned longer requests)
def test_orloj_step_runs_members_beyond_what_it_learned_to_their_end():
    """In one process: the scheduler's coordinator and an orloj-step policy, fed reports
    as a worker sends them. An app learns from 32 generations of 1-32 tokens; then one of
    48 tokens with a minute of slack runs. It should run to its end."""
    from orloj_rt.engine import Distribution
    from orloj_rt.policies import make_policy
    from orloj_rt.protocol import messages as msgs
    from orloj_rt.serving.steps import StepCoordinator, step_prior

    step = 0.3e-3
    inflation = [1.0 + 0.1 * b for b in range(MAX_BATCH)]
    policy = make_policy("orloj-step", max_batch=MAX_BATCH, inflation=inflation, step=step)
    mean, cov = step_prior(step, list(range(1, 33)))
    policy.set_default_distribution(Distribution.from_mean_cov(mean, cov))
    slots: dict = {}
    co = StepCoordinator("gen", 0, policy, slots, step, inflation, None, 1)
    now = time.monotonic()

    def report(seq, running, steps, finished=()):
        co.on_progress(msgs.StepProgress(0, 0, seq, now, running, steps, list(finished), [],
                                         0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))  # fmt: skip

    for t in range(32):  # finished members: the app's distribution is learned from them
        slots[100 + t] = (0, 1, "chat", now + 60.0, None, None)
    report(0, [], [], [[100 + t, 1 + t] for t in range(32)])
    slots[1] = (0, 1, "chat", now + 60.0, None, None)
    policy.enqueue(1, "chat", now, now + 60.0)
    update, dropped = co.decide(0, now)
    assert update is not None and [t for t, _, _ in update.joined] == [1] and not dropped
    for k in range(1, 48):  # the member's boundaries, each read as it arrives
        report(update.seq, [1], [k])
        u, dropped = co.decide(0, now)
        assert not dropped, f"ended after {k} of its 48 steps, with 60 s of slack"
        assert u is None or not u.ended
