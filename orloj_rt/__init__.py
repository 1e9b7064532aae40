"""orloj-rt: a serving runtime for dynamic DNNs that batches by execution-time distributions."""

__version__ = "0.1.0"
