"""A model repository: a directory with one TOML config per model (`orloj-rt start --models`).

This is the minimal form; exported programs and hot reload come later. Each `*.toml` file
holds one model:

    name = "short_exit"                 # the served name
    builtin = "early_exit"              # start from a built-in model's spec and code ...
    # factory = "pkg.module:build"      # ... or name a factory (a path ending in .py is
    # factory = "my_model.py:build"     #     resolved against this file's directory)
    # factory_args = { width = 64 }     # keyword arguments for the factory
    # examples = "my_model.py:examples" # warm-up requests: f(rng, n) -> list of dicts
    max_batch_size = 8                  # any ModelSpec field (see orloj_rt/models/spec.py)
    default_slo_ms = 20.0

    [[inputs]]                          # required with `factory`; not allowed with `builtin`
    name = "x"
    dtype = "float32"
    shape = [-1, 16]
    max_shape = [64, 16]

Errors name the file and the key to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orloj_rt.models.builtin import BUILTIN_MODELS
from orloj_rt.models.spec import ModelEntry, ModelSpec

ENTRY_KEYS = {"builtin", "factory", "factory_args", "examples"}


def _load_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise RuntimeError(
                f"{path}: reading TOML needs Python 3.11+ or `pip install tomli`"
            ) from None
    with open(path, "rb") as f:
        return tomllib.load(f)


def _resolve_path(ref: str | None, base: Path) -> str | None:
    """Makes a `file.py:function` reference absolute; leaves `package.module:fn` alone."""
    if ref is None:
        return None
    if ":" not in ref:
        raise ValueError(f"{ref!r} must look like 'package.module:function' or 'file.py:function'")
    module, func = ref.rsplit(":", 1)
    if module.endswith(".py"):
        p = Path(module)
        if not p.is_absolute():
            p = base / p
        if not p.is_file():
            raise ValueError(f"{ref!r}: no such file {p}")
        return f"{p.resolve()}:{func}"
    return ref


def load_entry(path: Path) -> ModelEntry:
    """One model from one TOML file."""
    path = Path(path)
    try:
        cfg = _load_toml(path)
        spec_cfg = {k: v for k, v in cfg.items() if k not in ENTRY_KEYS}
        builtin = cfg.get("builtin")
        factory = cfg.get("factory")
        if (builtin is None) == (factory is None):
            raise ValueError("give exactly one of `builtin` (a built-in model) or `factory`")
        if builtin is not None:
            if builtin not in BUILTIN_MODELS:
                raise ValueError(
                    f"unknown builtin {builtin!r}; choose one of {', '.join(BUILTIN_MODELS)}"
                )
            if "inputs" in spec_cfg or "outputs" in spec_cfg:
                raise ValueError("a `builtin` model keeps its inputs and outputs: remove them")
            base = BUILTIN_MODELS[builtin]
            spec = base.spec.replace(**spec_cfg)
            return ModelEntry(
                spec=spec,
                factory=base.factory,
                factory_args={**base.factory_args, **cfg.get("factory_args", {})},
                examples=_resolve_path(cfg.get("examples"), path.parent) or base.examples,
            )
        factory = _resolve_path(factory, path.parent)
        return ModelEntry(
            spec=ModelSpec.from_dict(spec_cfg),
            factory=factory,
            factory_args=dict(cfg.get("factory_args", {})),
            examples=_resolve_path(cfg.get("examples"), path.parent),
        )
    except (ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise ValueError(f"model config {path}: {exc}") from None
    except Exception as exc:  # tomllib.TOMLDecodeError and friends
        raise ValueError(f"model config {path}: {type(exc).__name__}: {exc}") from None


def load_repository(directory: str | Path) -> list[ModelEntry]:
    """Every `*.toml` model in `directory`, sorted by file name; names must be unique."""
    d = Path(directory)
    if not d.is_dir():
        raise ValueError(f"--models {directory}: not a directory")
    entries = [load_entry(p) for p in sorted(d.glob("*.toml"))]
    if not entries:
        raise ValueError(f"--models {directory}: no *.toml model configs found")
    seen: dict[str, int] = {}
    for e in entries:
        seen[e.spec.name] = seen.get(e.spec.name, 0) + 1
    dup = [n for n, c in seen.items() if c > 1]
    if dup:
        raise ValueError(f"--models {directory}: model names used twice: {dup}")
    return entries
