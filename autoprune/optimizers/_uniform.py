"""The uniform baseline: one width multiplier for every group, the largest that fits."""

from __future__ import annotations

from autoprune import cost
from autoprune.budget import Limits
from autoprune.optimizers._base import Optimizer, register_optimizer


@register_optimizer
class UniformOptimizer(Optimizer):
    """Proposes a single candidate: every free group at about the same ratio of its width.

    No growing step: the point of this baseline is the single multiplier, so whatever budget
    the rounding leaves unused stays unused.
    """

    name = "uniform"
    summary = "the single width multiplier that meets the budget: the baseline to beat"
    one_shot = True

    def propose(self, rng, pending):
        return self.propose_once(self.uniform_feasible(), "uniform", pending)

    def hold(self, widths, rng, limits):
        return self.uniform_feasible(limits)


@register_optimizer
class UniformFillOptimizer(Optimizer):
    """The uniform vector, then grown back until the budget is used: a fair baseline.

    The single multiplier leaves whatever the grid rounding does not fit unused (ResNet-20
    at a 0.4 budget used 0.348 of the MACs), so a searched winner that fills the budget gets
    up to a quarter more compute than it. This baseline starts from the same vector and, by a
    fixed rule, repeatedly widens by one grid step the group whose step adds the fewest
    MACs (ties: the earlier group) while the result still fits.
    """

    name = "uniform-fill"
    summary = "the uniform vector grown back one grid step at a time (cheapest step first) until the budget is used"
    one_shot = True

    def propose(self, rng, pending):
        return self.propose_once(self.filled(), "uniform-fill", pending)

    def hold(self, widths, rng, limits):
        return self.filled(limits)

    def filled(self, limits: Limits | None = None):
        """The uniform vector grown until nothing more fits ``limits`` (default: the search's)."""
        limits = limits or self.limits
        return fill_budget(self.space, self.uniform_feasible(limits), limits)


def fill_budget(space, widths, limits: Limits) -> tuple[int, ...]:
    """``widths`` grown one grid step at a time, the cheapest fitting step first, until none fits
    ``limits`` (the MACs limit and, with a table, the latency limit)."""
    idx = [c.index(int(w)) for c, w in zip(space.choices, widths)]
    current = cost.macs(space, widths)
    while True:
        best = None
        for g, c in enumerate(space.choices):
            if idx[g] + 1 >= len(c):
                continue
            trial = [ch[i + (j == g)] for j, (ch, i) in enumerate(zip(space.choices, idx))]
            added = cost.macs(space, trial) - current
            if (current + added <= limits.max_macs and (best is None or added < best[0])
                    and (limits.table is None or limits.allows(space, trial))):
                best = (added, g)
        if best is None:
            return tuple(c[i] for c, i in zip(space.choices, idx))
        idx[best[1]] += 1
        current += best[0]
