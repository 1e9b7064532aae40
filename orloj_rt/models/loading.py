"""Turning import strings into callables: only workers (and tests, benchmarks) call this."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

from orloj_rt.models.spec import ModelEntry


def resolve(ref: str) -> Callable[..., Any]:
    """`package.module:function` or `/abs/file.py:function` -> the function."""
    if ":" not in ref:
        raise ValueError(f"{ref!r} must look like 'package.module:function' or 'file.py:function'")
    module_name, func_name = ref.rsplit(":", 1)
    if module_name.endswith(".py"):
        # a stable, unique module name per file, so a file is imported once per process
        key = "orloj_rt_user_" + hashlib.sha1(module_name.encode()).hexdigest()[:12]
        module = sys.modules.get(key)
        if module is None:
            spec = importlib.util.spec_from_file_location(key, module_name)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot import {module_name}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    try:
        return getattr(module, func_name)
    except AttributeError:
        raise ImportError(f"{ref!r}: module {module_name!r} has no {func_name!r}") from None


def load_exported(path: str):
    """A model exported with `torch.export` (a .pt2 file) as an eval-ready module.

    The program runs as it was exported (in eval mode, with the shapes it allows): export
    the batch dim, and every variable dim, as dynamic (`torch.export.Dim`), or batches
    other than the example's size fail. See docs/models.md."""
    import torch
    from torch import nn

    program = torch.export.load(path).module()

    class ExportedProgramModule(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.program = program

        def train(self, mode: bool = True):
            # an exported program is fixed in the mode it was exported in, and refuses
            # train()/eval(); nothing here needs switching
            self.training = mode
            return self

        def forward(self, *inputs):
            return self.program(*inputs)

    return ExportedProgramModule()


def _source_field(entry: ModelEntry) -> str:
    """The config field that named the entry's code: factory, program or builtin."""
    from orloj_rt.models.builtin import BUILTIN_MODELS
    from orloj_rt.models.repository import EXPORTED_PROGRAM_FACTORY

    if entry.factory == EXPORTED_PROGRAM_FACTORY:
        return "program"
    if any(b.factory == entry.factory for b in BUILTIN_MODELS.values()):
        return "builtin"
    return "factory"


def _build_error(entry: ModelEntry, problem: str, fix: str) -> ValueError:
    """A `ConfigError` naming the model's TOML file, or, for a model served without one,
    a ValueError naming the model: the same one line, `... . Fix: ...`."""
    from orloj_rt.models.repository import ConfigError

    problem = f"model {entry.spec.name!r}: {problem}"
    if entry.config is not None:
        return ConfigError(entry.config, _source_field(entry), problem, fix)
    return ValueError(f"{problem}. Fix: {fix}")


def _describe(value: Any) -> str:
    """`int (5)`, `torch.Tensor (tensor([...]))`: a value's type and a short repr."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    kind = type(value).__qualname__
    if type(value).__module__ != "builtins":
        kind = f"{type(value).__module__}.{kind}"
    return f"{kind} ({text})"


def build_module(entry: ModelEntry):
    """The entry's torch.nn.Module, in eval mode without gradients.

    Whatever goes wrong in the model's code (its module fails to import, the factory
    raises, or it returns something other than a torch.nn.Module) raises one error that
    names the model, its config file and the fix: a ConfigError where the entry came from
    a model repository. The worker's log shows the traceback of the code that raised."""
    from torch import nn

    ref, args = entry.factory, dict(entry.factory_args)
    func = ref.rsplit(":", 1)[-1]
    source = _source_field(entry) if entry.config is not None else "factory"
    try:
        factory = resolve(ref)
    except Exception as exc:  # noqa: BLE001 - the model's code: any import-time error
        raise _build_error(entry, f"importing {ref!r} raised {type(exc).__name__}: {exc}",
                           "fix that module so that it imports (the worker's log shows the "
                           "traceback)") from exc  # fmt: skip
    try:
        module = factory(**args)
    except Exception as exc:  # noqa: BLE001 - the model's code: any error
        why = f"{type(exc).__name__}: {exc}"
        if source == "program":
            raise _build_error(entry, f"loading the program {args.get('path')} raised {why}",
                               "save it again with torch.export.save(torch.export.export("
                               "model, example_inputs, dynamic_shapes=...), path) under this "
                               "torch version") from exc  # fmt: skip
        shown = ", ".join(f"{k}={v!r}" for k, v in args.items())
        fix = (f"fix {func}() so that it builds and returns the model when called as "
               f"{func}({shown}) (the worker's log shows the traceback)")  # fmt: skip
        if args:
            fix += ", or correct factory_args"
        raise _build_error(entry, f"calling {ref!r} as {func}({shown}) raised {why}",
                           fix) from exc  # fmt: skip
    if not isinstance(module, nn.Module):
        fix = (f"make {func}() return the model: a torch.nn.Module instance (e.g. `return "
               "MyModel()`; not the class, not a tensor)")  # fmt: skip
        if type(module).__name__ == "ExportedProgram":
            fix += ('; for a torch.export program, return program.module(), or serve the '
                    'saved file with program = "my_model.pt2"')  # fmt: skip
        raise _build_error(entry, f"{ref!r} returned {_describe(module)}, not a "
                           "torch.nn.Module", fix) from None  # fmt: skip
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
