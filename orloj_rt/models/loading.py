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


def build_module(entry: ModelEntry):
    """The entry's torch.nn.Module, in eval mode without gradients."""
    module = resolve(entry.factory)(**dict(entry.factory_args))
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module
