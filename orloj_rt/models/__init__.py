"""Models: the spec every process shares, the built-in models, and the model repository.

`spec` and `builtin` import no torch (the frontend and scheduler use them); model code is
imported by workers through `loading`.
"""

from orloj_rt.models.spec import DTYPES, ModelEntry, ModelSpec, TensorSpec

__all__ = ["DTYPES", "ModelEntry", "ModelSpec", "TensorSpec"]
