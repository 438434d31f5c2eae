"""The uniform baseline: one width multiplier for every group, the largest that fits."""

from __future__ import annotations

from autoprune.search.base import Optimizer


class UniformOptimizer(Optimizer):
    """Proposes a single candidate: every free group at about the same ratio of its width.

    No growing step: the point of this baseline is the single multiplier, so whatever budget
    the rounding leaves unused stays unused.
    """

    name = "uniform"
    one_shot = True

    def propose(self, rng, pending):
        widths = self.uniform_feasible()
        if self.n_told or widths in self.taken(pending):
            return None
        return widths, "uniform"
