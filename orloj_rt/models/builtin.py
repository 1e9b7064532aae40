"""The models that ship with orloj-rt, by name. Importing this does not import torch."""

from __future__ import annotations

from orloj_rt.models import early_exit, resnet_static, runtime_probes
from orloj_rt.models.spec import ModelEntry

#: every built-in model by name; a model repository can name any of them (`builtin = ...`)
BUILTIN_MODELS: dict[str, ModelEntry] = {
    e.spec.name: e
    for e in (
        early_exit.ENTRY,
        resnet_static.ENTRY,
        runtime_probes.NOOP,
        runtime_probes.TINY_MLP,
        runtime_probes.SLEEP,
    )
}

#: what `orloj-rt start` serves when no --models directory is given
DEFAULT_SERVED = ("early_exit", "resnet_static")


def default_entries() -> list[ModelEntry]:
    return [BUILTIN_MODELS[name] for name in DEFAULT_SERVED]
