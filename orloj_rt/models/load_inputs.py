"""Request inputs for load generation (`orloj-rt bench`, bench/e2e_finish_rate.py).

A load test needs inputs whose *work* follows a realistic law: an early-exit model needs
inputs that exit at different depths, a generation loop prompts that generate different
lengths. Each generator here knows one model's input semantics and draws n requests:

    draws = make_inputs("generate", spec, n, rng, trace={"GeneratedTokens": counts})
    draws[i].inputs   # {"prompt": ndarray}
    draws[i].work     # the work it was built to do (tokens here), for reports
    draws[i].hint     # a cost hint known at arrival, where the model has one, else None

Kinds (the work each request does, and its law; params in parentheses):

- `early_exit`: exit depth; bimodal: a share `deep_fraction` (0.2) runs all `deep` (12)
  layers, the rest `shallow` (2); length uniform `min_len`..`max_len` (8..32).
- `generate`: tokens generated; the trace's `GeneratedTokens` / `scale` (8), row by row,
  when a trace is given, else LogNormal with the Azure conversation trace's mean 211 and
  CoV 0.77, then / `scale`; clipped to 1..128.
- `seq_encoder`: sequence length, also sent as the cost hint; the trace's `ContextTokens`
  / `scale` (16), else LogNormal mean 1155, CoV 0.96, then / `scale`; clipped to 1..256.
- `minilm_early_exit`: exit depth, decided by the model; its sample sentences, uniformly.
- `sleep`: milliseconds slept; LogNormal mean `mean_ms` (5), CoV `cov` (1).
- `generic`: any model, from its `models` answer: normal floats, zero integers, variable
  dims uniform up to their maximum; no work figure.

Params come as strings (from a command line) or numbers. No torch is imported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from orloj_rt.models import early_exit, generate, minilm_early_exit, seq_encoder
from orloj_rt.models.spec import DTYPES

#: the Azure LLM conversation trace 2023 (GeneratedTokens: mean 211, CoV 0.77; ContextTokens:
#: mean 1155, CoV 0.96): the default laws when no trace file is given
AZURE_GENERATED_MEAN, AZURE_GENERATED_COV = 211.1, 0.77
AZURE_CONTEXT_MEAN, AZURE_CONTEXT_COV = 1154.7, 0.96


@dataclass
class Draw:
    """One request's inputs, the work it was built to do, and its cost hint."""

    inputs: dict[str, np.ndarray]
    work: float | None = None
    hint: float | None = None


def _lognormal(rng: np.random.Generator, mean: float, cov: float, n: int) -> np.ndarray:
    sigma2 = math.log1p(cov * cov)
    return rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2), n)


def _param(params: Mapping[str, Any], key: str, default: float, cast=float):
    v = params.get(key, default)
    try:
        return cast(v)
    except (TypeError, ValueError):
        raise ValueError(f"input parameter {key}={v!r} is not a {cast.__name__}") from None


def _trace_column(trace: Mapping[str, np.ndarray] | None, column: str, n: int):
    if not trace or column not in trace:
        return None
    col = np.asarray(trace[column], dtype=float)
    return np.take(col, np.arange(n), mode="wrap")


def early_exit_inputs(spec, n, rng, trace, params) -> list[Draw]:
    deep_fraction = _param(params, "deep_fraction", 0.2)
    shallow = _param(params, "shallow", 2, int)
    deep = _param(params, "deep", early_exit.NUM_LAYERS, int)
    lo = _param(params, "min_len", 8, int)
    hi = _param(params, "max_len", early_exit.MAX_LEN, int)
    if not 0 <= deep_fraction <= 1:
        raise ValueError("deep_fraction must be in [0, 1]")
    is_deep = rng.random(n) < deep_fraction
    out = []
    for d in is_deep:
        depth = deep if d else shallow
        length = int(rng.integers(lo, hi + 1))
        out.append(Draw({"tokens": early_exit.tokens_for_depth(depth, length, rng)}, depth))
    return out


def generate_inputs(spec, n, rng, trace, params) -> list[Draw]:
    scale = _param(params, "scale", generate.TRACE_SCALE)
    counts = _trace_column(trace, "GeneratedTokens", n)
    if counts is None:
        counts = _lognormal(rng, _param(params, "mean_tokens", AZURE_GENERATED_MEAN),
                            _param(params, "cov", AZURE_GENERATED_COV), n)  # fmt: skip
    lengths = generate.lengths_from_trace(counts, scale)
    prompt_lens = rng.integers(4, generate.MAX_PROMPT + 1, n)
    return [
        Draw({"prompt": generate.prompt_for_length(int(k), int(p), rng)}, int(k))
        for k, p in zip(lengths, prompt_lens, strict=True)
    ]


def seq_encoder_inputs(spec, n, rng, trace, params) -> list[Draw]:
    scale = _param(params, "scale", seq_encoder.TRACE_SCALE)
    counts = _trace_column(trace, "ContextTokens", n)
    if counts is None:
        counts = _lognormal(rng, _param(params, "mean_tokens", AZURE_CONTEXT_MEAN),
                            _param(params, "cov", AZURE_CONTEXT_COV), n)  # fmt: skip
    lengths = seq_encoder.lengths_from_trace(counts, scale)
    return [
        Draw({"tokens": seq_encoder.tokens_of_length(int(k), rng)}, int(k), float(k))
        for k in lengths
    ]


def minilm_inputs(spec, n, rng, trace, params) -> list[Draw]:
    if not minilm_early_exit.available():
        return [Draw({"tokens": minilm_early_exit.random_tokens(int(k), rng)})
                for k in rng.integers(8, 65, n)]  # fmt: skip
    lines = (minilm_early_exit.model_dir() / "vocab.txt").read_text(encoding="utf-8")
    vocab = {w: i for i, w in enumerate(lines.splitlines())}
    texts = [minilm_early_exit.tokens_from_vocab(t, vocab) for t in minilm_early_exit.SAMPLE_TEXTS]
    return [Draw({"tokens": texts[int(i)]}) for i in rng.integers(0, len(texts), n)]


def sleep_inputs(spec, n, rng, trace, params) -> list[Draw]:
    ms = _lognormal(rng, _param(params, "mean_ms", 5.0), _param(params, "cov", 1.0), n)
    return [Draw({"ms": np.array(m, dtype=np.float32)}, float(m)) for m in ms]


def generic_inputs(spec, n, rng, trace, params) -> list[Draw]:
    """From a `models` answer (or a ModelSpec's to_dict()): any model."""
    inputs = spec["inputs"]
    out = []
    for _ in range(n):
        req = {}
        for t in inputs:
            shape = list(t["shape"])
            mx = list(t.get("max_shape") or shape)
            dims = [int(rng.integers(1, m + 1)) if d == -1 else d for d, m in zip(shape, mx,
                                                                                   strict=True)]
            np_dtype = np.dtype(DTYPES[t["dtype"]][0])
            if t["dtype"] in ("float32", "float16"):
                req[t["name"]] = rng.standard_normal(dims).astype(np_dtype)
            else:
                req[t["name"]] = np.zeros(dims, dtype=np_dtype)
        out.append(Draw(req))
    return out


Generator = Callable[..., list[Draw]]

#: kind -> generator(spec_dict, n, rng, trace, params)
INPUT_KINDS: dict[str, Generator] = {
    "early_exit": early_exit_inputs,
    "generate": generate_inputs,
    "seq_encoder": seq_encoder_inputs,
    "minilm_early_exit": minilm_inputs,
    "sleep": sleep_inputs,
    "generic": generic_inputs,
}


def default_kind(model_name: str) -> str:
    """The generator for a model name: its own if it is a built-in, else generic."""
    return model_name if model_name in INPUT_KINDS else "generic"


def check_spec(kind: str, spec: Mapping[str, Any]) -> None:
    """ValueError if the served model's inputs are not what the generator makes."""
    if kind == "generic":
        return
    from orloj_rt.models.builtin import BUILTIN_MODELS

    want = BUILTIN_MODELS.get(kind)
    if want is None:
        return
    names = sorted(t["name"] for t in spec["inputs"])
    if names != sorted(t.name for t in want.spec.inputs):
        raise ValueError(
            f"inputs of kind {kind!r} do not fit model {spec['name']!r} (its inputs are "
            f"{names}); choose the kind with --inputs (e.g. --inputs generic)"
        )


def make_inputs(
    kind: str,
    spec: Mapping[str, Any],
    n: int,
    rng: np.random.Generator,
    trace: Mapping[str, np.ndarray] | None = None,
    params: Mapping[str, Any] | None = None,
) -> list[Draw]:
    if kind not in INPUT_KINDS:
        raise ValueError(f"unknown input kind {kind!r}; choose one of {', '.join(INPUT_KINDS)}")
    check_spec(kind, spec)
    return INPUT_KINDS[kind](spec, n, rng, trace, dict(params or {}))
