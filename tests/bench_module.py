"""Loading a bench/ script as a module in tests (the scripts are not a package)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench_module(script: str, name: str) -> Iterator[ModuleType]:
    """Yields bench/`script` loaded as module `name` (registered in sys.modules while in
    use: dataclasses look their module up), for a fixture to `yield from`."""
    spec = importlib.util.spec_from_file_location(name, BENCH / script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
