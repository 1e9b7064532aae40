"""`early_exit`: a small transformer encoder whose depth depends on each request's input.

Early-exit models (BERxiT, DeeBERT, ...) stop a request at the first layer whose exit head
is confident enough. We ship random weights, and a random exit head is never confident, so
the exit rule is a stand-in that keeps the real compute: the first token picks the depth,

    exit_layer = 1 + (tokens[0] - 1) mod num_layers        (token 0 is padding)

Everything else is a real encoder: embeddings, `num_layers` transformer layers with a
padding mask, and a classifier on the first position. A batch runs layer by layer until
its last member has exited; members that exited keep their hidden state (masked), so a
batch costs about c(b) times its deepest member, the behaviour Orloj's batch model
assumes. The model reports `exit_layer` (layers run) per request, which the scheduler uses
to learn per-request solo times without batches of one.

Variants (accuracy scaling, `ModelSpec.variants`): `half` and `quarter` force a maximum
depth of 6 and 3 layers (`max_depth`). Their accuracies (0.93 and 0.85) are declared, not
measured: with random weights there is nothing to measure them on.

It is a `layer` step model (`spec.step_kind`, orloj_rt/models/steps.py): `init_state`,
`step` (one layer), `finished`, `progress`, `outputs`, `select` and `merge`, for
step-level batching; `forward` is the loop over them.

`tokens_for_depth(depth, length, rng)` builds an input with a chosen exit depth.
"""

from __future__ import annotations

import numpy as np

from orloj_rt.models.spec import ModelEntry, ModelSpec, TensorSpec

NUM_LAYERS = 12
VOCAB = 1024
MAX_LEN = 32
D_MODEL = 128
NUM_CLASSES = 10

SPEC = ModelSpec(
    name="early_exit",
    inputs=(
        TensorSpec("tokens", "int64", (-1,), max_shape=(MAX_LEN,), buckets=((8, 16, MAX_LEN),)),
    ),
    outputs=(
        TensorSpec("logits", "float32", (NUM_CLASSES,)),
        TensorSpec("exit_layer", "int64", ()),
    ),
    max_batch_size=16,
    default_slo_ms=50.0,
    work_output="exit_layer",
    step_kind="layer",
    cuda_graphs=False,  # the per-layer "anyone left?" check is data-dependent control flow
    description="transformer encoder with input-driven early exit (random weights)",
    # declared accuracies (random weights: nothing to measure them on)
    variants=(
        {"name": "full", "accuracy": 1.0},
        {"name": "half", "accuracy": 0.93, "max_depth": NUM_LAYERS // 2},
        {"name": "quarter", "accuracy": 0.85, "max_depth": NUM_LAYERS // 4},
    ),
)


def tokens_for_depth(depth: int, length: int, rng: np.random.Generator) -> np.ndarray:
    """An int64 token sequence of `length` whose request exits after `depth` layers."""
    if not 1 <= depth <= NUM_LAYERS:
        raise ValueError(f"depth must be in [1, {NUM_LAYERS}], got {depth}")
    if not 1 <= length <= MAX_LEN:
        raise ValueError(f"length must be in [1, {MAX_LEN}], got {length}")
    tokens = rng.integers(1, VOCAB, size=length, dtype=np.int64)
    # the smallest token id with this depth, shifted by a random multiple of NUM_LAYERS
    k = int(rng.integers(0, (VOCAB - 1 - depth) // NUM_LAYERS + 1))
    tokens[0] = depth + k * NUM_LAYERS
    return tokens


def examples(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    """Warm-up requests: every depth, lengths at the largest bucket."""
    return [
        {"tokens": tokens_for_depth(1 + i % NUM_LAYERS, MAX_LEN, rng)} for i in range(n)
    ]


def build(
    num_layers: int = NUM_LAYERS,
    d_model: int = D_MODEL,
    nhead: int = 4,
    vocab: int = VOCAB,
    max_len: int = MAX_LEN,
    num_classes: int = NUM_CLASSES,
    seed: int = 0,
):
    import torch
    from torch import nn

    from orloj_rt.models.steps import StepModelMixin

    class EarlyExitEncoder(StepModelMixin, nn.Module):
        """A `layer` step model (orloj_rt/models/steps.py): step k runs layer k.

        State: `h` (b, L, d) hidden states, `pad` (b, L) padding mask, `depth` (b,) exit
        layer, `layer` (b,) layers run so far."""

        STATE_PAD = {"pad": True}

        def __init__(self) -> None:
            super().__init__()
            self.num_layers = num_layers
            self.embed = nn.Embedding(vocab, d_model, padding_idx=0)
            self.pos = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
            self.layers = nn.ModuleList(
                nn.TransformerEncoderLayer(
                    d_model, nhead, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
                )
                for _ in range(num_layers)
            )
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, num_classes)

        def exit_depth(self, tokens):
            depth = 1 + torch.remainder(tokens[:, 0] - 1, self.num_layers)
            if self.max_depth is not None:  # a variant's forced maximum depth
                depth = torch.clamp(depth, max=self.max_depth)
            return depth

        def init_state(self, tokens):
            depth = self.exit_depth(tokens)
            return {
                "h": self.embed(tokens) + self.pos[: tokens.shape[1]],
                "pad": tokens == 0,
                "depth": depth,
                "layer": torch.zeros_like(depth),
            }

        def finished(self, state):
            return state["layer"] >= state["depth"]

        def progress(self, state):
            return state["layer"]

        def step(self, state):
            h, pad, layer = state["h"], state["pad"], state["layer"]
            running = ~self.finished(state)
            levels = torch.unique(layer[running]).tolist()
            if len(levels) == 1:
                # the whole batch runs the layer; members that exited keep their state
                # (masked), so a batch costs about c(b) times its deepest member
                out = self.layers[levels[0]](h, src_key_padding_mask=pad)
                h = torch.where(running[:, None, None], out, h)
            else:  # members at different layers (a newcomer catching up): one call each
                h = h.clone()
                for lv in levels:
                    rows = torch.nonzero(running & (layer == lv)).flatten()
                    h[rows] = self.layers[lv](h[rows], src_key_padding_mask=pad[rows])
            return {**state, "h": h, "layer": layer + running.long()}

        def outputs(self, state):
            logits = self.head(self.norm(state["h"][:, 0]))
            return logits, state["depth"]

    torch.manual_seed(seed)
    return EarlyExitEncoder()


ENTRY = ModelEntry(
    spec=SPEC,
    factory="orloj_rt.models.early_exit:build",
    examples="orloj_rt.models.early_exit:examples",
)
