"""One-shot width producers from the base model's weights, with a global threshold.

* ``slimming`` — Network Slimming (Liu et al., ICCV 2017): channels ranked by |γ| of their
  BatchNorm across all free groups at once; the threshold sets every layer's width.
* ``l1-global`` — filters ranked by their L1 norm, normalised by each layer's mean so that
  layers of different fan-in compare, across all free groups at once.
* ``hrank`` — channels ranked by the mean matrix rank of their feature maps on a seeded
  sample of training images (HRank, Lin et al., CVPR 2020).
* ``activation`` — channels ranked by their mean post-activation value on the same kind of
  sample (DropNet, Min et al., 2020).

All lower the threshold as far as the budget allows: the global ranking decides *where*
channels go, the budget decides *how many*. Widths are snapped down to the space's grid and
the leftover budget is filled by the usual growing step. The scores are a keep rule's
(:mod:`autoprune.keep`): the same rules surgery uses to pick the surviving channels, a
data-driven one measured once and cached beside the base checkpoint.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from autoprune import cost
from autoprune.budget import floor_index
from autoprune.errors import SearchError
from autoprune.keep import L1, Activation, BnGamma, HRank, KeepRule
from autoprune.optimizers._base import Optimizer, register_optimizer


class GlobalThreshold(Optimizer):
    """Base of the one-shot producers that rank every channel of the base by the keep rule
    ``keep`` (a rule scored on training images needs the data: ``needs_data``)."""

    needs_base = True
    one_shot = True
    keep: ClassVar[KeepRule]

    def __init__(self, space, limits, *, seed=0):
        super().__init__(space, limits, seed=seed)
        self.scores = None

    def prepare(self, context):
        if context.base is None:
            raise SearchError(f"method '{self.name}' ranks the base model's channels and needs its weights (a base checkpoint)")
        graph = self.space.graph
        keep = self.keep.fit(context.base, graph, context.data, seed=self.seed, device=context.device,
                             cache=context.cache)
        self.scores = keep.scores(context.base, graph)

    def widths_at_budget(self, rng, limits=None) -> tuple[int, ...]:
        """The global threshold that ``limits`` (default: the search's) allow, repaired onto them."""
        limits = limits or self.limits
        scores = self.scores
        per_group = [np.sort(scores[gid].numpy())[::-1] for gid in self.space.free]
        pooled = np.sort(np.concatenate(per_group))[::-1]

        def widths_keeping(k: int) -> list[int]:
            # The k globally highest-scoring channels: a group keeps those above the k-th score.
            t = pooled[k - 1] if k > 0 else np.inf
            counts = [int((s >= t).sum()) for s in per_group]
            return [c[floor_index(c, n)] for c, n in zip(self.space.choices, counts)]

        lo, hi = 0, len(pooled)  # widths_keeping(lo) fits (smallest network)
        if cost.macs(self.space, widths_keeping(hi)) <= limits.max_macs:
            lo = hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if cost.macs(self.space, widths_keeping(mid)) <= limits.max_macs:
                lo = mid
            else:
                hi = mid
        return self.repair(widths_keeping(lo), rng, limits=limits)

    def propose(self, rng, pending):
        if self.n_told:
            return None
        return self.propose_once(self.widths_at_budget(rng), self.name, pending)

    def hold(self, widths, rng, limits):
        return self.widths_at_budget(rng, limits)


@register_optimizer
class SlimmingOptimizer(GlobalThreshold):
    name = "slimming"
    summary = "global threshold on the magnitude of BatchNorm γ (network slimming, Liu et al., 2017)"
    keep = BnGamma()


@register_optimizer
class L1GlobalOptimizer(GlobalThreshold):
    name = "l1-global"
    summary = "global ranking of normalised filter L1 norms"
    keep = L1()


@register_optimizer
class HRankOptimizer(GlobalThreshold):
    name = "hrank"
    summary = "global ranking of feature-map rank on training images (HRank, Lin et al., 2020)"
    needs_data = True
    keep = HRank()


@register_optimizer
class ActivationOptimizer(GlobalThreshold):
    name = "activation"
    summary = "global ranking of mean post-activation on training images (DropNet, Min et al., 2020)"
    needs_data = True
    keep = Activation()
