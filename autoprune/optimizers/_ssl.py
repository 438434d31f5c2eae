"""``ssl``: Structured Sparsity Learning (Wen et al., NeurIPS 2016) as a one-shot width producer.

A copy of the trained base is trained for a few steps with a group-lasso penalty on every
free channel (its producers' filters, its norms' affine parameters, its depthwise filters;
see :func:`autoprune.train.channel_parameters`), applied as a proximal step after each SGD
step so that channels reach exactly zero. The widths are read off the channels that stay
non-zero, snapped down to the space's grid. The penalty strength is bisected (in log scale)
for the weakest one whose widths meet the MACs budget; the leftover budget is then filled by
ranking the surviving channels by their norm (the same global threshold as ``slimming``) and
the usual repair. When even the strongest penalty tried leaves the network above budget, its
channel norms rank the channels instead.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from autoprune import cost
from autoprune.budget import floor_index
from autoprune.errors import SearchError
from autoprune.optimizers._base import register_optimizer
from autoprune.optimizers._classic import GlobalThreshold
from autoprune.train import channel_norms, channel_parameters, group_lasso_prox, sgd_step


@register_optimizer
class SSLOptimizer(GlobalThreshold):
    name = "ssl"
    summary = "group-lasso training, strength bisected to meet the budget (SSL, Wen et al., 2016)"
    needs_data = True

    def __init__(self, space, max_macs, *, seed=0, steps: int = 100, lr: float = 0.01, batch_size: int = 64,
                 bisections: int = 6, strength: tuple[float, float] = (1e-3, 10.0)):
        super().__init__(space, max_macs, seed=seed)
        lo, hi = (float(v) for v in strength)
        if int(steps) < 1 or int(bisections) < 0 or not 0 < lo < hi or lr <= 0 or int(batch_size) < 1:
            raise SearchError("ssl needs steps ≥ 1, bisections ≥ 0, lr > 0, batch_size ≥ 1 and 0 < strength[0] < strength[1]")
        self.steps, self.lr, self.batch_size, self.bisections = int(steps), float(lr), int(batch_size), int(bisections)
        self.strength = (lo, hi)
        self.tried: list[dict] = []

    def prepare(self, context):
        if context.base is None or context.data is None:
            raise SearchError("method 'ssl' trains the base model's weights on training data: it needs both")
        lo, hi = (math.log(v) for v in self.strength)
        norms, fits = self.sparsify(context, math.exp(hi))
        if fits:
            for _ in range(self.bisections):
                mid = (lo + hi) / 2
                mid_norms, mid_fits = self.sparsify(context, math.exp(mid))
                if mid_fits:
                    hi, norms = mid, mid_norms
                else:
                    lo = mid
        self.scores = norms

    def sparsify(self, context, strength: float) -> tuple[dict, bool]:
        """Train a copy of the base at ``strength``; (channel norms per group, widths fit the budget)."""
        model = copy.deepcopy(context.base).to(context.device).train()
        graph = self.space.graph
        gids = list(self.space.free)
        groups = channel_parameters(model, graph, gids)
        widths = {gid: graph.groups[gid].width for gid in gids}
        # Plain SGD: with momentum the velocity keeps pushing a zeroed channel back out, and the
        # proximal step (lr × strength) no longer matches the gradient step it follows.
        sgd = torch.optim.SGD(model.parameters(), lr=self.lr)
        criterion = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(self.seed)
        step = 0
        while step < self.steps:
            for xb, yb in context.data.batches("train", batch_size=self.batch_size, train=True, generator=gen):
                sgd_step(model, xb.to(context.device), yb.to(context.device), sgd, criterion, context.device)
                group_lasso_prox(groups, widths, self.lr * strength)
                step += 1
                if step >= self.steps:
                    break
        norms = {gid: channel_norms(groups[gid], widths[gid]) for gid in gids}
        alive = [c[floor_index(c, int((norms[gid] > 0).sum()))] for gid, c in zip(gids, self.space.choices)]
        macs = cost.macs(self.space, alive)
        self.tried.append({"strength": strength, "macs": macs, "fits": macs <= self.max_macs})
        return norms, macs <= self.max_macs

    def report(self):
        return {"ssl": {"steps": self.steps, "tried": self.tried}}
