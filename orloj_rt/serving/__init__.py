"""The serving core: what the scheduler decides and learns, with no IO and no clock.

`ServingCore` (core.py) over one `ModelCore` (model.py) per model; step co-ordination in
steps.py; what whole-batch and step serving learn alike in learning.py. The scheduler
process (runtime/scheduler.py) and the simulator (sim/simulator.py) drive the same core.
This package imports neither zmq nor torch.
"""

from orloj_rt.serving.core import Dispatch, ServingCore
from orloj_rt.serving.model import ModelCore

__all__ = ["Dispatch", "ModelCore", "ServingCore"]
