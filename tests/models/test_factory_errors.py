"""A model factory that returns no torch.nn.Module, or raises, when a worker builds the
model: one error naming the model, its config file and the fix (issue 19, item 6)."""

from __future__ import annotations

import pytest

from orloj_rt.models.loading import build_module
from orloj_rt.models.repository import ConfigError, load_entry
from orloj_rt.models.runtime_probes import NOOP
from orloj_rt.models.spec import ModelEntry
from tests.runtime.helpers import run_cli

TENSORS = (
    '[[inputs]]\nname = "x"\ndtype = "float32"\nshape = [4]\n'
    '[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [4]\n'
)
FACTORIES = {
    # case: (the factory's body, what the message says, the fix it gives)
    "returns 5": ("    return 5\n", "returned int (5), not a torch.nn.Module",
                  "make build() return the model: a torch.nn.Module instance"),
    "raises": ('    raise ValueError("boom")\n', "raised ValueError: boom",
               "fix build() so that it builds and returns the model"),
}  # fmt: skip


def write_model(directory, body: str):
    (directory / "m.py").write_text("def build():\n" + body)
    path = directory / "five.toml"
    path.write_text('name = "five"\nfactory = "m.py:build"\n' + TENSORS)
    return path


@pytest.mark.parametrize("case", list(FACTORIES))
def test_build_module_names_the_model_the_file_and_the_fix(tmp_path, case):
    body, problem, fix = FACTORIES[case]
    path = write_model(tmp_path, body)
    with pytest.raises(ConfigError) as exc:
        build_module(load_entry(path))
    msg = str(exc.value)
    assert msg.startswith(f"model config {path}: field `factory`: model 'five': "), msg
    assert problem in msg and f"Fix: {fix}" in msg, msg
    assert exc.value.field == "factory" and fix in exc.value.fix


def test_factory_args_and_a_program_say_what_to_change(tmp_path):
    (tmp_path / "m.py").write_text("import torch\n\ndef build(width):\n"
                                   "    return torch.nn.Linear(width, width)\n")  # fmt: skip
    (tmp_path / "a.toml").write_text('name = "a"\nfactory = "m.py:build"\n'
                                     "factory_args = { widht = 4 }\n" + TENSORS)  # fmt: skip
    with pytest.raises(ConfigError, match="raised TypeError") as exc:
        build_module(load_entry(tmp_path / "a.toml"))
    assert "build(widht=4)" in str(exc.value) and exc.value.fix.endswith("correct factory_args")
    (tmp_path / "b.toml").write_text('builtin = "noop"\nfactory_args = { nope = 1 }\n')
    with pytest.raises(ConfigError, match="model 'noop': calling") as exc:
        build_module(load_entry(tmp_path / "b.toml"))
    assert exc.value.field == "builtin"
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.pt2", "w") as z:  # a zip, but no program
        z.writestr("x", "y")
    (tmp_path / "c.toml").write_text('name = "c"\nprogram = "m.pt2"\n' + TENSORS)
    with pytest.raises(ConfigError, match="loading the program .*m.pt2 raised") as exc:
        build_module(load_entry(tmp_path / "c.toml"))
    assert exc.value.field == "program" and "torch.export.save" in exc.value.fix


def test_a_model_without_a_config_file_is_named(tmp_path):
    (tmp_path / "m.py").write_text("def build():\n    return 'not a module'\n")
    entry = ModelEntry(NOOP.spec, f"{tmp_path / 'm.py'}:build")
    with pytest.raises(ValueError, match="^model 'noop': .* returned str .*Fix: make build"):
        build_module(entry)
    assert build_module(NOOP).training is False  # a good one still builds


@pytest.mark.parametrize("case", list(FACTORIES))
def test_orloj_rt_start_says_which_model_which_file_and_the_fix(tmp_path, case):
    """What the user sees: `orloj-rt start` stops, its last line names the model, the
    .toml file and the fix (before: AttributeError: 'int' object has no attribute 'eval',
    or a bare ValueError: boom)."""
    body, problem, fix = FACTORIES[case]
    path = write_model(tmp_path, body)
    r = run_cli("start", "--models", str(tmp_path), "--cpu-workers", "1",
                "--bind", "tcp://127.0.0.1:*", timeout=90)  # fmt: skip
    assert r.returncode == 2 and "serving on" not in r.stdout, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"orloj-rt start: model config {path}: field `factory`: model "
                           "'five': "), r.stderr[-3000:]  # fmt: skip
    assert problem in last and f"Fix: {fix}" in last, last
    # no traceback of ours; a raising factory's own traceback is shown (it is the user's)
    assert ("Traceback" in r.stderr) == (case == "raises"), r.stderr[-3000:]
    assert "orloj_rt/runtime" not in r.stderr, r.stderr[-3000:]
