"""The pure-Python engine: the executable specification of the compiled one in csrc/.

Selected with ORLOJ_RT_PURE=1, or when the compiled extension is not built.
"""

from orloj_rt.engine.pure.batch_model import Inflation, batch_cdf, batch_mean
from orloj_rt.engine.pure.distribution import Distribution
from orloj_rt.engine.pure.orloj import OrlojPolicy
from orloj_rt.engine.pure.request_queue import RequestQueue

__all__ = ["Distribution", "Inflation", "OrlojPolicy", "RequestQueue", "batch_cdf", "batch_mean"]
