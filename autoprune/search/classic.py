"""One-shot width producers from the base model's weights, with a global threshold.

* ``slimming`` — Network Slimming (Liu et al., ICCV 2017): channels ranked by |γ| of their
  BatchNorm across all free groups at once; the threshold sets every layer's width.
* ``l1-global`` — filters ranked by their L1 norm, normalised by each layer's mean so that
  layers of different fan-in compare, across all free groups at once.

Both lower the threshold as far as the budget allows: the global ranking decides *where*
channels go, the budget decides *how many*. Widths are snapped down to the space's grid and
the leftover budget is filled by the usual growing step. The scores come from
:mod:`autoprune.importance` (the same rules surgery uses to pick the surviving channels).
"""

from __future__ import annotations

import numpy as np

from autoprune import cost
from autoprune.errors import SearchError
from autoprune.importance import channel_scores
from autoprune.search.base import Optimizer
from autoprune.search.budget import _floor_index


class _GlobalThreshold(Optimizer):
    needs_model = True
    one_shot = True
    rule = ""

    def __init__(self, space, max_macs, *, seed=0, model=None):
        super().__init__(space, max_macs, seed=seed, model=model)
        if model is None:
            raise SearchError(f"method '{self.name}' ranks the base model's channels and needs its weights (a base checkpoint)")

    def widths_at_budget(self, rng) -> tuple[int, ...]:
        scores = channel_scores(self.model, self.space.graph, self.rule)
        per_group = [np.sort(scores[gid].numpy())[::-1] for gid in self.space.free]
        pooled = np.sort(np.concatenate(per_group))[::-1]

        def widths_keeping(k: int) -> list[int]:
            # The k globally highest-scoring channels: a group keeps those above the k-th score.
            t = pooled[k - 1] if k > 0 else np.inf
            counts = [int((s >= t).sum()) for s in per_group]
            return [c[_floor_index(c, n)] for c, n in zip(self.space.choices, counts)]

        lo, hi = 0, len(pooled)  # widths_keeping(lo) fits (smallest network)
        if cost.macs(self.space, widths_keeping(hi)) <= self.max_macs:
            lo = hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cost.macs(self.space, widths_keeping(mid)) <= self.max_macs:
                lo = mid
            else:
                hi = mid
        return self.repair(widths_keeping(lo), rng)

    def propose(self, rng, pending):
        if self.n_told:
            return None
        widths = self.widths_at_budget(rng)
        if widths in self.taken(pending):
            return None
        return widths, self.name


class SlimmingOptimizer(_GlobalThreshold):
    name = "slimming"
    rule = "bn_gamma"


class L1GlobalOptimizer(_GlobalThreshold):
    name = "l1-global"
    rule = "l1"
