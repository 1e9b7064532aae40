"""A model repository served by a live server: the user-defined model of docs/models.md,
written out exactly as the page shows it, an exported program (torch.export) made here,
and the built-in dynamic models with overrides; and broken configs that stop the start."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest

from orloj_rt.client import AsyncClient, Client
from orloj_rt.models import generate, seq_encoder

from .helpers import run_cli, running_server

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"
SEED = 5
DOC_ENDPOINT = "tcp://127.0.0.1:5555"


def doc_files() -> dict[str, str]:
    """The files docs/models.md tells a new user to write: a caption `my_models/NAME`:
    followed by a fenced block."""
    text = DOC.read_text()
    files = dict(re.findall(r"`(my_models/[\w.]+)`:\n\n```\w+\n(.*?)```", text, re.S))
    assert set(files) == {"my_models/newton.py", "my_models/sqrt.toml"}, files.keys()
    return files


def doc_block(after: str, lang: str) -> str:
    """The first `lang` fenced block after the heading text `after`."""
    text = DOC.read_text()
    m = re.search(re.escape(after) + r".*?```" + lang + r"\n(.*?)```", text, re.S)
    assert m, f"docs/models.md: no {lang} block after {after!r}"
    return m.group(1)


def export_program(path: Path) -> None:
    """A tiny model exported with dynamic batch and length dims: y = W @ mean(x)."""
    import torch
    from torch import nn
    from torch.export import Dim, export

    class MeanProject(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(3, 2)

        def forward(self, x):  # (batch, length, 3), padded with 0
            n = (x.abs().sum(-1) > 0).sum(1, keepdim=True).clamp(min=1)
            return self.proj(x.sum(1) / n)

    torch.manual_seed(0)
    model = MeanProject().eval()
    batch, length = Dim("batch", min=1, max=8), Dim("length", min=1, max=16)
    program = export(model, (torch.ones(2, 4, 3),), dynamic_shapes={"x": {0: batch, 1: length}})
    torch.export.save(program, str(path))
    torch.save(model.state_dict(), str(path.with_suffix(".weights")))


EXPORTED_TOML = """name = "exported"
program = "exported.pt2"
max_batch_size = 8
default_slo_ms = 5000

[[inputs]]
name = "x"
dtype = "float32"
shape = [-1, 3]
max_shape = [16, 3]

[[outputs]]
name = "y"
dtype = "float32"
shape = [2]
"""

# the built-in dynamic models, made tiny and small-batched so that warm-up stays short
BUILTIN_TOMLS = {
    "gen.toml": 'builtin = "generate"\nname = "gen"\nmax_batch_size = 4\n'
                "default_slo_ms = 10000\nfactory_args = { num_layers = 1 }\n",
    "seq.toml": 'builtin = "seq_encoder"\nname = "seq"\nmax_batch_size = 4\n'
                "default_slo_ms = 10000\nfactory_args = { num_layers = 1 }\n",
}  # fmt: skip


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user_repo")
    for name, text in doc_files().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    models = root / "my_models"
    export_program(models / "exported.pt2")
    (models / "exported.toml").write_text(EXPORTED_TOML)
    for name, text in BUILTIN_TOMLS.items():
        (models / name).write_text(text)
    return models


@pytest.fixture(scope="module")
def server(repo, tmp_path_factory):
    # the start command of docs/models.md, on a free port
    start = doc_block("**3. Start the server.**", "bash").splitlines()[0].split()
    assert start[:4] == ["orloj-rt", "start", "--models", "my_models"], start
    args = [str(repo) if a == "my_models" else a for a in start[2:]]
    with running_server(tmp_path_factory.mktemp("logs"), *args) as s:
        yield s


def test_the_docs_walkthrough_works_as_written(server):
    """Step 4 of docs/models.md, run as a new user would (on this server's port)."""
    code = doc_block("**4. Send requests.**", "python")
    assert DOC_ENDPOINT in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace(DOC_ENDPOINT, server.endpoint), "docs/models.md", "exec"), {})
    assert out.getvalue().split()[:3] == ["ok", "4.0", "5"], out.getvalue()


def test_the_user_model_batches_and_reports_its_work(server):
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}")
    xs = [rng.uniform(0, 1000, size=int(rng.integers(1, 257))).astype(np.float32)
          for _ in range(24)]  # fmt: skip

    async def many():
        async with AsyncClient(server.endpoint, timeout_s=60) as c:
            return await asyncio.gather(*(c.infer("sqrt", {"x": x}, app="doc") for x in xs))

    results = asyncio.run(many())
    for x, r in zip(xs, results, strict=True):
        assert r.ok, r
        assert float(r.outputs["root"]) == pytest.approx(float(np.sqrt(x.sum())), rel=1e-3)
        assert int(r.outputs["steps"]) > 0
    # every member taught a solo time, batched or not: the model reports its work (the
    # scheduler's figures reach `stats` once a second)
    samples = 0
    with Client(server.endpoint) as c:
        for _ in range(50):
            apps = c.stats()["models"]["sqrt"]["scheduler"]["apps"]
            samples = apps.get("doc", {}).get("samples", 0)
            if samples >= len(xs):
                break
            time.sleep(0.1)
    assert samples == len(xs)


def test_an_exported_program_serves_batches(server, repo):
    import torch

    rng = np.random.default_rng(SEED)
    xs = [rng.standard_normal((int(rng.integers(1, 17)), 3)).astype(np.float32)
          for _ in range(12)]  # fmt: skip

    async def many():
        async with AsyncClient(server.endpoint, timeout_s=60) as c:
            return await asyncio.gather(*(c.infer("exported", {"x": x}) for x in xs))

    results = asyncio.run(many())
    state = torch.load(str(repo / "exported.weights"))
    w, b = state["proj.weight"].numpy(), state["proj.bias"].numpy()
    for x, r in zip(xs, results, strict=True):
        assert r.ok, r
        np.testing.assert_allclose(r.outputs["y"], w @ x.mean(0) + b, rtol=1e-4, atol=1e-5)


def test_builtin_dynamic_models_serve_from_the_repository(server):
    rng = np.random.default_rng(SEED)
    with Client(server.endpoint, timeout_s=60) as c:
        models = {m["name"]: m for m in c.models()}
        assert models["gen"]["max_batch_size"] == 4
        for length in (1, 9, 30):
            r = c.infer("gen", {"prompt": generate.prompt_for_length(length, 5, rng)})
            assert r.ok, r
            assert int(r.outputs["generated"]) == length
            assert (r.outputs["tokens"][:length] > 0).all()
        r = c.infer("seq", {"tokens": seq_encoder.tokens_of_length(100, rng)}, hint=100)
        assert r.ok and int(r.outputs["length"]) == 100, r


BROKEN = {
    "a missing field": ('name = "m"\nfactory = "m.py:build"\n[[inputs]]\nname = "x"\n'
                        'shape = [4]\n[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [4]\n',
                        "inputs[0].dtype", 'add dtype = "float32"'),
    "a bad dtype": ('name = "m"\nfactory = "m.py:build"\n[[inputs]]\nname = "x"\n'
                    'dtype = "float64"\nshape = [4]\n[[outputs]]\nname = "y"\n'
                    'dtype = "float32"\nshape = [4]\n', "inputs[0] ('x').dtype",
                    'use dtype = "float32"'),
    "a factory that cannot be imported": (
        'name = "m"\nfactory = "no_such_package.models:build"\n[[inputs]]\nname = "x"\n'
        'dtype = "float32"\nshape = [4]\n[[outputs]]\nname = "y"\ndtype = "float32"\n'
        "shape = [4]\n", "factory", "install the package"),
    "a variable dim without a maximum": (
        'name = "m"\nfactory = "m.py:build"\n[[inputs]]\nname = "x"\ndtype = "float32"\n'
        'shape = [-1, 8]\n[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [4]\n',
        "inputs[0] ('x').max_shape", "add max_shape = [64, 8]"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_config_stops_the_start_with_the_file_the_field_and_the_fix(tmp_path, case):
    text, field, fix = BROKEN[case]
    (tmp_path / "m.py").write_text("def build():\n    pass\n")
    (tmp_path / "good.toml").write_text('builtin = "noop"\n')
    (tmp_path / "broken.toml").write_text(text)
    r = run_cli("start", "--models", str(tmp_path), "--cpu-workers", "1",
                "--bind", "tcp://127.0.0.1:*", timeout=60)  # fmt: skip
    assert r.returncode == 2, r.stdout + r.stderr
    assert "serving on" not in r.stdout
    msg = r.stderr.strip().splitlines()[-1]
    assert msg.startswith(f"orloj-rt start: model config {tmp_path / 'broken.toml'}"), msg
    assert f"field `{field}`" in msg and "Fix: " in msg and fix in msg, msg
