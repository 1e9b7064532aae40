"""What the runtime knows about a model without importing torch: its tensors and limits.

A `ModelSpec` is everything the frontend needs to validate a request, the ring needs to
size its slots, the scheduler needs to batch, and the worker needs to pad and bucket. The
model's code (a factory returning a `torch.nn.Module`) is named by `ModelEntry.factory`,
an import string, and is imported only inside workers.

Conventions the worker relies on (see docs/runtime.md):

- The module is called as `module(*inputs)` with one batched tensor per input, in the
  order of `spec.inputs`; each has a leading batch dimension.
- It returns one tensor, or a tuple with one tensor per entry of `spec.outputs`, in
  order, each with the batch as its leading dimension.
- A variable dimension (-1 in `shape`) is padded with the input's `pad_value` up to the
  batch's shape bucket; the model must treat padding as padding (e.g. token 0).
- `work_output`, if set, names an integer output that counts the work each request did
  (layers run, tokens generated); the scheduler learns per-request solo times from it.
- `hint`, if set, declares how the server derives a request's cost hint from its inputs
  (`length(NAME)`, `length(NAME, AXIS)`, `nonzero(NAME)`; `parse_hint`): the frontend
  computes it for every request that sends no hint of its own
  (orloj_rt/protocol/derived_hint.py).
- `variants`, if declared, are cheaper configurations of the model with their accuracy
  (`Variant`; the first is the full model): under overload the scheduler may serve a
  batch with one (its `RunBatch.variant`). A `max_depth` variant forces an early-exit
  (`layer` step) model to stop after that many layers (the module's `max_depth`
  attribute, models/steps.py); a `factory_args` variant is built as its own module.
- `app_weights` maps an app to its weight (> 0; 1 for an app not listed): a request that
  finishes in time earns its app's weight (priorities across apps, issue 17).

Specs are plain frozen dataclasses: they pickle across processes and convert to and from
dicts (`to_dict` / `from_dict`), which the `models` answer and the model repository's TOML
files use.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

#: protocol dtype -> (numpy storage dtype, itemsize). numpy has no bfloat16, so its bytes
#: are stored as uint16 and re-viewed as torch.bfloat16 inside the worker.
DTYPES: dict[str, tuple[str, int]] = {
    "float32": ("<f4", 4),
    "float16": ("<f2", 2),
    "bfloat16": ("<u2", 2),
    "int64": ("<i8", 8),
    "int32": ("<i4", 4),
    "int8": ("|i1", 1),
    "uint8": ("|u1", 1),
    "bool": ("|b1", 1),
}

#: step-level batching kinds a model may declare (used by a later scheduler mode)
STEP_KINDS = (None, "token", "layer")

#: the forms of a derived cost hint (`ModelSpec.hint`): `length(NAME[, AXIS])`, the size of
#: a variable dim of input NAME; `nonzero(NAME)`, the non-zero entries of an integer input
HINT_FORMS = ("length", "nonzero")
#: the dtypes `nonzero(NAME)` counts in
HINT_INTEGER_DTYPES = ("int64", "int32", "int8", "uint8")
_HINT_SYNTAX = re.compile(r"\s*([A-Za-z_]\w*)\s*\(\s*([^,()]*?)\s*(?:,\s*([^,()]*?)\s*)?\)\s*")

MAX_BATCH_LIMIT = 4096
MAX_NAME_LEN = 128
#: a variant's name: letters, digits, `_`, `-`, `.` (no `:` or `,`: `orloj-rt sim
#: --variants` lists them as name:cost:accuracy, comma-separated)
_VARIANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
VARIANT_KEYS = ("name", "accuracy", "cost_scale", "max_depth", "factory_args")
#: the name of the full model's variant when the declared variants leave it out
FULL_VARIANT = "full"
MAX_VARIANTS = 16
DEFAULT_RING_SLOTS = 1024


def _pow2_buckets(limit: int) -> tuple[int, ...]:
    """1, 2, 4, ... below `limit`, then `limit` itself."""
    out = []
    b = 1
    while b < limit:
        out.append(b)
        b *= 2
    out.append(limit)
    return tuple(out)


def _check_buckets(what: str, buckets: Sequence[int], limit: int) -> tuple[int, ...]:
    vals = tuple(int(b) for b in buckets)
    if not vals:
        raise ValueError(f"{what}: give at least one bucket")
    if list(vals) != sorted(set(vals)) or vals[0] < 1:
        raise ValueError(f"{what}: buckets must be increasing integers >= 1, got {list(vals)}")
    if vals[-1] != limit:
        raise ValueError(
            f"{what}: the last bucket must equal the maximum {limit}, got {list(vals)}"
        )
    return vals


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of one request (no batch dimension).

    shape:     the dims; -1 marks a variable dimension.
    max_shape: the largest accepted value of every dim (equal to `shape` where fixed);
               derived when no dim is variable.
    buckets:   for each variable dim, in order, the sizes the worker pads it up to
               (CUDA graphs are captured per bucket); default powers of two up to the max.
    pad_value: what padding is filled with.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    max_shape: tuple[int, ...] | None = None
    buckets: tuple[tuple[int, ...], ...] | None = None
    pad_value: float = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > MAX_NAME_LEN:
            raise ValueError(f"tensor name must be a non-empty str, got {self.name!r}")
        if self.dtype not in DTYPES:
            raise ValueError(
                f"tensor {self.name!r}: unknown dtype {self.dtype!r}; "
                f"choose one of {', '.join(DTYPES)}"
            )
        shape = tuple(int(d) for d in self.shape)
        for d in shape:
            if d != -1 and d < 0:
                raise ValueError(f"tensor {self.name!r}: dims are >= 0 or -1, got {list(shape)}")
        object.__setattr__(self, "shape", shape)
        variable = [i for i, d in enumerate(shape) if d == -1]
        if self.max_shape is None:
            if variable:
                raise ValueError(
                    f"tensor {self.name!r} has variable dims (-1) in {list(shape)}: "
                    "give max_shape with the largest value of each"
                )
            object.__setattr__(self, "max_shape", shape)
        else:
            mx = tuple(int(d) for d in self.max_shape)
            if len(mx) != len(shape):
                raise ValueError(
                    f"tensor {self.name!r}: max_shape {list(mx)} and shape {list(shape)} "
                    "differ in length"
                )
            for i, (d, m) in enumerate(zip(shape, mx, strict=True)):
                if d == -1 and m < 1:
                    raise ValueError(f"tensor {self.name!r}: max_shape[{i}] must be >= 1")
                if d != -1 and m != d:
                    raise ValueError(
                        f"tensor {self.name!r}: max_shape[{i}]={m} but the dim is fixed at {d}"
                    )
            object.__setattr__(self, "max_shape", mx)
        if self.buckets is None:
            bk = tuple(_pow2_buckets(self.max_shape[i]) for i in variable)
        else:
            if len(self.buckets) != len(variable):
                raise ValueError(
                    f"tensor {self.name!r}: give one bucket list per variable dim "
                    f"({len(variable)}), got {len(self.buckets)}"
                )
            bk = tuple(
                _check_buckets(f"tensor {self.name!r} dim {i}", b, self.max_shape[i])
                for i, b in zip(variable, self.buckets, strict=True)
            )
        object.__setattr__(self, "buckets", bk)
        if not math.isfinite(float(self.pad_value)):
            raise ValueError(f"tensor {self.name!r}: pad_value must be finite")

    @property
    def variable_dims(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.shape) if d == -1)

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype][1]

    @property
    def max_nbytes(self) -> int:
        return math.prod(self.max_shape) * self.itemsize

    def bucket_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """`shape` with each variable dim rounded up to its bucket."""
        out = list(shape)
        for i, sizes in zip(self.variable_dims, self.buckets, strict=True):
            for s in sizes:
                if s >= out[i]:
                    out[i] = s
                    break
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.variable_dims:
            d["max_shape"] = list(self.max_shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TensorSpec:
        known = {"name", "dtype", "shape", "max_shape", "buckets", "pad_value"}
        extra = set(d) - known
        if extra:
            raise ValueError(f"tensor spec: unknown keys {sorted(extra)}; known: {sorted(known)}")
        buckets = d.get("buckets")
        return cls(
            name=d["name"],
            dtype=d["dtype"],
            shape=tuple(d["shape"]),
            max_shape=tuple(d["max_shape"]) if d.get("max_shape") is not None else None,
            buckets=tuple(tuple(b) for b in buckets) if buckets is not None else None,
            pad_value=d.get("pad_value", 0),
        )


class HintRule(NamedTuple):
    """A parsed `hint` declaration (`parse_hint`): what the frontend computes per request."""

    form: str  # "length" or "nonzero"
    input: str  # the input's name
    index: int  # its position in the spec's inputs: the request's frame order
    dtype: str  # its dtype
    axis: int | None  # length(): the dim of one request (no batch dim), >= 0; else None


class HintDeclarationError(ValueError):
    """A wrong `hint` declaration: what is wrong (`problem`) and how to fix it (`fix`)."""

    def __init__(self, declaration: Any, problem: str, fix: str, model: str | None = None):
        self.declaration = declaration
        self.problem = problem
        self.fix = fix
        where = f"model {model!r}: " if model is not None else ""
        super().__init__(f"{where}field `hint`: {problem}. Fix: {fix}")


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _length_fix(t: TensorSpec) -> str:
    return " or ".join(f'hint = "length({t.name}, {a})"' for a in t.variable_dims)


def parse_hint(
    declaration: Any, inputs: Sequence[TensorSpec], model: str | None = None
) -> HintRule:
    """Parses and checks a derived cost hint against the model's inputs:

        length(NAME)        the size of input NAME's variable dim (-1 in its shape)
        length(NAME, AXIS)  the size of dim AXIS of one request (no batch dim; a variable
                            dim), needed when NAME has several variable dims
        nonzero(NAME)       the number of non-zero entries of integer input NAME (its
                            tokens when 0 pads)

    Raises `HintDeclarationError` (a ValueError) naming the problem and the fix."""
    names = [t.name for t in inputs]
    ex = next((t.name for t in inputs if t.variable_dims), names[0] if names else "x")
    forms = (f'hint = "length(NAME)" (the size of input NAME\'s variable dim), '
             f'"length(NAME, AXIS)" (when it has several) or "nonzero(NAME)" (the non-zero '
             f'entries of an integer input), e.g. hint = "length({ex})"')  # fmt: skip

    def fail(problem: str, fix: str) -> HintDeclarationError:
        return HintDeclarationError(declaration, problem, fix, model)

    if not isinstance(declaration, str):
        raise fail(f"{declaration!r} is not a string", f"write {forms}")
    m = _HINT_SYNTAX.fullmatch(declaration)
    if m is None:
        raise fail(f"{declaration!r} is not a hint declaration", f"write {forms}")
    form, name, axis_text = m.groups()
    if form not in HINT_FORMS:
        raise fail(f"{declaration!r}: unknown form {form!r}" + _suggest(form, HINT_FORMS),
                   f"use one of the forms: {forms}")  # fmt: skip
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        name = name[1:-1]
    if name not in names:
        what = f"{name!r} is not an input of the model" if name else "it names no input"
        raise fail(f"{declaration!r}: {what}" + _suggest(name, names),
                   f"name one of its inputs ({', '.join(names)}), e.g. hint = "
                   f'"{form}({ex})"')  # fmt: skip
    index = names.index(name)
    t = inputs[index]
    if form == "nonzero":
        if axis_text is not None:
            raise fail(f"{declaration!r}: nonzero() takes an input and no axis",
                       f'write hint = "nonzero({name})": it counts every non-zero entry of '
                       "the input")  # fmt: skip
        if t.dtype not in HINT_INTEGER_DTYPES:
            other = f', or use hint = "length({name})" for the size of its variable dim' \
                if len(t.variable_dims) == 1 else ""  # fmt: skip
            ints = [u.name for u in inputs if u.dtype in HINT_INTEGER_DTYPES]
            which = f'hint = "nonzero({ints[0]})"' if ints else "token ids padded with 0"
            raise fail(f"{declaration!r}: nonzero() counts the non-zero entries of an integer "
                       f"input, but {name!r} is {t.dtype}",
                       f"name an integer input ({', '.join(HINT_INTEGER_DTYPES)}), e.g. "
                       f"{which}{other}")  # fmt: skip
        return HintRule("nonzero", name, index, t.dtype, None)
    shape = list(t.shape)
    variable = t.variable_dims
    if not variable:
        others = [u.name for u in inputs if u.variable_dims]
        use = (f'use length() of an input with a variable dim ({", ".join(others)}), '
               if others else "")  # fmt: skip
        count = (f', or count its non-zero entries: hint = "nonzero({name})"'
                 if t.dtype in HINT_INTEGER_DTYPES else "")  # fmt: skip
        raise fail(f"{declaration!r}: input {name!r} (shape {shape}) has no variable dim "
                   "(-1), so its length is the same for every request",
                   f"{use}declare the dim variable (-1 in shape, with max_shape)"
                   f"{count}")  # fmt: skip
    if axis_text is None:
        if len(variable) > 1:
            raise fail(f"{declaration!r}: input {name!r} (shape {shape}) has "
                       f"{len(variable)} variable dims ({', '.join(map(str, variable))}), so "
                       "length() needs the axis", f"name it: {_length_fix(t)}")  # fmt: skip
        return HintRule("length", name, index, t.dtype, variable[0])
    if not re.fullmatch(r"[+-]?\d+", axis_text):
        raise fail(f"{declaration!r}: the axis {axis_text!r} is not an integer",
                   f"write {_length_fix(t)}: the dim of one request (no batch dim), counted "
                   "from 0")  # fmt: skip
    axis, ndim = int(axis_text), len(shape)
    if not -ndim <= axis < ndim:
        raise fail(f"{declaration!r}: axis {axis} is out of range for input {name!r} (shape "
                   f"{shape}: dims 0..{ndim - 1}, without the batch dim)",
                   f"write {_length_fix(t)}")  # fmt: skip
    axis %= ndim
    if axis not in variable:
        raise fail(f"{declaration!r}: dim {axis} of input {name!r} is fixed at {shape[axis]} "
                   f"(shape {shape}), so its length is the same for every request",
                   f"name a variable dim (-1 in shape): {_length_fix(t)}")  # fmt: skip
    return HintRule("length", name, index, t.dtype, axis)


class VariantDeclarationError(ValueError):
    """A wrong `[[variants]]` declaration or `app_weights` table: the field (e.g.
    `variants[1].accuracy`), what is wrong and how to fix it."""

    def __init__(self, field: str, problem: str, fix: str, model: str | None = None):
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"model {model!r}: " if model is not None else ""
        super().__init__(f"{where}field `{field}`: {problem}. Fix: {fix}")


@dataclass(frozen=True)
class Variant:
    """One way to serve a model, with its accuracy (`ModelSpec.variants`).

    name:         what the scheduler names in `RunBatch.variant` and a reply's `variant`.
    accuracy:     in [0, 1]: the share of the full model's value an answer of this variant
                  is worth (utility = app weight x accuracy for a request in time).
    cost_scale:   optional: its execution time over the full model's (e.g. 0.5); None
                  where the scheduler learns it from the batches it runs.
    max_depth:    an early-exit (`layer` step) model stops every request after at most
                  this many layers; None: not a forced depth.
    factory_args: keyword arguments merged over the model's own: the variant is built as
                  a separate module; None: the model's module.

    A variant with neither `max_depth` nor `factory_args` is the full model."""

    name: str
    accuracy: float
    cost_scale: float | None = None
    max_depth: int | None = None
    factory_args: Mapping[str, Any] | None = field(default=None, hash=False)

    @property
    def is_full(self) -> bool:
        return self.max_depth is None and not self.factory_args

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "accuracy": self.accuracy}
        for key in ("cost_scale", "max_depth", "factory_args"):
            value = getattr(self, key)
            if value is not None:
                d[key] = dict(value) if key == "factory_args" else value
        return d


def parse_variants(
    declared: Any, step_kind: str | None = None, model: str | None = None,
    factory_args_ok: bool = True,
) -> tuple[Variant, ...]:
    """Checks `[[variants]]` tables (dicts, or Variants) and returns them with the full
    model first: the declared one (no `max_depth`, no `factory_args`), else `full` with
    accuracy 1.0 and cost_scale 1.0. Empty in, empty out (no variants). Raises
    `VariantDeclarationError` naming the field and the fix."""
    if declared is None or (isinstance(declared, (list, tuple)) and not declared):
        return ()
    example = ('[[variants]]\nname = "half"\naccuracy = 0.93\nmax_depth = 6'
               if step_kind == "layer" else
               '[[variants]]\nname = "small"\naccuracy = 0.9\nfactory_args = { width = 32 }')
    if not isinstance(declared, (list, tuple)):
        raise VariantDeclarationError("variants", f"{declared!r:.60} is not a list of tables",
                                      f"write one table per variant:\n{example}", model)
    if len(declared) > MAX_VARIANTS:
        raise VariantDeclarationError("variants", f"{len(declared)} variants declared; the "
                                      f"limit is {MAX_VARIANTS}", "declare fewer", model)
    out: list[Variant] = []
    for i, v in enumerate(declared):
        where = f"variants[{i}]"
        if isinstance(v, Variant):
            v = v.to_dict()
        if not isinstance(v, Mapping):
            raise VariantDeclarationError(where, "not a table",
                                          f"write one [[variants]] table per variant:\n"
                                          f"{example}", model)  # fmt: skip
        for key in v:
            if key not in VARIANT_KEYS:
                raise VariantDeclarationError(
                    f"{where}.{key}", "unknown key" + _suggest(str(key), VARIANT_KEYS),
                    f"remove it; a variant takes {', '.join(VARIANT_KEYS)}", model)
        name = v.get("name")
        if name is None:
            raise VariantDeclarationError(f"{where}.name", "missing required field",
                                          f'add name = "half" to {where}', model)
        if not isinstance(name, str) or not _VARIANT_NAME.fullmatch(name):
            raise VariantDeclarationError(
                f"{where}.name", f"{name!r:.60} is not a variant name",
                'use 1-64 letters, digits, "_", "-" or ".", e.g. name = "half"', model)
        where = f"variants[{i}] ({name!r})"
        if "accuracy" not in v:
            raise VariantDeclarationError(
                f"{where}.accuracy", "missing required field",
                "add accuracy = 0.93: the share of the full model's value an answer of this "
                "variant is worth, in [0, 1] (measured, or declared)", model)
        acc = v["accuracy"]
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not (
            math.isfinite(acc) and 0.0 <= acc <= 1.0
        ):
            raise VariantDeclarationError(f"{where}.accuracy", f"{acc!r:.40} is not in [0, 1]",
                                          "write a number from 0 to 1, e.g. accuracy = 0.93",
                                          model)  # fmt: skip
        cost = v.get("cost_scale")
        if cost is not None and (isinstance(cost, bool) or not isinstance(cost, (int, float))
                                 or not (math.isfinite(cost) and cost > 0)):  # fmt: skip
            raise VariantDeclarationError(
                f"{where}.cost_scale", f"{cost!r:.40} is not a positive number",
                "write its execution time over the full model's, e.g. cost_scale = 0.5, or "
                "leave it out for the scheduler to learn", model)
        depth = v.get("max_depth")
        if depth is not None:
            if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
                raise VariantDeclarationError(f"{where}.max_depth",
                                              f"{depth!r:.40} is not an integer >= 1",
                                              "write the layers to stop after, e.g. "
                                              "max_depth = 6", model)  # fmt: skip
            if step_kind != "layer":
                raise VariantDeclarationError(
                    f"{where}.max_depth", "a forced maximum depth needs an early-exit model "
                    f"(step_kind = \"layer\"), and this one's step_kind is {step_kind!r}",
                    "declare the variant with factory_args (built as its own module), or "
                    'serve a `layer` step model (models/steps.py)', model)
        fargs = v.get("factory_args")
        if fargs is not None:
            if not isinstance(fargs, Mapping) or not fargs:
                raise VariantDeclarationError(f"{where}.factory_args",
                                              f"{fargs!r:.60} is not a non-empty table",
                                              "write factory_args = { width = 32 }: keyword "
                                              "arguments merged over the model's", model)
            if not factory_args_ok:
                raise VariantDeclarationError(
                    f"{where}.factory_args", "an exported program takes no factory arguments",
                    "serve the variant as its own model, or drop the variant", model)
            if depth is not None:
                raise VariantDeclarationError(
                    f"{where}", "both max_depth and factory_args",
                    "give one: max_depth (the model's own module, stopped early) or "
                    "factory_args (a module of its own)", model)
        out.append(Variant(name, float(acc), None if cost is None else float(cost), depth,
                           None if fargs is None else dict(fargs)))  # fmt: skip
    names = [v.name for v in out]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise VariantDeclarationError(f"variants[{i}].name",
                                          f"the name {n!r} is declared twice",
                                          "give each variant its own name", model)
    full = [i for i, v in enumerate(out) if v.is_full]
    if len(full) > 1:
        a, b = (out[i].name for i in full[:2])
        raise VariantDeclarationError(
            f"variants[{full[1]}]", f"{a!r} and {b!r} both declare the full model (neither "
            "max_depth nor factory_args)",
            "keep one of them, or give the other a max_depth or factory_args", model)
    if full:
        first = out.pop(full[0])
        if first.cost_scale is None:
            first = Variant(first.name, first.accuracy, 1.0)
    else:
        if FULL_VARIANT in names:
            i = names.index(FULL_VARIANT)
            raise VariantDeclarationError(
                f"variants[{i}].name", f"{FULL_VARIANT!r} names the full model, which is "
                "synthesised when no variant leaves out max_depth and factory_args",
                "rename this variant, or declare the full model itself (a variant with "
                f'neither): name = "{FULL_VARIANT}", accuracy = 1.0', model)
        first = Variant(FULL_VARIANT, 1.0, 1.0)
    return (first, *out)


def parse_min_accuracy(declared: Any, variants: tuple[Variant, ...],
                       model: str | None = None) -> float:
    """Checks `min_accuracy`: a number in [0, 1], with variants to choose from, at most
    the most accurate one's accuracy."""
    if isinstance(declared, bool) or not isinstance(declared, (int, float)) \
            or not 0.0 <= float(declared) <= 1.0:
        raise VariantDeclarationError("min_accuracy", f"{declared!r:.40} is not a number in "
                                      "[0, 1]", "e.g. min_accuracy = 0.9 (0: no floor)", model)
    floor = float(declared)
    if floor and len(variants) < 2:
        raise VariantDeclarationError("min_accuracy", "a floor needs variants to choose "
                                      "from, and none are declared",
                                      "declare [[variants]], or leave min_accuracy out", model)
    top = max((v.accuracy for v in variants), default=1.0)
    if floor > top:
        raise VariantDeclarationError("min_accuracy", f"{floor} is above every variant's "
                                      f"accuracy (the most accurate: {top})",
                                      f"set it to at most {top}", model)
    return floor


def parse_app_weights(declared: Any, model: str | None = None) -> dict[str, float]:
    """Checks an `[app_weights]` table: app name -> weight > 0 (finite)."""
    if declared is None:
        return {}
    if not isinstance(declared, Mapping):
        raise VariantDeclarationError("app_weights", f"{declared!r:.60} is not a table",
                                      'write [app_weights] with one line per app, e.g. '
                                      "premium = 4.0", model)  # fmt: skip
    out = {}
    for app, w in declared.items():
        if not isinstance(app, str) or not app or len(app) > MAX_NAME_LEN:
            raise VariantDeclarationError("app_weights", f"{app!r:.60} is not an app name",
                                          f"use a non-empty name of at most {MAX_NAME_LEN} "
                                          "characters", model)  # fmt: skip
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not (
            math.isfinite(w) and w > 0
        ):
            raise VariantDeclarationError(f"app_weights.{app}", f"{w!r:.40} is not a "
                                          "positive number", f"write e.g. {app} = 2.0 (an "
                                          "app not listed weighs 1)", model)  # fmt: skip
        out[app] = float(w)
    return out


@dataclass(frozen=True)
class ModelSpec:
    """A served model's interface and serving limits.

    max_batch_size:  the largest batch the worker runs.
    batch_buckets:   batch sizes the worker pads up to (CUDA graphs are captured per
                     bucket); default powers of two up to max_batch_size.
    default_slo_ms:  the SLO of a request that sends no `slo_ms`.
    work_output:     the integer output reporting per-request work, or None.
    step_kind:       None (whole batches), "token" or "layer": step-level batching, which
                     a later scheduler mode uses; whole-batch serving ignores it.
    ring_slots:      input-ring slots: requests admitted and not yet answered; when all
                     are taken, new requests are answered `rejected`.
    cuda_graphs:     False for models with data-dependent control flow (early exit),
                     which CUDA graphs cannot capture; they run eagerly on CUDA too.
    hint:            how the server derives a request's cost hint from its inputs
                     (`parse_hint`: "length(NAME)", "length(NAME, AXIS)", "nonzero(NAME)"),
                     or None; a hint the client sends overrides it.
    variants:        `Variant`s, the full model first (`parse_variants`); () for none.
    app_weights:     app -> weight (> 0); an app not listed weighs 1.
    min_accuracy:    the floor orloj keeps the mean accuracy of the answers in time at
                     when it chooses variants (orloj_rt/policies/accuracy_floor.py); 0: none.
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int = 32
    batch_buckets: tuple[int, ...] | None = None
    default_slo_ms: float = 100.0
    work_output: str | None = None
    step_kind: str | None = None
    ring_slots: int = DEFAULT_RING_SLOTS
    cuda_graphs: bool = True
    description: str = ""
    hint: str | None = None
    variants: tuple[Variant, ...] = ()
    app_weights: Mapping[str, float] = field(default_factory=dict, hash=False)
    min_accuracy: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > MAX_NAME_LEN:
            raise ValueError(f"model name must be a non-empty str, got {self.name!r}")
        if not self.inputs:
            raise ValueError(f"model {self.name!r}: declare at least one input")
        if not self.outputs:
            raise ValueError(f"model {self.name!r}: declare at least one output")
        for group, what in ((self.inputs, "input"), (self.outputs, "output")):
            names = [t.name for t in group]
            if len(set(names)) != len(names):
                raise ValueError(f"model {self.name!r}: duplicate {what} names {names}")
        mb = self.max_batch_size
        if not isinstance(mb, int) or not (1 <= mb <= MAX_BATCH_LIMIT):
            raise ValueError(
                f"model {self.name!r}: max_batch_size must be an integer in "
                f"[1, {MAX_BATCH_LIMIT}], got {mb!r}"
            )
        if self.batch_buckets is None:
            object.__setattr__(self, "batch_buckets", _pow2_buckets(mb))
        else:
            object.__setattr__(
                self,
                "batch_buckets",
                _check_buckets(f"model {self.name!r} batch_buckets", self.batch_buckets, mb),
            )
        slo = float(self.default_slo_ms)
        if not (math.isfinite(slo) and slo > 0):
            raise ValueError(f"model {self.name!r}: default_slo_ms must be > 0, got {slo!r}")
        object.__setattr__(self, "default_slo_ms", slo)
        if self.work_output is not None:
            match = [t for t in self.outputs if t.name == self.work_output]
            if not match:
                raise ValueError(
                    f"model {self.name!r}: work_output {self.work_output!r} is not an output"
                )
            if match[0].shape != () or not match[0].dtype.startswith(("int", "uint")):
                raise ValueError(
                    f"model {self.name!r}: work_output {self.work_output!r} must be an "
                    "integer scalar per request (shape [])"
                )
        if self.step_kind not in STEP_KINDS:
            raise ValueError(
                f"model {self.name!r}: step_kind must be one of {STEP_KINDS}, "
                f"got {self.step_kind!r}"
            )
        if not isinstance(self.ring_slots, int) or self.ring_slots < 1:
            raise ValueError(
                f"model {self.name!r}: ring_slots must be an integer >= 1, "
                f"got {self.ring_slots!r}"
            )
        if self.hint is not None:
            parse_hint(self.hint, self.inputs, self.name)
        object.__setattr__(self, "variants",
                           parse_variants(self.variants, self.step_kind, self.name))
        object.__setattr__(self, "app_weights", parse_app_weights(self.app_weights, self.name))
        object.__setattr__(self, "min_accuracy",
                           parse_min_accuracy(self.min_accuracy, self.variants, self.name))

    def variant(self, name: str) -> Variant:
        """The declared variant `name`; KeyError naming the declared ones."""
        for v in self.variants:
            if v.name == name:
                return v
        declared = ", ".join(v.name for v in self.variants) or "none"
        raise KeyError(f"model {self.name!r} has no variant {name!r} (declared: {declared})")

    @property
    def hint_rule(self) -> HintRule | None:
        """The parsed `hint` declaration, or None when the model declares none."""
        return None if self.hint is None else parse_hint(self.hint, self.inputs, self.name)

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)

    def bucket_batch(self, b: int) -> int:
        """The batch bucket a batch of `b` requests is padded up to."""
        for s in self.batch_buckets:
            if s >= b:
                return s
        raise ValueError(f"batch of {b} exceeds max_batch_size {self.max_batch_size}")

    def to_dict(self) -> dict[str, Any]:
        """The `models` answer of the wire protocol (`hint` only when declared)."""
        d: dict[str, Any] = {
            "name": self.name,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "max_batch_size": self.max_batch_size,
            "default_slo_ms": self.default_slo_ms,
        }
        if self.hint is not None:
            d["hint"] = self.hint
        if self.variants:
            d["variants"] = [{"name": v.name, "accuracy": v.accuracy} for v in self.variants]
        if self.app_weights:
            d["app_weights"] = dict(self.app_weights)
        if self.min_accuracy:
            d["min_accuracy"] = self.min_accuracy
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """From a config mapping (e.g. a TOML table); the inverse of a full spec."""
        known = {
            "name", "inputs", "outputs", "max_batch_size", "batch_buckets", "default_slo_ms",
            "work_output", "step_kind", "ring_slots", "cuda_graphs", "description", "hint",
            "variants", "app_weights", "min_accuracy",
        }  # fmt: skip
        extra = set(d) - known
        if extra:
            raise ValueError(f"model spec: unknown keys {sorted(extra)}; known: {sorted(known)}")
        kw = dict(d)
        kw["inputs"] = tuple(TensorSpec.from_dict(t) for t in d.get("inputs", ()))
        kw["outputs"] = tuple(TensorSpec.from_dict(t) for t in d.get("outputs", ()))
        if kw.get("batch_buckets") is not None:
            kw["batch_buckets"] = tuple(kw["batch_buckets"])
        if kw.get("variants") is not None:
            kw["variants"] = tuple(kw["variants"])
        return cls(**kw)

    def replace(self, **changes: Any) -> ModelSpec:
        """A copy with `changes`; derived batch buckets follow a new max_batch_size."""
        import dataclasses

        if "max_batch_size" in changes and "batch_buckets" not in changes:
            changes["batch_buckets"] = None
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelEntry:
    """A spec plus where its code lives: what the supervisor hands to every process.

    factory:  "package.module:function" or "/path/to/file.py:function"; called with
              `**factory_args`, it returns the torch.nn.Module. Imported only in workers.
    examples: optional import string of `function(rng, n) -> list[dict[str, ndarray]]`:
              representative requests for warm-up and profiling; default: random
              requests at the largest shape.
    config:   the model repository's TOML file it was read from (None for a built-in
              served without one): errors found when the worker builds the model name it.
    """

    spec: ModelSpec
    factory: str
    factory_args: Mapping[str, Any] = field(default_factory=dict)
    examples: str | None = None
    config: str | None = None
