"""Server-derived cost hints: the `hint` declaration (models/spec.py, the repository) and
its compiled function (protocol/derived_hint.py), as the frontend calls it."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import msgpack
import numpy as np
import pytest

from orloj_rt.models import seq_encoder
from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.models.repository import ConfigError, load_entry
from orloj_rt.models.spec import HintDeclarationError, ModelSpec, TensorSpec, parse_hint
from orloj_rt.protocol.derived_hint import HintDeriver, compile_hint
from orloj_rt.protocol.wire import RequestValidator

OUT = (TensorSpec("y", "float32", (2,)),)


def spec_with(hint: str | None, *inputs: TensorSpec) -> ModelSpec:
    return ModelSpec("m", inputs, OUT, hint=hint)


def wire_request(spec: ModelSpec, arrays: dict[str, np.ndarray], **fields):
    """A request as the frontend holds it after validation: byte frames, list shapes."""
    meta = [{"name": k, "dtype": str(a.dtype), "shape": list(a.shape)} for k, a in arrays.items()]
    header = msgpack.unpackb(msgpack.packb({"v": 1, "id": 1, "inputs": meta, **fields}))
    data = [a.astype(a.dtype.newbyteorder("<")).tobytes() for a in arrays.values()]
    return RequestValidator(spec).check(header, 1, data)


def derived(spec: ModelSpec, arrays: dict[str, np.ndarray], **fields):
    req = wire_request(spec, arrays, **fields)
    deriver = compile_hint(spec)
    assert isinstance(deriver, HintDeriver)
    return deriver(req.hint, req.shapes, req.frames)


# ---------------------------------------------------------------------- each form, right
@pytest.mark.parametrize("length", [1, 37, 256])
def test_seq_encoder_derives_its_length(length):
    spec = BUILTIN_MODELS["seq_encoder"].spec
    assert spec.hint == "length(tokens)" and spec.work_output == "length"
    tokens = seq_encoder.tokens_of_length(length, np.random.default_rng(length))
    hint = derived(spec, {"tokens": tokens})
    assert hint == float(length) and isinstance(hint, float)


def test_length_without_axis_reads_the_one_variable_dim():
    spec = spec_with("length(x)", TensorSpec("x", "float32", (8, -1), max_shape=(8, 50)))
    assert spec.hint_rule.axis == 1
    assert derived(spec, {"x": np.ones((8, 13), np.float32)}) == 13.0


@pytest.mark.parametrize("decl, want", [
    ("length(img, 0)", 5), ("length(img, 1)", 7), ("length(img,-2)", 7), (" length( img , 1 ) ", 7),
    ("length('img', 0)", 5),
])  # fmt: skip
def test_length_with_an_axis(decl, want):
    img = TensorSpec("img", "uint8", (-1, -1, 3), max_shape=(16, 16, 3))
    other = TensorSpec("scale", "float32", ())
    spec = spec_with(decl, other, img)  # the input is found by name, not position
    assert derived(spec, {"img": np.zeros((5, 7, 3), np.uint8),
                          "scale": np.float32(1.0).reshape(())}) == want  # fmt: skip


@pytest.mark.parametrize("dtype", ["int64", "int32", "int8", "uint8"])
def test_nonzero_counts_the_tokens_padding_aside(dtype):
    spec = spec_with("nonzero(ids)", TensorSpec("ids", dtype, (-1,), max_shape=(64,)))
    ids = np.array([5, 3, 0, 0, 9, 0, 0, 0, 1, 0], dtype)  # 4 tokens, padded with 0
    assert derived(spec, {"ids": ids}) == 4.0
    assert derived(spec, {"ids": np.zeros(6, dtype)}) == 0.0
    # large ids (beyond one byte for the wide dtypes) are tokens too
    if dtype in ("int64", "int32"):
        big = np.array([0, 70_000, -2, 0, 256], dtype)
        assert derived(spec, {"ids": big}) == 3.0


def test_nonzero_on_a_fixed_2d_input_counts_every_entry():
    spec = spec_with("nonzero(ids)", TensorSpec("ids", "int32", (3, 4)))
    ids = np.array([[1, 2, 0, 0], [7, 0, 0, 0], [0, 0, 0, 0]], np.int32)
    assert derived(spec, {"ids": ids}) == 3.0


def test_nonzero_reads_any_buffer_without_a_copy():
    deriver = compile_hint(spec_with("nonzero(ids)", TensorSpec("ids", "int64", (-1,),
                                                                  max_shape=(8,))))  # fmt: skip
    raw = np.array([1, 0, 2], "<i8").tobytes()
    for frame in (raw, memoryview(raw), bytearray(raw)):
        assert deriver(None, [[3]], [frame]) == 2.0


# ---------------------------------------------------------------------- the client's wins
@pytest.mark.parametrize("client", [2.5, 0.0, -1.0, 1e9])
def test_a_client_hint_overrides_the_derived_one(client):
    spec = BUILTIN_MODELS["seq_encoder"].spec
    tokens = seq_encoder.tokens_of_length(40, np.random.default_rng(0))
    assert derived(spec, {"tokens": tokens}) == 40.0
    assert derived(spec, {"tokens": tokens}, hint=client) == client  # 0.0 is a hint too


def test_no_declaration_no_derived_hint():
    spec = spec_with(None, TensorSpec("x", "int64", (-1,), max_shape=(8,)))
    assert compile_hint(spec) is None and spec.hint_rule is None
    assert "hint" not in spec.to_dict()


def test_the_frontend_compiles_each_models_declaration_once():
    from orloj_rt.runtime.frontend import _ModelState

    ring = SimpleNamespace(layout=SimpleNamespace(n_slots=4))
    seq = _ModelState(0, BUILTIN_MODELS["seq_encoder"].spec, ring)
    assert isinstance(seq.derive_hint, HintDeriver)
    assert seq.derive_hint(None, [[12]], [b"\0" * 96]) == 12.0
    assert _ModelState(1, BUILTIN_MODELS["resnet_static"].spec, ring).derive_hint is None


def test_a_failure_gives_no_hint_and_never_raises(caplog):
    deriver = compile_hint(spec_with("nonzero(ids)", TensorSpec("ids", "int64", (-1,),
                                                                  max_shape=(8,))))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="orloj_rt.frontend"):
        for _ in range(3):
            assert deriver(None, [[1]], [b"\1\2\3"]) is None  # not a multiple of 8 bytes
        assert deriver(None, [[1]], []) is None  # no frame at all
    assert deriver.failures == 4
    assert len(caplog.records) == 3  # the 1st, 2nd and 4th: powers of two
    assert "nonzero(ids)" in caplog.records[0].getMessage()
    length = compile_hint(spec_with("length(ids)", TensorSpec("ids", "int64", (-1,),
                                                                max_shape=(8,))))  # fmt: skip
    assert length(None, [], []) is None
    assert length(None, [[1]], [b"\0" * 8]) == 1.0  # and it goes on working


# ---------------------------------------------------------------------- the spec
def test_the_declaration_round_trips_through_to_dict_and_from_dict():
    spec = spec_with("nonzero(ids)", TensorSpec("ids", "int32", (-1,), max_shape=(9,)))
    d = spec.to_dict()
    assert d["hint"] == "nonzero(ids)"
    again = ModelSpec.from_dict(d)
    assert again.hint == "nonzero(ids)" and again.hint_rule == spec.hint_rule
    seq = BUILTIN_MODELS["seq_encoder"].spec
    assert ModelSpec.from_dict(seq.to_dict()).hint == "length(tokens)"
    assert seq.replace(max_batch_size=2).hint == "length(tokens)"


IMG = TensorSpec("img", "float32", (-1, -1, 3), max_shape=(16, 16, 3))
IDS = TensorSpec("ids", "int64", (-1,), max_shape=(64,))
FIXED = TensorSpec("f", "float32", (4,))

#: every bad declaration: what the message says is wrong, and the fix it gives
BAD = {
    "unknown form": ("size(ids)", "unknown form 'size'", 'hint = "length(NAME)"'),
    "misspelt form": ("lenght(ids)", "did you mean `length`", '"nonzero(NAME)"'),
    "unknown input": ("length(idz)", "'idz' is not an input of the model (did you mean `ids`",
                      "name one of its inputs (img, ids, f)"),
    "no input": ("nonzero()", "it names no input", "name one of its inputs"),
    "non-integer input for nonzero": ("nonzero(img)", "'img' is float32",
                                      'name an integer input (int64, int32, int8, uint8), e.g. '
                                      'hint = "nonzero(ids)"'),
    "nonzero with an axis": ("nonzero(ids, 0)", "takes an input and no axis",
                             'write hint = "nonzero(ids)"'),
    "ambiguous axis": ("length(img)", "has 2 variable dims (0, 1), so length() needs the axis",
                       'name it: hint = "length(img, 0)" or hint = "length(img, 1)"'),
    "axis out of range": ("length(img, 3)", "axis 3 is out of range",
                          'hint = "length(img, 0)" or hint = "length(img, 1)"'),
    "fixed axis": ("length(img, 2)", "dim 2 of input 'img' is fixed at 3",
                   'name a variable dim (-1 in shape): hint = "length(img, 0)"'),
    "no variable dim": ("length(f)", "has no variable dim", "use length() of an input with a "
                        "variable dim (img, ids)"),
    "axis not an integer": ("length(img, one)", "the axis 'one' is not an integer",
                            'hint = "length(img, 0)"'),
    "bad syntax": ("length ids", "is not a hint declaration", 'e.g. hint = "length(img)"'),
    "unclosed": ("length(ids", "is not a hint declaration", 'hint = "length(NAME)"'),
    "empty": ("", "is not a hint declaration", "nonzero(NAME)"),
    "three arguments": ("length(img, 0, 1)", "is not a hint declaration", "length(NAME, AXIS)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_declaration_is_refused_with_the_field_and_the_fix(case):
    decl, problem, fix = BAD[case]
    with pytest.raises(HintDeclarationError) as exc:
        spec_with(decl, IMG, IDS, FIXED)
    msg = str(exc.value)
    assert msg.startswith("model 'm': field `hint`: "), msg
    assert problem in exc.value.problem and fix in exc.value.fix, msg
    assert f". Fix: {exc.value.fix}" in msg and repr(decl) in msg
    assert isinstance(exc.value, ValueError)  # what every spec error is


def test_a_declaration_that_is_not_a_string_is_refused():
    with pytest.raises(HintDeclarationError, match=r"5 is not a string\. Fix: write hint ="):
        spec_with(5, IDS)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="field `hint`"):
        parse_hint("length(x)", (IDS,), "m")


# ---------------------------------------------------------------------- the repository
FACTORY = 'name = "mine"\nfactory = "m.py:build"\n'
TENSORS = ('[[inputs]]\nname = "img"\ndtype = "float32"\nshape = [-1, -1, 3]\n'
           'max_shape = [16, 16, 3]\n[[inputs]]\nname = "ids"\ndtype = "int64"\nshape = [-1]\n'
           'max_shape = [64]\n[[inputs]]\nname = "f"\ndtype = "float32"\nshape = [4]\n'
           '[[outputs]]\nname = "y"\ndtype = "float32"\nshape = [2]\n')  # fmt: skip


def write(tmp_path, text: str):
    (tmp_path / "m.py").write_text("def build():\n    return None\n")
    path = tmp_path / "mine.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_declaration_in_a_config_names_the_file_the_field_and_the_fix(tmp_path, case):
    decl, problem, fix = BAD[case]
    path = write(tmp_path, FACTORY + f"hint = '{decl}'\n" + TENSORS)  # a TOML literal string
    with pytest.raises(ConfigError) as exc:
        load_entry(path)
    msg = str(exc.value)
    assert exc.value.field == "hint", msg
    assert msg.startswith(f"model config {path}: field `hint`: {decl!r}"), msg
    assert problem in msg and f"Fix: {exc.value.fix}" in msg and fix in exc.value.fix, msg


@pytest.mark.parametrize("text, problem, fix", [
    ("hint = 3\n", "3 is not a string naming how to derive a request's cost hint",
     'write a string naming how to derive a request\'s cost hint, e.g. hint = "length(tokens)"'),
    ('hint = "length(token)"\n', "'token' is not an input of the model (did you mean `tokens`",
     'name one of its inputs (tokens), e.g. hint = "length(tokens)"'),
    ('hint = "nonzero(tokens, 1)"\n', "takes an input and no axis", 'hint = "nonzero(tokens)"'),
])  # fmt: skip
def test_a_bad_declaration_overriding_a_builtin_is_reported_the_same_way(
    tmp_path, text, problem, fix
):
    path = write(tmp_path, 'builtin = "seq_encoder"\n' + text)
    with pytest.raises(ConfigError, match=re.escape(problem)) as exc:
        load_entry(path)
    assert exc.value.field == "hint" and fix in exc.value.fix, str(exc.value)


def test_good_declarations_in_configs(tmp_path):
    path = write(tmp_path, FACTORY + 'hint = "length(img, 1)"\n' + TENSORS)
    spec = load_entry(path).spec
    assert spec.hint == "length(img, 1)" and spec.hint_rule.index == 0
    assert spec.hint_rule.axis == 1
    path = write(tmp_path, 'builtin = "seq_encoder"\nhint = "nonzero(tokens)"\n')
    spec = load_entry(path).spec
    assert spec.hint == "nonzero(tokens)" and spec.work_output == "length"
    tokens = np.array([4, 8, 0, 0], np.int64)
    assert derived(spec, {"tokens": tokens}) == 2.0  # the override, not the built-in's 4
    path = write(tmp_path, 'builtin = "seq_encoder"\nname = "s"\n')
    assert load_entry(path).spec.hint == "length(tokens)"  # the built-in's own


def test_the_warm_up_examples_carry_the_hint_the_frontend_would_derive():
    """A worker sends its examples' derived hints with its profile (they seed the hint
    classes): the same numbers as the frontend derives from the same requests."""
    from orloj_rt.protocol.derived_hint import example_hints
    from orloj_rt.runtime.batch_runner import examples_for

    entry = BUILTIN_MODELS["seq_encoder"]
    examples = examples_for(entry, 12)
    hints = example_hints(entry.spec, examples)
    assert hints == [float(len(ex["tokens"])) for ex in examples]
    assert hints == [derived(entry.spec, {"tokens": np.asarray(ex["tokens"], np.int64)})
                     for ex in examples]  # fmt: skip
    padded = spec_with("nonzero(t)", TensorSpec("t", "int32", (-1,), max_shape=(8,)))
    assert example_hints(padded, [{"t": [3, 4, 0, 0]}, {"t": [1, 0, 0, 0]}]) == [2.0, 1.0]
    assert example_hints(BUILTIN_MODELS["early_exit"].spec, examples[:1]) is None
