"""The dynamic built-in models on the CPU: each one's work is decided by its input, a
batch runs as long as its longest member, members do not depend on their batch-mates,
and the step functions (for step-level batching) give what the whole-batch forward does."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from orloj_rt.models import early_exit, generate, minilm_early_exit, seq_encoder  # noqa: E402
from orloj_rt.models.builtin import BUILTIN_MODELS  # noqa: E402
from orloj_rt.models.loading import build_module  # noqa: E402
from orloj_rt.models.steps import StepModel, run_steps  # noqa: E402
from orloj_rt.runtime.batch_runner import BatchRunner, examples_for  # noqa: E402

SEED = 11
needs_minilm = pytest.mark.skipif(
    not minilm_early_exit.available(),
    reason=f"minilm_early_exit needs `{minilm_early_exit.INSTALL_HINT}`",
)


def runner(name: str) -> BatchRunner:
    torch.set_num_threads(1)
    entry = BUILTIN_MODELS[name]
    return BatchRunner(entry, build_module(entry), "cpu")


@pytest.fixture(scope="module")
def gen():
    return runner("generate")


@pytest.fixture(scope="module")
def seq():
    return runner("seq_encoder")


@pytest.fixture(scope="module")
def minilm():
    if not minilm_early_exit.available():
        pytest.skip(f"minilm_early_exit needs `{minilm_early_exit.INSTALL_HINT}`")
    return runner("minilm_early_exit")


def median_time(r: BatchRunner, batch, reps: int = 5) -> float:
    r.run(batch)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        r.run(batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def slower(r: BatchRunner, short, mixed, ratio: float) -> tuple[float, float]:
    """Median times of two batches, measured interleaved (a shared machine drifts)."""
    ts, tm = [], []
    for _ in range(3):
        ts.append(median_time(r, short, 3))
        tm.append(median_time(r, mixed, 3))
    t_short, t_mixed = statistics.median(ts), statistics.median(tm)
    print(f"{r.spec.name}: short batch {t_short * 1e3:.2f} ms, one long member "
          f"{t_mixed * 1e3:.2f} ms")  # fmt: skip
    assert t_mixed > ratio * t_short
    return t_short, t_mixed


# ---------------------------------------------------------------------- generate
def test_generate_length_is_decided_by_the_prompt(gen):
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    for length in (1, 2, 17, generate.MAX_NEW_TOKENS):
        prompt = generate.prompt_for_length(length, int(rng.integers(1, 33)), rng)
        (tokens, generated), work = gen.run([[prompt]])
        assert work == [length] and generated.tolist() == [length]
        assert (tokens[0, :length] > 0).all() and (tokens[0, length:] == 0).all()


def test_generate_batch_time_grows_with_its_longest_member(gen):
    rng = np.random.default_rng(SEED)
    short = [[generate.prompt_for_length(2, 8, rng)] for _ in range(8)]
    mixed = short[:7] + [[generate.prompt_for_length(64, 8, rng)]]
    assert gen.run(mixed)[1] == [2] * 7 + [64]
    slower(gen, short, mixed, 4.0)


def test_generate_members_are_independent_of_their_batch(gen):
    rng = np.random.default_rng(SEED)
    a = generate.prompt_for_length(5, 3, rng)
    b = generate.prompt_for_length(40, 30, rng)
    (alone, _), _ = gen.run([[a]])
    (together, _), work = gen.run([[a], [b]])
    assert work == [5, 40]
    assert together[0].tolist() == alone[0].tolist()


def test_generate_lengths_from_the_azure_trace():
    counts = [7, 8, 9, 211, 1000]
    assert generate.lengths_from_trace(counts).tolist() == [1, 1, 2, 27, 125]


# ---------------------------------------------------------------------- seq_encoder
def test_seq_encoder_reports_lengths_and_pads_batches(seq):
    rng = np.random.default_rng(SEED)
    a = seq_encoder.tokens_of_length(5, rng)
    b = seq_encoder.tokens_of_length(200, rng)
    (alone, length), work = seq.run([[a]])
    assert work == [5] and length.tolist() == [5]
    (together, _), work = seq.run([[a], [b]])
    assert work == [5, 200]
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-4, atol=1e-5)


def test_seq_encoder_batch_time_grows_with_its_longest_member(seq):
    rng = np.random.default_rng(SEED)
    short = [[seq_encoder.tokens_of_length(8, rng)] for _ in range(8)]
    mixed = short[:7] + [[seq_encoder.tokens_of_length(seq_encoder.MAX_LEN, rng)]]
    slower(seq, short, mixed, 4.0)


# ---------------------------------------------------------------------- early_exit steps
def test_layer_model_newcomer_catches_up_and_merges():
    """Step-level batching of a `layer` model: a newcomer runs alone until it reaches the
    batch's layer, then joins; every member ends as it would alone."""
    torch.manual_seed(0)
    model = build_module(BUILTIN_MODELS["early_exit"])
    assert isinstance(model, StepModel)
    rng = np.random.default_rng(SEED)
    a = torch.from_numpy(early_exit.tokens_for_depth(7, 10, rng))[None]
    b = torch.from_numpy(early_exit.tokens_for_depth(5, 20, rng))[None]
    with torch.inference_mode():
        ref_a, ref_b = run_steps(model, a), run_steps(model, b)
        sa = model.init_state(a)
        for _ in range(3):
            sa = model.step(sa)
        sb = model.init_state(b)
        while int(model.progress(sb)) < int(model.progress(sa)):  # catch up
            sb = model.step(sb)
        s = model.merge([sa, sb])  # padded to the longer sequence
        assert s["h"].shape[:2] == (2, 20)
        while not bool(model.finished(s).all()):
            s = model.step(s)
        logits, depth = model.outputs(s)
        # a member that left early: select keeps the rest running
        assert model.select(s, torch.tensor([1]))["h"].shape[0] == 1
    assert depth.tolist() == [7, 5]
    torch.testing.assert_close(logits[0], ref_a[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits[1], ref_b[0][0], rtol=1e-4, atol=1e-5)


def test_token_model_members_join_between_steps():
    """Step-level batching of a `token` model: a request joins a running batch after its
    own prefill, and every member's tokens are those it generates alone."""
    model = build_module(BUILTIN_MODELS["generate"])
    assert isinstance(model, StepModel)
    rng = np.random.default_rng(SEED)
    a = torch.from_numpy(generate.prompt_for_length(12, 6, rng))[None]
    b = torch.from_numpy(generate.prompt_for_length(4, 20, rng))[None]
    with torch.inference_mode():
        ref_a, ref_b = run_steps(model, a)[0], run_steps(model, b)[0]
        sa = model.init_state(a)
        for _ in range(5):
            sa = model.step(sa)
        s = model.merge([sa, model.init_state(b)])
        assert model.progress(s).tolist() == [6, 1]
        out_b = None
        while not bool(model.finished(s).all()):
            s = model.step(s)
            if out_b is None and bool(model.finished(s)[1]):  # b leaves, a goes on alone
                out_b = model.outputs(model.select(s, torch.tensor([1])))[0]
                s = model.select(s, torch.tensor([0]))
        out_a = model.outputs(s)[0]
    assert out_a[0].tolist() == ref_a[0].tolist()
    assert out_b[0].tolist() == ref_b[0].tolist()


# ---------------------------------------------------------------------- minilm_early_exit
def test_safetensors_reader(tmp_path):
    import json
    import struct

    a = np.arange(6, dtype="<f4").reshape(2, 3)
    b = np.array([7, -1], dtype="<i8")
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
              "__metadata__": {"format": "pt"}}  # fmt: skip
    raw = json.dumps(header).encode()
    (tmp_path / "t.safetensors").write_bytes(
        struct.pack("<Q", len(raw)) + raw + a.tobytes() + b.tobytes()
    )
    got = minilm_early_exit.read_safetensors(tmp_path / "t.safetensors")
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)


@needs_minilm
def test_minilm_exits_depend_on_the_input_and_embeddings_are_real(minilm):
    texts = ["how do i reset my password", "i forgot my password and cannot log in",
             "what is the capital of france", "paris is the capital and largest city of france",
             "the cat sat on the mat", "a man is playing a guitar on the street"]  # fmt: skip
    toks = [minilm_early_exit.tokens_from_vocab(t) for t in texts]
    (emb, depth), work = minilm.run([[t] for t in toks])
    assert work == depth.tolist() and len(set(work)) > 1, work
    assert all(minilm_early_exit.MIN_EXIT_LAYER <= w <= minilm_early_exit.NUM_LAYERS for w in work)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # without early exits: the real all-MiniLM-L6-v2 puts paraphrases together
    full = BatchRunner(minilm.entry, minilm_early_exit.build(threshold=1.0).eval(), "cpu")
    (emb, depth), _ = full.run([[t] for t in toks])
    assert depth.tolist() == [6] * 6
    sim = emb @ emb.T
    assert sim[0, 1] > 0.5 and sim[2, 3] > 0.5 and sim[0, 2] < 0.3 and sim[4, 5] < 0.3


@needs_minilm
def test_minilm_batch_time_grows_with_its_deepest_member(minilm):
    ex = examples_for(minilm.entry, len(minilm_early_exit.SAMPLE_TEXTS))
    toks = [e["tokens"] for e in ex]
    depths = [minilm.run([[t]])[1][0] for t in toks]
    shallow = [t for t, d in zip(toks, depths, strict=True) if d <= 3]
    deep = [t for t, d in zip(toks, depths, strict=True) if d == 6]
    s = max(shallow, key=len)
    d = next(t for t in sorted(deep, key=len, reverse=True) if len(t) <= len(s))
    short = [[s]] * 8
    mixed = [[s]] * 7 + [[d]]
    assert minilm.run(mixed)[1] == [minilm.run([[s]])[1][0]] * 7 + [6]
    slower(minilm, short, mixed, 1.3)


@needs_minilm
def test_minilm_members_are_independent_of_their_batch(minilm):
    a = minilm_early_exit.tokens_from_vocab("where can i buy fresh bread")
    b = minilm_early_exit.tokens_from_vocab(minilm_early_exit.SAMPLE_TEXTS[9])
    (alone, d1), _ = minilm.run([[a]])
    (together, d2), _ = minilm.run([[a], [b]])
    assert d2[0] == d1[0]
    np.testing.assert_allclose(alone[0], together[0], rtol=1e-4, atol=1e-5)
