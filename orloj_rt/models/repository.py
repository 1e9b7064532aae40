"""A model repository: a directory with one TOML config per model (`orloj-rt start --models`).

Each `*.toml` file holds one model, from one of three sources:

    name = "my_model"                   # the served name
    factory = "my_model.py:build"       # a function returning a torch.nn.Module: a path
                                        #   (relative to this file) or "package.module:build"
    # program = "my_model.pt2"          # ... or a program saved with torch.export.save
    # builtin = "early_exit"            # ... or a built-in model (inputs/outputs are its own)
    factory_args = { width = 64 }       # keyword arguments for the factory (optional)
    examples = "my_model.py:examples"   # warm-up requests: f(rng, n) -> list of dicts (optional)
    max_batch_size = 8                  # the largest batch (default 32)
    batch_buckets = [1, 2, 4, 8]        # batch sizes to pad to (default: powers of two)
    default_slo_ms = 20.0               # SLO of a request that sends none (default 100)
    work_output = "steps"               # an integer output counting per-request work (optional)
    hint = "length(x)"                  # a request's cost hint, derived from its inputs:
                                        #   length(NAME[, AXIS]) or nonzero(NAME) (optional)

    min_accuracy = 0.9                  # orloj keeps the mean accuracy of its answers in
                                        #   time at least this (optional; needs variants)

    [app_weights]                       # per-app weights (optional; an app not listed: 1)
    premium = 4.0

    [[variants]]                        # cheaper ways to serve it, with their accuracy
    name = "half"                       #   (optional; the full model comes first, as
    accuracy = 0.93                     #   `full` with accuracy 1.0 unless declared)
    max_depth = 6                       # an early-exit model stops after 6 layers, or:
    # factory_args = { width = 32 }     # ... a module of its own, built with these args
    # cost_scale = 0.5                  # its time over the full model's (optional)

    [[inputs]]                          # one table per input, in the order forward() takes them
    name = "x"
    dtype = "float32"                   # float32 float16 bfloat16 int64 int32 int8 uint8 bool
    shape = [-1, 16]                    # one request, no batch dim; -1 is a variable dim ...
    max_shape = [64, 16]                # ... and max_shape gives its largest value
    buckets = [[16, 32, 64]]            # per variable dim: sizes to pad to (optional)
    pad_value = 0                       # what padding is filled with (optional)

    [[outputs]]
    name = "y"
    dtype = "float32"
    shape = [4]

docs/models.md walks through it. Every mistake stops the start with a `ConfigError` that
names the file, the field and the fix. A factory is checked without running it: its
module must be importable (found on the path, or the file must exist) and define the
function; a program must be a torch.export archive. Nothing here imports torch.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import math
import zipfile
from pathlib import Path
from typing import Any

from orloj_rt.models.builtin import BUILTIN_MODELS, UNAVAILABLE_MODELS
from orloj_rt.models.spec import (
    DTYPES,
    MAX_BATCH_LIMIT,
    STEP_KINDS,
    HintDeclarationError,
    ModelEntry,
    ModelSpec,
    TensorSpec,
    VariantDeclarationError,
)

#: the factory that loads a `program = "...pt2"` model inside workers
EXPORTED_PROGRAM_FACTORY = "orloj_rt.models.loading:load_exported"

SOURCE_KEYS = ("factory", "program", "builtin")
ENTRY_KEYS = {"builtin", "factory", "program", "factory_args", "examples"}
TENSOR_KEYS = ("name", "dtype", "shape", "max_shape", "buckets", "pad_value")
# spec field -> (type check, what to write)
SPEC_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (str, 'a string, e.g. name = "my_model"'),
    "max_batch_size": (int, f"an integer in 1..{MAX_BATCH_LIMIT}, e.g. max_batch_size = 16"),
    "batch_buckets": (list, "increasing integers ending at max_batch_size, e.g. [1, 4, 16]"),
    "default_slo_ms": ((int, float), "a number of milliseconds > 0, e.g. default_slo_ms = 50"),
    "work_output": (str, 'the name of an integer scalar output, e.g. work_output = "steps"'),
    "step_kind": (str, 'one of "token" or "layer" (leave it out for whole batches)'),
    "ring_slots": (int, "an integer >= 1, e.g. ring_slots = 1024"),
    "cuda_graphs": (bool, "true or false"),
    "description": (str, "a string"),
    "hint": (str, 'a string naming how to derive a request\'s cost hint, e.g. '
                  'hint = "length(tokens)" or hint = "nonzero(tokens)"'),
    "inputs": (list, "[[inputs]] tables"),
    "outputs": (list, "[[outputs]] tables"),
    "variants": (list, '[[variants]] tables, each with name, accuracy and max_depth or '
                       'factory_args, e.g. [[variants]] name = "half" accuracy = 0.93 '
                       "max_depth = 6"),
    "app_weights": (dict, "a table of app = weight, e.g. [app_weights] premium = 4.0"),
    "min_accuracy": ((int, float), "a number in [0, 1], e.g. min_accuracy = 0.9"),
}
DTYPE_ALIASES = {
    "float": "float32", "float64": "float32", "double": "float32", "f32": "float32",
    "half": "float16", "f16": "float16", "bf16": "bfloat16", "int": "int64", "long": "int64",
    "i64": "int64", "i32": "int32", "byte": "uint8", "char": "int8", "boolean": "bool",
}  # fmt: skip
TENSOR_EXAMPLE = '[[inputs]]\nname = "x"\ndtype = "float32"\nshape = [4]'


class ConfigError(ValueError):
    """A wrong model config: the file, the field, what is wrong, and how to fix it."""

    def __init__(self, path: Path | str, field: str | None, problem: str, fix: str):
        self.path = str(path)
        self.field = field
        self.problem = problem
        self.fix = fix
        where = f"model config {self.path}" + (f": field `{field}`" if field else "")
        super().__init__(f"{where}: {problem}. Fix: {fix}")


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(path, None, "reading TOML needs Python 3.11+ or tomli",
                              "`pip install tomli`") from None  # fmt: skip
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"not valid TOML ({exc})",
                          "correct the syntax at the position shown") from None  # fmt: skip
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read it ({exc})", "check the path") from None


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


# ------------------------------------------------------------------ code references
def _defines(source: str, name: str) -> bool | None:
    """Whether module source defines `name` at top level; None if it cannot tell (a star
    import, a module __getattr__, a definition inside if/try/with)."""
    unsure = False
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == name:
                return True
            unsure |= node.name == "__getattr__"
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t)):
                return True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name == "*":
                    unsure = True
                elif (alias.asname or alias.name.split(".")[0]) == name:
                    return True
        elif any(
            (isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
             and n.name == name)
            or (isinstance(n, ast.Name) and n.id == name)
            or (isinstance(n, ast.alias) and (n.asname or n.name) == name)
            for n in ast.walk(node)
        ):
            unsure = True
    return None if unsure else False


def check_reference(ref: Any, base: Path, path: Path, field: str, what: str) -> str:
    """Checks a `module:function` or `file.py:function` reference without running it, and
    returns it with a file path made absolute."""
    example = f'{field} = "my_model.py:{what}" (a file beside this config) or ' \
              f'{field} = "my_package.my_module:{what}"'  # fmt: skip
    if not isinstance(ref, str) or ref.count(":") != 1 or not all(ref.split(":")):
        raise ConfigError(path, field, f"{ref!r} is not a 'module:function' reference",
                          f"write {example}")  # fmt: skip
    module, func = ref.split(":")
    if module.endswith(".py"):
        p = Path(module)
        if not p.is_absolute():
            p = base / p
        if not p.is_file():
            raise ConfigError(path, field, f"{ref!r}: no such file {p}",
                              "check the file name; a relative path is resolved against the "
                              "config's directory")  # fmt: skip
        source, origin, resolved = p.read_text(encoding="utf-8"), str(p), f"{p.resolve()}:{func}"
    else:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            spec, why = None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a parent package failed to import
            raise ConfigError(path, field, f"cannot import {module!r}: importing its package "
                              f"raised {type(exc).__name__}: {exc}",
                              "fix that package, or point to a file: " + example) from None
        else:
            why = f"no module named {module!r}"
        if spec is None:
            raise ConfigError(path, field, f"cannot import {ref!r}: {why}",
                              "install the package, check the spelling, or give a file path "
                              f"instead: {example}")  # fmt: skip
        origin = spec.origin or ""
        if not origin.endswith(".py"):  # compiled or namespace: trust it until the worker
            return ref
        source, resolved = Path(origin).read_text(encoding="utf-8"), ref
    try:
        defined = _defines(source, func)
    except SyntaxError as exc:
        raise ConfigError(path, field, f"{origin} has a syntax error (line {exc.lineno}: "
                          f"{exc.msg})", "fix the Python file") from None  # fmt: skip
    if defined is False:
        raise ConfigError(path, field, f"{origin} defines no {func!r}",
                          f"define `def {func}(...)` there, or name the function it "
                          "has")  # fmt: skip
    return resolved


# ------------------------------------------------------------------ tensors and spec
def _tensor(path: Path, group: str, i: int, t: Any) -> TensorSpec:
    field = f"{group}[{i}]"
    if not isinstance(t, dict):
        raise ConfigError(path, group, f"entry {i} is not a table",
                          f"write one [[{group}]] table per tensor:\n{TENSOR_EXAMPLE}")  # fmt: skip
    label = f"{field} ({t['name']!r})" if isinstance(t.get("name"), str) else field
    for key in t:
        if key not in TENSOR_KEYS:
            raise ConfigError(path, f"{field}.{key}", "unknown key" + _suggest(key, TENSOR_KEYS),
                              f"remove it; a tensor takes {', '.join(TENSOR_KEYS)}")  # fmt: skip
    for key, fix in (("name", f'add name = "x" to {label}'),
                     ("dtype", f'add dtype = "float32" to {label} (one of {", ".join(DTYPES)})'),
                     ("shape", f"add shape = [4] to {label}: one request's dims, without the "
                               "batch dim; -1 marks a variable dim")):  # fmt: skip
        if key not in t:
            raise ConfigError(path, f"{field}.{key}", "missing required field", fix)
    name, dtype, shape = t["name"], t["dtype"], t["shape"]
    if not isinstance(name, str) or not name:
        raise ConfigError(path, f"{field}.name", f"{name!r} is not a non-empty string",
                          'write name = "x"')  # fmt: skip
    if not isinstance(dtype, str) or dtype not in DTYPES:
        alias = DTYPE_ALIASES.get(str(dtype).lower())
        hint = f'dtype = "{alias}"' if alias else f"one of {', '.join(DTYPES)}"
        extra = " (the wire protocol has no 64-bit floats)" if dtype in ("float64", "double") \
            else ""  # fmt: skip
        raise ConfigError(path, f"{label}.dtype", f"unknown dtype {dtype!r}{extra}",
                          f"use {hint}; the dtypes are {', '.join(DTYPES)}")  # fmt: skip
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and (d >= 0 or d == -1) for d in shape
    ):
        raise ConfigError(path, f"{label}.shape", f"{shape!r} is not a list of dims",
                          "write shape = [3, 32, 32]: integers >= 0, or -1 for a variable "
                          "dim; [] for a scalar")  # fmt: skip
    max_shape = t.get("max_shape")
    if -1 in shape and max_shape is None:
        guess = [64 if d == -1 else d for d in shape]
        raise ConfigError(path, f"{label}.max_shape",
                          f"shape {shape} has a variable dim (-1) but no maximum",
                          f"add max_shape = {guess}: the largest value of each dim (fixed dims "
                          "repeat their size); it sizes the shared-memory slot")  # fmt: skip
    try:
        return TensorSpec.from_dict(t)
    except (ValueError, TypeError) as exc:
        fixes = {
            "max_shape": "give max_shape the same length as shape, with the largest value of "
                         "each variable dim and the size of each fixed dim",
            "bucket": "give one list per variable dim of increasing sizes that ends at its "
                      "max_shape value, e.g. buckets = [[16, 32, 64]]",
            "pad_value": "write a finite number, e.g. pad_value = 0",
        }  # fmt: skip
        key = next((k for k in fixes if k in str(exc)), None)
        field = f"{label}.{'buckets' if key == 'bucket' else key}" if key else label
        raise ConfigError(path, field, str(exc),
                          fixes.get(key, "see the tensor keys in docs/models.md")) from None


def _spec(path: Path, cfg: dict[str, Any], base: ModelSpec | None) -> ModelSpec:
    for key, (typ, fix) in SPEC_FIELDS.items():
        if key not in cfg:
            continue
        val = cfg[key]
        ok = isinstance(val, typ) and not (isinstance(val, bool) and typ in (int, (int, float)))
        if key == "batch_buckets" and ok:
            ok = all(isinstance(b, int) and not isinstance(b, bool) for b in val)
        if not ok:
            raise ConfigError(path, key, f"{val!r} is not {fix.split(',')[0]}", f"write {fix}")
    if "step_kind" in cfg and cfg["step_kind"] not in STEP_KINDS:
        raise ConfigError(path, "step_kind", f"unknown step kind {cfg['step_kind']!r}",
                          'use "token" (a generation loop) or "layer" (an early-exit encoder), '
                          "or leave it out")  # fmt: skip
    if "default_slo_ms" in cfg and not (math.isfinite(cfg["default_slo_ms"])
                                        and cfg["default_slo_ms"] > 0):  # fmt: skip
        raise ConfigError(path, "default_slo_ms", f"{cfg['default_slo_ms']!r} is not > 0",
                          "write a positive number of milliseconds, e.g. default_slo_ms = 50")
    fields = {k: v for k, v in cfg.items() if k in SPEC_FIELDS and k not in ("inputs", "outputs")}
    if base is not None:
        if "inputs" in cfg or "outputs" in cfg:
            key = "inputs" if "inputs" in cfg else "outputs"
            raise ConfigError(path, key, "a `builtin` model keeps its own inputs and outputs",
                              f"remove the [[{key}]] tables, or serve your own model with "
                              "`factory`")  # fmt: skip
        try:
            return base.replace(**fields)
        except HintDeclarationError as exc:
            raise ConfigError(path, "hint", exc.problem, exc.fix) from None
        except VariantDeclarationError as exc:
            raise ConfigError(path, exc.field, exc.problem, exc.fix) from None
        except ValueError as exc:
            raise ConfigError(path, _field_of(exc), str(exc), "see docs/models.md") from None
    for key in ("name", "inputs", "outputs"):
        if key not in cfg:
            fix = {"name": 'add name = "my_model": the name clients send',
                   "inputs": f"add one [[inputs]] table per input:\n{TENSOR_EXAMPLE}",
                   "outputs": "add one [[outputs]] table per output (name, dtype, shape)"}[key]
            raise ConfigError(path, key, "missing required field", fix)
        if key != "name" and not cfg[key]:
            raise ConfigError(path, key, "empty", f"declare at least one [[{key}]] table")
    inputs = tuple(_tensor(path, "inputs", i, t) for i, t in enumerate(cfg["inputs"]))
    outputs = tuple(_tensor(path, "outputs", i, t) for i, t in enumerate(cfg["outputs"]))
    try:
        return ModelSpec(inputs=inputs, outputs=outputs, **fields)
    except HintDeclarationError as exc:
        raise ConfigError(path, "hint", exc.problem, exc.fix) from None
    except VariantDeclarationError as exc:
        raise ConfigError(path, exc.field, exc.problem, exc.fix) from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(path, _field_of(exc), str(exc), "see docs/models.md") from None


def _field_of(exc: Exception) -> str | None:
    text = str(exc)
    for key in SPEC_FIELDS:
        if key in text:
            return key
    return None


# ------------------------------------------------------------------ entries
def load_entry(path: Path) -> ModelEntry:
    """One model from one TOML file; ConfigError (a ValueError) if anything is wrong."""
    path = Path(path)
    cfg = _load_toml(path)
    known = ENTRY_KEYS | set(SPEC_FIELDS)
    for key in cfg:
        if key not in known:
            raise ConfigError(path, key, "unknown key" + _suggest(key, known),
                              f"remove it; the keys are {', '.join(sorted(known))}")  # fmt: skip
    sources = [k for k in SOURCE_KEYS if k in cfg]
    if len(sources) != 1:
        problem = ("no model source" if not sources
                   else f"more than one model source ({', '.join(sources)})")  # fmt: skip
        raise ConfigError(path, " / ".join(SOURCE_KEYS), problem,
                          'give exactly one: factory = "my_model.py:build" (your code), '
                          'program = "my_model.pt2" (torch.export), or builtin = "early_exit" '
                          f"(one of {', '.join(BUILTIN_MODELS)})")  # fmt: skip
    args = cfg.get("factory_args", {})
    if not isinstance(args, dict):
        raise ConfigError(path, "factory_args", f"{args!r} is not a table",
                          "write factory_args = { width = 64 }")  # fmt: skip
    examples = cfg.get("examples")
    if examples is not None:
        examples = check_reference(examples, path.parent, path, "examples", "examples")
    source = sources[0]
    if source == "builtin":
        name = cfg["builtin"]
        if name in UNAVAILABLE_MODELS:
            raise ConfigError(path, "builtin", f"the built-in model {name!r} is not available "
                              "here", UNAVAILABLE_MODELS[name])  # fmt: skip
        if name not in BUILTIN_MODELS:
            raise ConfigError(path, "builtin", f"unknown built-in model {name!r}"
                              + _suggest(str(name), BUILTIN_MODELS),
                              f"use one of {', '.join(BUILTIN_MODELS)}")  # fmt: skip
        base = BUILTIN_MODELS[name]
        return ModelEntry(
            spec=_spec(path, cfg, base.spec),
            factory=base.factory,
            factory_args={**base.factory_args, **args},
            examples=examples or base.examples,
            config=str(path),
        )
    if source == "factory":
        factory = check_reference(cfg["factory"], path.parent, path, "factory", "build")
        spec = _spec(path, cfg, None)
        return ModelEntry(spec=spec, factory=factory, factory_args=dict(args), examples=examples,
                          config=str(path))  # fmt: skip
    program = cfg["program"]
    if not isinstance(program, str):
        raise ConfigError(path, "program", f"{program!r} is not a path",
                          'write program = "my_model.pt2"')  # fmt: skip
    p = Path(program)
    if not p.is_absolute():
        p = path.parent / p
    if not p.is_file():
        raise ConfigError(path, "program", f"no such file {p}",
                          "check the path (relative paths start at the config's directory); "
                          "make the file with torch.export.save(torch.export.export(model, "
                          "example_inputs, dynamic_shapes=...), path)")  # fmt: skip
    if not zipfile.is_zipfile(p):
        raise ConfigError(path, "program", f"{p} is not a torch.export archive",
                          "save the program with torch.export.save(exported_program, path)")
    if args:
        raise ConfigError(path, "factory_args", "an exported program takes no factory arguments",
                          "remove factory_args")  # fmt: skip
    spec = _spec(path, cfg, None)
    for v in spec.variants:
        if v.factory_args:
            raise ConfigError(path, f"variants ({v.name!r}).factory_args",
                              "an exported program takes no factory arguments",
                              "export the variant as a model of its own, or drop it")
    return ModelEntry(spec=spec, factory=EXPORTED_PROGRAM_FACTORY,
                      factory_args={"path": str(p.resolve())}, examples=examples,
                      config=str(path))  # fmt: skip


def load_repository(directory: str | Path) -> list[ModelEntry]:
    """Every `*.toml` model in `directory`, sorted by file name; names must be unique."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"--models {directory}: not a directory")
    entries = [load_entry(p) for p in sorted(d.glob("*.toml"))]
    if not entries:
        raise ValueError(f"--models {directory}: no *.toml model configs found; write one per "
                         "model (docs/models.md)")  # fmt: skip
    first: dict[str, ModelEntry] = {}
    for e in entries:
        other = first.setdefault(e.spec.name, e)
        if other is not e:
            name = e.spec.name
            raise ConfigError(e.config or directory, "name", f"the model name {name!r} is "
                              f"used twice: by {other.config} and by {e.config}",
                              "give each config its own `name` (a `builtin` without `name` is "
                              f'served under the built-in\'s name), e.g. name = "{name}_2", or '
                              "remove one of the two files")  # fmt: skip
    return entries
