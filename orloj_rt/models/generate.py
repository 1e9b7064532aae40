"""`generate`: an autoregressive decoder whose output length is decided by its input.

A small decoder-only transformer (random weights) with a key/value cache generates tokens
greedily, one per step, after a prefill over the prompt. When does a request stop? A
trained model stops at its end-of-sequence token; random weights never choose one, so
the stop rule is a stand-in that keeps the real compute (as `early_exit`'s exit rule
does): the prompt's first token sets the number of tokens to generate,

    length = 1 + (prompt[0] - 1) mod MAX_NEW_TOKENS        (token 0 is padding)

The prefill produces the first token; each later token is one step. A batch runs until
its longest member is done (members that are done keep computing, masked, like padding),
so a batch costs about c(b) times its longest member. Outputs: `tokens` (the generated
ids, 0 after the member's length) and `generated` (the member's length), which is the
spec's `work_output`: the scheduler learns per-request solo times from it.

It is a `token` step model (`spec.step_kind`, orloj_rt/models/steps.py). The state keeps
a per-member cache of fixed size (MAX_PROMPT + MAX_NEW_TOKENS positions) and each
member's own position, so members of different ages sit in one batch and a step-level
scheduler can `select` and `merge` them between steps.

`prompt_for_length(length, prompt_len, rng)` builds a prompt that generates `length`
tokens; `lengths_from_trace` scales a trace's token counts (e.g. the Azure conversation
trace's `GeneratedTokens`) into this model's range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from orloj_rt.models.spec import ModelEntry, ModelSpec, TensorSpec

VOCAB = 1024
MAX_PROMPT = 32
MAX_NEW_TOKENS = 128
D_MODEL = 128
NUM_LAYERS = 2
NHEAD = 4
#: trace token counts are divided by this (the Azure conversation trace: mean 211 tokens,
#: max 1000, becomes mean 27, max 125)
TRACE_SCALE = 8.0

SPEC = ModelSpec(
    name="generate",
    inputs=(
        TensorSpec(
            "prompt", "int64", (-1,), max_shape=(MAX_PROMPT,), buckets=((8, 16, MAX_PROMPT),)
        ),
    ),
    outputs=(
        TensorSpec("tokens", "int64", (MAX_NEW_TOKENS,)),
        TensorSpec("generated", "int64", ()),
    ),
    max_batch_size=16,
    default_slo_ms=200.0,
    work_output="generated",
    step_kind="token",
    cuda_graphs=False,  # the loop's "anyone still generating?" check is a host sync
    description="autoregressive decoder; the prompt decides the output length (random weights)",
)


def prompt_for_length(length: int, prompt_len: int, rng: np.random.Generator) -> np.ndarray:
    """An int64 prompt of `prompt_len` tokens that generates `length` tokens."""
    if not 1 <= length <= MAX_NEW_TOKENS:
        raise ValueError(f"length must be in [1, {MAX_NEW_TOKENS}], got {length}")
    if not 1 <= prompt_len <= MAX_PROMPT:
        raise ValueError(f"prompt_len must be in [1, {MAX_PROMPT}], got {prompt_len}")
    prompt = rng.integers(1, VOCAB, size=prompt_len, dtype=np.int64)
    k = int(rng.integers(0, (VOCAB - 1 - length) // MAX_NEW_TOKENS + 1))
    prompt[0] = length + k * MAX_NEW_TOKENS
    return prompt


def lengths_from_trace(counts: Sequence[float], scale: float = TRACE_SCALE) -> np.ndarray:
    """Token counts of a trace mapped to this model's lengths: ceil(count / scale),
    clipped to [1, MAX_NEW_TOKENS]."""
    arr = np.ceil(np.asarray(counts, dtype=float) / scale)
    return np.clip(arr, 1, MAX_NEW_TOKENS).astype(np.int64)


#: warm-up lengths span 1..this: enough for the work fit (time is linear in tokens) and
#: for c(b), without making every start pay for the longest requests
WARMUP_MAX_LENGTH = 32


def examples(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    """Warm-up requests: lengths spread over 1..WARMUP_MAX_LENGTH (the work fit needs
    lengths that vary), prompts at the largest bucket."""
    lengths = np.linspace(1, WARMUP_MAX_LENGTH, num=max(n, 2)).round().astype(int)[:n]
    return [{"prompt": prompt_for_length(int(n_), MAX_PROMPT, rng)} for n_ in lengths]


def build(
    num_layers: int = NUM_LAYERS,
    d_model: int = D_MODEL,
    nhead: int = NHEAD,
    vocab: int = VOCAB,
    max_prompt: int = MAX_PROMPT,
    max_new_tokens: int = MAX_NEW_TOKENS,
    seed: int = 0,
):
    import torch
    import torch.nn.functional as F
    from torch import nn

    from orloj_rt.models.steps import StepModelMixin

    head_dim = d_model // nhead
    max_pos = max_prompt + max_new_tokens

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(d_model)
            self.qkv = nn.Linear(d_model, 3 * d_model)
            self.proj = nn.Linear(d_model, d_model)
            self.ln2 = nn.LayerNorm(d_model)
            self.mlp = nn.Sequential(
                nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
            )

        def forward(self, x, k_cache, v_cache, write_at, attn_mask):
            """x (b, t, d); writes this call's keys and values into the caches (b, H, T,
            dh) at positions `write_at` (b, t), then attends under `attn_mask`."""
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, nhead, head_dim).permute(2, 0, 3, 1, 4)
            rows = torch.arange(b)[:, None]
            k_cache[rows, :, write_at] = k.transpose(1, 2)
            v_cache[rows, :, write_at] = v.transpose(1, 2)
            span = attn_mask.shape[-1]
            a = F.scaled_dot_product_attention(
                q, k_cache[:, :, :span], v_cache[:, :, :span], attn_mask=attn_mask
            )
            x = x + self.proj(a.transpose(1, 2).reshape(b, t, d_model))
            return x + self.mlp(self.ln2(x))

    class Generator(StepModelMixin, nn.Module):
        """A `token` step model (orloj_rt/models/steps.py).

        State, per member: `k`, `v` (b, layers, H, max_pos, dh) caches; `pos` (b,) cache
        entries filled; `last` (b,) the latest token; `count` (b,) tokens generated;
        `target` (b,) tokens to generate; `out` (b, max_new_tokens) the tokens."""

        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model, padding_idx=0)
            self.pos_embed = nn.Embedding(max_pos, d_model)
            self.blocks = nn.ModuleList(Block() for _ in range(num_layers))
            self.norm = nn.LayerNorm(d_model)
            self.lm_head = nn.Linear(d_model, vocab, bias=False)

        def target_length(self, prompt):
            return 1 + torch.remainder(prompt[:, 0] - 1, max_new_tokens)

        def _next_token(self, h):
            logits = self.lm_head(self.norm(h))
            logits[:, 0] = float("-inf")  # never emit padding
            return logits.argmax(-1)

        def init_state(self, prompt):
            """The prefill: the prompt (right-padded with 0) fills the caches and gives
            each member its first token."""
            b, p = prompt.shape
            lengths = (prompt != 0).sum(1).clamp(min=1)
            shape = (b, num_layers, nhead, max_pos, head_dim)
            k = torch.zeros(shape)
            v = torch.zeros(shape)
            positions = torch.arange(p)
            x = self.embed(prompt) + self.pos_embed(positions)
            # causal, and padding keys are never attended to
            causal = positions[None, :] <= positions[:, None]
            mask = (causal[None] & (prompt != 0)[:, None, :])[:, None]
            mask = mask | torch.eye(p, dtype=torch.bool)[None, None]  # no empty rows
            write_at = positions.expand(b, p)
            for i, block in enumerate(self.blocks):
                x = block(x, k[:, i], v[:, i], write_at, mask)
            first = self._next_token(x[torch.arange(b), lengths - 1])
            out = torch.zeros(b, max_new_tokens, dtype=torch.long)
            out[:, 0] = first
            return {
                "k": k, "v": v, "pos": lengths, "last": first,
                "count": torch.ones(b, dtype=torch.long),
                "target": self.target_length(prompt), "out": out,
            }  # fmt: skip

        def finished(self, state):
            return state["count"] >= state["target"]

        def progress(self, state):
            return state["count"]

        def step(self, state):
            """One token for every member; members that are done compute, masked. The
            caches and `out` are updated in place."""
            pos, count = state["pos"], state["count"]
            running = ~self.finished(state)
            write_at = pos.clamp(max=max_pos - 1)
            span = int(write_at.max()) + 1
            mask = (torch.arange(span)[None, :] <= write_at[:, None])[:, None, None]
            x = (self.embed(state["last"]) + self.pos_embed(write_at))[:, None]
            for i, block in enumerate(self.blocks):
                x = block(x, state["k"][:, i], state["v"][:, i], write_at[:, None], mask)
            token = self._next_token(x[:, 0])
            out = state["out"]
            rows = torch.nonzero(running).flatten()
            out[rows, count[rows].clamp(max=max_new_tokens - 1)] = token[rows]
            step = running.long()
            return {**state, "pos": pos + step, "last": torch.where(running, token, state["last"]),
                    "count": count + step, "out": out}  # fmt: skip

        def outputs(self, state):
            return state["out"], state["count"]

    torch.manual_seed(seed)
    model = Generator()
    model.lm_head.weight.data.normal_(0, 0.02)
    return model


ENTRY = ModelEntry(
    spec=SPEC,
    factory="orloj_rt.models.generate:build",
    examples="orloj_rt.models.generate:examples",
)
