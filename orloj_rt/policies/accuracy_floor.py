"""The accuracy floor of orloj's variant choice (`min_accuracy`, issue 17): the mean
accuracy of the requests answered in time stays at or above a floor the user sets.

Accuracy scaling trades accuracy for answers; left to maximise utility alone, orloj under
deep overload serves nearly everything with the cheapest variant (0.85 on lognormal at 3x
the full model's capacity). A user who will not go below a mean accuracy says so with
`min_accuracy`, and the variants below it are rationed by a budget:

- every request answered in time with variant v earns (acc_v - floor) into the budget
  (negative for a variant below the floor), which is capped at `bank` (the credit of
  BANK_REQUESTS answers at the most accurate variant: a quiet hour does not pay for a
  whole later burst of cheap answers);
- a batch of a variant below the floor is allowed only as far as the budget, less what
  its batches in flight would take if they all finish, covers it (`allows`: how many of
  its members); the members it cannot cover are left queued for a variant at or above
  the floor.

So at every moment the answers so far, counted with those in flight, average at least
the floor, except for what the cap on the budget forgets. The floor rations; it never
forces a more accurate variant where none keeps up: then fewer are answered, each as
accurate as the floor asks. No IO here: the serving core reports each answer's variant
(`UtilityPolicy.observe_outcome`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: the budget's cap, in answers at the most accurate variant
BANK_REQUESTS = 256


class AccuracyFloor:
    """The budget above, for variants of accuracies `accuracies` (index = variant)."""

    __slots__ = ("floor", "_acc", "_bank", "credit", "pending")

    def __init__(self, floor: float, accuracies: Sequence[float]):
        floor = float(floor)
        if not (0.0 <= floor <= 1.0 and math.isfinite(floor)):
            raise ValueError(f"min_accuracy must be a number in [0, 1], got {floor!r}")
        top = max(accuracies)
        if floor > top:
            raise ValueError(f"min_accuracy {floor} is above every variant's accuracy (the "
                             f"most accurate has {top}): lower it to at most {top}")
        self.floor = floor
        self._acc = [float(a) for a in accuracies]
        self._bank = BANK_REQUESTS * (top - floor)
        self.credit = 0.0  # earned by the answers in time, capped at the bank
        self.pending = 0.0  # what the batches in flight below the floor would take

    def allows(self, variant: int, n: int) -> int:
        """How many of a batch of `n` members of `variant` the budget allows."""
        short = self.floor - self._acc[variant]
        if short <= 0:
            return n
        free = self.credit - self.pending
        if free <= 0:
            return 0
        return min(n, int(free / short + 1e-9))

    def dispatched(self, variant: int, n: int) -> None:
        short = self.floor - self._acc[variant]
        if short > 0:
            self.pending += n * short

    def answered(self, variant: int, finished: bool) -> None:
        """A member of a batch of `variant` was answered, in time or not."""
        gain = self._acc[variant] - self.floor
        if gain < 0:
            self.pending = max(0.0, self.pending + gain)
        if finished:
            self.credit = min(self._bank, self.credit + gain)
