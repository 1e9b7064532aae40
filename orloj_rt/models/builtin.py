"""The models that ship with orloj-rt, by name. Importing this does not import torch."""

from __future__ import annotations

from orloj_rt.models import (
    early_exit,
    generate,
    minilm_early_exit,
    resnet_static,
    runtime_probes,
    seq_encoder,
)
from orloj_rt.models.spec import ModelEntry

#: every built-in model by name; a model repository can name any of them (`builtin = ...`)
BUILTIN_MODELS: dict[str, ModelEntry] = {
    e.spec.name: e
    for e in (
        early_exit.ENTRY,
        seq_encoder.ENTRY,
        generate.ENTRY,
        resnet_static.ENTRY,
        runtime_probes.NOOP,
        runtime_probes.TINY_MLP,
        runtime_probes.SLEEP,
    )
}

#: built-in models that cannot be offered here, by name -> why and how to fix it
UNAVAILABLE_MODELS: dict[str, str] = {}

# real weights from a package: offered only where the package is installed (nothing is
# downloaded at run time)
if minilm_early_exit.available():
    BUILTIN_MODELS[minilm_early_exit.SPEC.name] = minilm_early_exit.ENTRY
else:
    UNAVAILABLE_MODELS[minilm_early_exit.SPEC.name] = (
        f"its weights come from the package {minilm_early_exit.PACKAGE!r}, which is not "
        f"installed; install it with `{minilm_early_exit.INSTALL_HINT}`"
    )

#: what `orloj-rt start` serves when no --models directory is given
DEFAULT_SERVED = ("early_exit", "resnet_static")


def default_entries() -> list[ModelEntry]:
    return [BUILTIN_MODELS[name] for name in DEFAULT_SERVED]
