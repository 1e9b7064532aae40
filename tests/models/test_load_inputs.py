"""Per-model request generators for load tests: the work each request was built to do
is the work the model does (checked on the models themselves where cheap)."""

from __future__ import annotations

import numpy as np
import pytest

from orloj_rt.models import early_exit, generate, seq_encoder
from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.models.load_inputs import INPUT_KINDS, default_kind, make_inputs

SEED = 9


def spec(name: str) -> dict:
    return BUILTIN_MODELS[name].spec.to_dict()


def test_early_exit_depths_are_bimodal():
    rng = np.random.default_rng(SEED)
    draws = make_inputs("early_exit", spec("early_exit"), 4000, rng,
                        params={"deep_fraction": "0.25"})  # fmt: skip
    work = np.array([d.work for d in draws])
    assert set(work.tolist()) == {2, early_exit.NUM_LAYERS}
    assert (work == early_exit.NUM_LAYERS).mean() == pytest.approx(0.25, abs=0.02)
    for d in draws[:50]:
        tok = d.inputs["tokens"]
        assert 1 + (tok[0] - 1) % early_exit.NUM_LAYERS == d.work and 8 <= len(tok) <= 32


def test_generate_lengths_follow_the_trace_row_by_row():
    rng = np.random.default_rng(SEED)
    counts = np.array([7.0, 80.0, 211.0, 1000.0])
    draws = make_inputs("generate", spec("generate"), 6, rng, {"GeneratedTokens": counts})
    assert [d.work for d in draws] == [1, 10, 27, 125, 1, 10]  # wraps around the rows
    for d in draws:
        assert 1 + (d.inputs["prompt"][0] - 1) % generate.MAX_NEW_TOKENS == d.work
    # without a trace: the Azure conversation trace's law, scaled
    work = np.array([d.work for d in make_inputs("generate", spec("generate"), 5000, rng)])
    assert work.mean() == pytest.approx(211.1 / 8, rel=0.08) and work.max() <= 128


def test_seq_encoder_lengths_and_hints():
    rng = np.random.default_rng(SEED)
    draws = make_inputs("seq_encoder", spec("seq_encoder"), 3, rng,
                        {"ContextTokens": np.array([16.0, 1600.0, 99999.0])})  # fmt: skip
    assert [d.work for d in draws] == [1, 100, seq_encoder.MAX_LEN]
    assert [len(d.inputs["tokens"]) for d in draws] == [1, 100, 256]
    assert [d.hint for d in draws] == [1.0, 100.0, 256.0]


def test_generic_inputs_fit_any_spec():
    rng = np.random.default_rng(SEED)
    s = {"name": "m", "inputs": [
        {"name": "x", "dtype": "float16", "shape": [-1, 3], "max_shape": [5, 3]},
        {"name": "i", "dtype": "int32", "shape": []},
    ]}  # fmt: skip
    for d in make_inputs("generic", s, 20, rng):
        x = d.inputs["x"]
        assert x.dtype == np.float16 and 1 <= x.shape[0] <= 5 and x.shape[1] == 3
        assert d.inputs["i"].shape == () and d.inputs["i"].dtype == np.int32


def test_kinds_and_errors():
    assert default_kind("generate") == "generate" and default_kind("my_model") == "generic"
    assert {"early_exit", "generate", "seq_encoder", "minilm_early_exit", "generic"} <= set(
        INPUT_KINDS
    )
    rng = np.random.default_rng(SEED)
    with pytest.raises(ValueError, match="unknown input kind"):
        make_inputs("nope", spec("noop"), 1, rng)
    with pytest.raises(ValueError, match="do not fit"):
        make_inputs("generate", spec("noop"), 1, rng)
    with pytest.raises(ValueError, match="deep_fraction"):
        make_inputs("early_exit", spec("early_exit"), 1, rng, params={"deep_fraction": 2})
    with pytest.raises(ValueError, match="is not a float"):
        make_inputs("early_exit", spec("early_exit"), 1, rng, params={"deep_fraction": "x"})


def test_minilm_inputs_are_sentences_or_random_ids():
    rng = np.random.default_rng(SEED)
    for d in make_inputs("minilm_early_exit", {"name": "minilm_early_exit", "inputs": [
            {"name": "tokens", "dtype": "int64", "shape": [-1], "max_shape": [128]}]}, 5, rng):
        tok = d.inputs["tokens"]
        assert tok[0] == 101 and tok[-1] == 102 and tok.dtype == np.int64
