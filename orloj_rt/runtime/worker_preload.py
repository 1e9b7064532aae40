"""What the fork server that workers are forked from imports once (supervisor.py).

torch and the worker module are imported, then every object that exists is frozen out of
the garbage collector's sight (`gc.freeze`). A forked worker's collections then neither
scan those objects (a full collection of what torch creates at import took ~150 ms on the
development VM, and a restarted worker runs one before it reports ready) nor write to
their pages, which copy-on-write would otherwise unshare from the fork server's.
"""

import gc

import torch  # noqa: F401

import orloj_rt.runtime.worker  # noqa: F401

gc.collect()
gc.freeze()
