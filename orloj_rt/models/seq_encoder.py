"""`seq_encoder`: a transformer encoder whose cost follows its input's length.

A variable-length sequence in, a mean-pooled embedding out (random weights). Every
request runs every layer; what varies is the length. A batch is padded to its longest
member (the worker pads the token dim with 0, which the model masks), so a batch costs
about c(b) times the solo time of its longest member: one long request makes every
short one in its batch pay for its length. The model reports `length` (its non-padding
tokens) per request as the spec's `work_output`, so the scheduler learns per-request
solo times from batches (solo ~ a + k * length, fitted at warm-up).

The length is known when the request arrives: the spec declares it as the request's
cost hint (`hint = "length(tokens)"`, the size of the token input's variable dim), which
the server derives for every request that sends no `hint` of its own.

`tokens_of_length(length, rng)` builds an input; `lengths_from_trace` scales a trace's
token counts (e.g. the Azure conversation trace's `ContextTokens`) into this model's
range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from orloj_rt.models.spec import ModelEntry, ModelSpec, TensorSpec

VOCAB = 1024
MAX_LEN = 256
D_MODEL = 128
NUM_LAYERS = 4
NHEAD = 4
#: trace token counts are divided by this (Azure conversation `ContextTokens`: mean 1155,
#: p99 4142, becomes mean 73, p99 256)
TRACE_SCALE = 16.0

SPEC = ModelSpec(
    name="seq_encoder",
    inputs=(
        TensorSpec(
            "tokens", "int64", (-1,), max_shape=(MAX_LEN,), buckets=((16, 32, 64, 128, MAX_LEN),)
        ),
    ),
    outputs=(
        TensorSpec("embedding", "float32", (D_MODEL,)),
        TensorSpec("length", "int64", ()),
    ),
    max_batch_size=16,
    default_slo_ms=100.0,
    work_output="length",
    ring_slots=512,
    hint="length(tokens)",
    description="transformer encoder over variable-length input, padded per batch "
    "(random weights)",
)


def tokens_of_length(length: int, rng: np.random.Generator) -> np.ndarray:
    """An int64 sequence of `length` non-padding tokens."""
    if not 1 <= length <= MAX_LEN:
        raise ValueError(f"length must be in [1, {MAX_LEN}], got {length}")
    return rng.integers(1, VOCAB, size=length, dtype=np.int64)


def lengths_from_trace(counts: Sequence[float], scale: float = TRACE_SCALE) -> np.ndarray:
    """Token counts of a trace mapped to this model's lengths: ceil(count / scale),
    clipped to [1, MAX_LEN]."""
    arr = np.ceil(np.asarray(counts, dtype=float) / scale)
    return np.clip(arr, 1, MAX_LEN).astype(np.int64)


def examples(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    """Warm-up requests: lengths spread over the whole range (the work fit needs them)."""
    lengths = np.geomspace(1, MAX_LEN, num=max(n, 2)).round().astype(int)[:n]
    return [{"tokens": tokens_of_length(int(n_), rng)} for n_ in lengths]


def build(
    num_layers: int = NUM_LAYERS,
    d_model: int = D_MODEL,
    nhead: int = NHEAD,
    vocab: int = VOCAB,
    max_len: int = MAX_LEN,
    seed: int = 0,
):
    import torch
    from torch import nn

    class SeqEncoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model, padding_idx=0)
            self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(
                    d_model, nhead, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
                )
                for _ in range(num_layers)
            )
            self.norm = nn.LayerNorm(d_model)

        def forward(self, tokens):
            pad = tokens == 0
            h = self.embed(tokens) + self.pos[: tokens.shape[1]]
            for layer in self.layers:
                h = layer(h, src_key_padding_mask=pad)
            keep = (~pad).unsqueeze(-1).to(h.dtype)
            length = (~pad).sum(1)
            pooled = (h * keep).sum(1) / length.clamp(min=1).unsqueeze(-1).to(h.dtype)
            return self.norm(pooled), length

    torch.manual_seed(seed)
    return SeqEncoder()


ENTRY = ModelEntry(
    spec=SPEC,
    factory="orloj_rt.models.seq_encoder:build",
    examples="orloj_rt.models.seq_encoder:examples",
)
