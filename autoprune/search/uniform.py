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


class UniformFillOptimizer(Optimizer):
    """The uniform vector, then the budget the rounding left unused spent by a fixed rule.

    A fairer baseline than ``uniform``, which leaves up to a grid step of every group unused:
    starting from the single-multiplier vector, repeatedly widen by one allowed step the group
    whose step adds the fewest MACs while the vector stays within the budget (ties: the lower
    group index), until no single step fits. Deterministic: no randomness, one candidate.
    """

    name = "uniform-fill"
    one_shot = True

    def propose(self, rng, pending):
        widths = fill(self.space, self.uniform_feasible(), self.max_macs)
        if self.n_told or widths in self.taken(pending):
            return None
        return widths, "uniform-fill"


def fill(space, widths, max_macs: int) -> tuple[int, ...]:
    """``widths`` grown one grid step at a time, cheapest step first, while within ``max_macs``."""
    from autoprune import cost

    idx = [c.index(int(w)) for c, w in zip(space.choices, widths)]
    current = cost.macs(space, [c[i] for c, i in zip(space.choices, idx)])
    while True:
        best = None  # (added MACs, group)
        for g, choices in enumerate(space.choices):
            if idx[g] + 1 >= len(choices):
                continue
            idx[g] += 1
            m = cost.macs(space, [c[i] for c, i in zip(space.choices, idx)])
            idx[g] -= 1
            if m <= max_macs and (best is None or m - current < best[0]):
                best = (m - current, g)
        if best is None:
            return tuple(c[i] for c, i in zip(space.choices, idx))
        idx[best[1]] += 1
        current += best[0]
