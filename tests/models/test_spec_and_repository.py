"""Model specs and the TOML model repository."""

from __future__ import annotations

import pytest

from orloj_rt.models.builtin import BUILTIN_MODELS, DEFAULT_SERVED
from orloj_rt.models.repository import load_entry, load_repository
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


@pytest.mark.parametrize(
    "text, error",
    [
        ('builtin = "nope"\n', "unknown builtin"),
        ('name = "x"\n', "exactly one of"),
        ('builtin = "noop"\nfactory = "a:b"\n', "exactly one of"),
        ('builtin = "noop"\nmax_batch_size = "big"\n', "max_batch_size"),
        ('builtin = "noop"\ncolour = "red"\n', "colour"),
        ('builtin = "noop"\n[[inputs]]\nname = "x"\n', "keeps its inputs"),
        ('name = "x"\nfactory = "missing.py:build"\n', "no such file"),
        ("this is = not toml [", "Expected '='"),
    ],
)
def test_bad_configs_name_the_file_and_the_key(tmp_path, text, error):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=error) as exc:
        load_entry(path)
    assert str(path) in str(exc.value)


def test_repository_errors(tmp_path):
    with pytest.raises(ValueError, match="no \\*.toml"):
        load_repository(tmp_path)
    (tmp_path / "a.toml").write_text('builtin = "noop"\n')
    (tmp_path / "b.toml").write_text('builtin = "noop"\n')
    with pytest.raises(ValueError, match="used twice"):
        load_repository(tmp_path)
