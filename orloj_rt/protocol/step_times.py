"""The step accounting both ends of a `StepProgress` keep (messages.py): the worker sums a
report's figures between two reports, the scheduler over a model's life."""

from __future__ import annotations


class StepTimes:
    """Step counts and time accounting, as a StepProgress carries them (messages.py): the
    worker sums them between two reports, the scheduler over a model's life."""

    __slots__ = ("n_steps", "members", "timed", "model_s", "overhead_s", "model_cpu_s",
                 "overhead_cpu_s", "coord_s", "coord_cpu_s")

    def __init__(self) -> None:
        self.n_steps = 0
        self.members = 0
        self.timed = 0
        self.model_s = 0.0
        self.overhead_s = 0.0
        self.model_cpu_s = 0.0
        self.overhead_cpu_s = 0.0
        self.coord_s = 0.0  # of the overhead: reading updates and sending reports
        self.coord_cpu_s = 0.0

    def add(self, other) -> None:
        """Adds another StepTimes, or a StepProgress's figures."""
        for name in StepTimes.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
