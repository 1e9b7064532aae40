"""Accuracy-scaling variants and per-app weights in the model repository (issue 17):
declarations, what a wrong one says, and variants running on a real model."""

from __future__ import annotations

import numpy as np
import pytest

from orloj_rt.models import early_exit
from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.models.repository import ConfigError, load_entry
from orloj_rt.models.spec import FULL_VARIANT, ModelSpec, TensorSpec

X = (TensorSpec("x", "float32", (2,)),)

OWN = """name = "m"
factory = "m.py:build"
step_kind = "layer"
[[inputs]]
name = "x"
dtype = "float32"
shape = [2]
[[outputs]]
name = "y"
dtype = "float32"
shape = [2]
"""


def _write(tmp_path, text: str, name: str = "m.toml"):
    (tmp_path / "m.py").write_text("def build():\n    pass\n")
    p = tmp_path / name
    p.write_text(text)
    return p


def test_the_full_model_comes_first_synthesised_or_declared():
    s = ModelSpec("m", X, X, step_kind="layer",
                  variants=[{"name": "d2", "accuracy": 0.8, "max_depth": 2}])  # fmt: skip
    assert [v.name for v in s.variants] == [FULL_VARIANT, "d2"]
    full, d2 = s.variants
    assert (full.accuracy, full.cost_scale, full.max_depth) == (1.0, 1.0, None)
    assert (d2.accuracy, d2.cost_scale, d2.max_depth) == (0.8, None, 2)
    s = ModelSpec("m", X, X, step_kind="layer", variants=[
        {"name": "d2", "accuracy": 0.8, "max_depth": 2, "cost_scale": 0.4},
        {"name": "whole", "accuracy": 0.97}])  # fmt: skip
    assert [v.name for v in s.variants] == ["whole", "d2"]
    assert s.variants[0].accuracy == 0.97 and s.variants[1].cost_scale == 0.4
    assert ModelSpec("m", X, X).variants == ()
    # declarations survive a replace() (a repository override) and the `models` answer
    assert s.replace(max_batch_size=4).variants == s.variants
    assert s.to_dict()["variants"] == [{"name": "whole", "accuracy": 0.97},
                                       {"name": "d2", "accuracy": 0.8}]  # fmt: skip
    assert s.variant("d2").max_depth == 2
    with pytest.raises(KeyError, match="declared: whole, d2"):
        s.variant("nope")


def test_the_built_in_early_exit_models_declare_forced_depths():
    names = [v.name for v in BUILTIN_MODELS["early_exit"].spec.variants]
    assert names == ["full", "half", "quarter"]
    assert [v.max_depth for v in BUILTIN_MODELS["early_exit"].spec.variants] == [None, 6, 3]
    if "minilm_early_exit" in BUILTIN_MODELS:
        vs = BUILTIN_MODELS["minilm_early_exit"].spec.variants
        assert vs and vs[0].max_depth is None and all(v.max_depth for v in vs[1:])


def test_a_repository_declares_variants_and_app_weights(tmp_path):
    p = _write(tmp_path, 'builtin = "early_exit"\n[app_weights]\npremium = 4\n'
               '[[variants]]\nname = "d4"\naccuracy = 0.9\nmax_depth = 4\ncost_scale = 0.4\n')
    spec = load_entry(p).spec
    assert [(v.name, v.max_depth) for v in spec.variants] == [("full", None), ("d4", 4)]
    assert spec.app_weights == {"premium": 4.0}
    assert spec.min_accuracy == 0.0  # no floor unless declared
    p = _write(tmp_path, 'builtin = "early_exit"\nmin_accuracy = 0.9\n', "floor.toml")
    assert load_entry(p).spec.min_accuracy == 0.9


@pytest.mark.parametrize(
    "extra, field, fix",
    [
        ('[[variants]]\nname = "a"\naccuracy = 0.9\nmax_depth = 2\ndepth = 3\n',
         "variants[0].depth", "remove it; a variant takes name, accuracy"),
        ('[[variants]]\nname = "a"\nmax_depth = 2\n',
         "variants[0] ('a').accuracy", "add accuracy = 0.93"),
        ('[[variants]]\nname = "a"\naccuracy = 1.5\nmax_depth = 2\n',
         "variants[0] ('a').accuracy", "a number from 0 to 1"),
        ('[[variants]]\nname = "a"\naccuracy = 0.9\nmax_depth = 2\n'
         '[[variants]]\nname = "a"\naccuracy = 0.8\nmax_depth = 1\n',
         "variants[1].name", "give each variant its own name"),
        ('[[variants]]\nname = "a:b"\naccuracy = 0.9\nmax_depth = 2\n',
         "variants[0].name", "letters, digits"),
        ('[[variants]]\nname = "a"\naccuracy = 0.9\nmax_depth = 0\n',
         "variants[0] ('a').max_depth", "max_depth = 6"),
        ('[[variants]]\nname = "a"\naccuracy = 0.9\nmax_depth = 2\ncost_scale = -1\n',
         "variants[0] ('a').cost_scale", "cost_scale = 0.5"),
        ('[[variants]]\nname = "a"\naccuracy = 0.9\n[[variants]]\nname = "b"\n'
         'accuracy = 0.8\n', "variants[1]", "keep one of them"),
        ('[app_weights]\npremium = 0\n', "app_weights.premium", "premium = 2.0"),
        ('variants = 3\n', "variants", "[[variants]] tables"),
        ('min_accuracy = 1.5\n', "min_accuracy", "min_accuracy = 0.9"),
        ('min_accuracy = 0.9\n', "min_accuracy", "declare [[variants]]"),
    ],
)
def test_a_bad_variant_declaration_stops_the_start(tmp_path, extra, field, fix):
    # a top-level key goes before the tables; a table anywhere after them
    text = OWN.replace("[[inputs]]", extra + "[[inputs]]", 1) if "=" in extra.split("\n")[0] \
        else OWN + extra  # fmt: skip
    p = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_entry(p)
    err = info.value
    assert err.path == str(p) and err.field == field, str(err)
    assert fix in err.fix, str(err)
    assert str(p) in str(err) and f"field `{field}`" in str(err) and "Fix:" in str(err)


def test_a_forced_depth_needs_an_early_exit_model(tmp_path):
    p = _write(tmp_path, OWN.replace('step_kind = "layer"\n', "")
               + '[[variants]]\nname = "a"\naccuracy = 0.9\nmax_depth = 2\n')
    with pytest.raises(ConfigError) as info:
        load_entry(p)
    assert info.value.field == "variants[0] ('a').max_depth"
    assert "factory_args" in info.value.fix


def test_variant_runners_force_the_depth_and_put_it_back():
    pytest.importorskip("torch")
    from orloj_rt.runtime.batch_runner import make_runner, variant_runners

    entry = BUILTIN_MODELS["early_exit"]
    module = early_exit.build()
    full = make_runner(entry, module, "cpu")
    runners = variant_runners(entry, module, full, "cpu")
    assert set(runners) == {"full", "half", "quarter"} and runners["full"] is full
    rng = np.random.default_rng(0)
    members = [[early_exit.tokens_for_depth(d, 8, rng)] for d in (2, 5, 9, 12)]
    depths = {n: runners[n].run(members)[1] for n in ("quarter", "full", "half")}
    assert depths == {"quarter": [2, 3, 3, 3], "full": [2, 5, 9, 12], "half": [2, 5, 6, 6]}
    assert module.max_depth is None  # the variant's depth does not outlive its batch
    # a shallower variant computes the full model's layers, only fewer of them
    (lf, _), _ = runners["full"].run(members[:1])
    (lq, _), _ = runners["quarter"].run(members[:1])
    np.testing.assert_allclose(lf, lq, rtol=1e-5, atol=1e-6)


def test_a_forced_depth_beyond_the_models_layers_stops_the_worker():
    pytest.importorskip("torch")
    from orloj_rt.runtime.batch_runner import make_runner, variant_runners

    base = BUILTIN_MODELS["early_exit"]
    spec = base.spec.replace(variants=[{"name": "deep", "accuracy": 0.9, "max_depth": 20}])
    entry = type(base)(spec=spec, factory=base.factory, examples=base.examples)
    module = early_exit.build()
    with pytest.raises(ValueError, match="declare max_depth in 1..12"):
        variant_runners(entry, module, make_runner(entry, module, "cpu"), "cpu")


def test_a_factory_args_variant_runs_a_module_of_its_own(tmp_path):
    pytest.importorskip("torch")
    from orloj_rt.models.loading import build_module
    from orloj_rt.runtime.batch_runner import make_runner, variant_runners

    p = _write(tmp_path, 'builtin = "tiny_mlp"\n[[variants]]\nname = "other"\naccuracy = 0.5\n'
               "factory_args = { seed = 1 }\n")
    entry = load_entry(p)
    module = build_module(entry)
    full = make_runner(entry, module, "cpu")
    runners = variant_runners(entry, module, full, "cpu")
    assert runners["full"] is full and runners["other"].module is not module
    assert runners["other"].entry.factory_args == {"seed": 1}
    x = [[np.linspace(-1, 1, 16, dtype=np.float32)]]
    (a,), _ = runners["full"].run(x)
    (b,), _ = runners["other"].run(x)
    assert not np.allclose(a, b)  # other weights: another model
