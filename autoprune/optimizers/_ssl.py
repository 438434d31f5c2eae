"""``ssl``: Structured Sparsity Learning (Wen et al., NeurIPS 2016) as a one-shot width producer.

A copy of the trained base is trained for a few steps with a group-lasso penalty on every
free channel (its producers' filters, its norms' affine parameters, its depthwise filters;
see :func:`channel_parameters`), applied as a proximal step after each SGD
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
from autoprune.checks import check_counts
from autoprune.errors import SearchError
from autoprune.graph import ChannelGraph
from autoprune.optimizers._base import register_optimizer
from autoprune.optimizers._classic import GlobalThreshold
from autoprune.toolkit import batch_stream, rng_scope, seed_step, sgd_step


@register_optimizer
class SSLOptimizer(GlobalThreshold):
    name = "ssl"
    summary = "group-lasso training, strength bisected to meet the budget (SSL, Wen et al., 2016)"
    needs_data = True

    def __init__(self, space, limits, *, seed=0, steps: int = 100, lr: float = 0.01, batch_size: int = 64,
                 bisections: int = 6, strength: tuple[float, float] = (1e-3, 10.0)):
        super().__init__(space, limits, seed=seed)
        lo, hi = (float(v) for v in strength)
        check_counts(ssl_steps=steps, ssl_batch_size=batch_size, error=SearchError)
        check_counts(ssl_bisections=bisections, error=SearchError, minimum=0)
        if not 0 < lo < hi or lr <= 0:
            raise SearchError("ssl needs lr > 0 and 0 < strength[0] < strength[1]")
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
        stream = batch_stream(context.data, batch_size=self.batch_size, seed=self.seed, stop=self.steps,
                              device=context.device)
        with rng_scope(context.device):
            for step, xb, yb in stream:
                seed_step(self.seed, step)
                sgd_step(model, xb, yb, sgd, criterion, context.device)
                group_lasso_prox(groups, widths, self.lr * strength)
        norms = {gid: channel_norms(groups[gid], widths[gid]) for gid in gids}
        alive = [c[floor_index(c, int((norms[gid] > 0).sum()))] for gid, c in zip(gids, self.space.choices)]
        macs = cost.macs(self.space, alive)
        self.tried.append({"strength": strength, "macs": macs, "fits": macs <= self.limits.max_macs})
        return norms, macs <= self.limits.max_macs

    def report(self):
        return {"ssl": {"steps": self.steps, "tried": self.tried}}


# --------------------------------------------------------------------------------------------
# Group lasso over channels.
# --------------------------------------------------------------------------------------------


def channel_parameters(model: nn.Module, graph: ChannelGraph, gids) -> dict[int, list[tuple[torch.Tensor, torch.Tensor]]]:
    """For each group id in ``gids``, the (parameter, rows) pieces whose ``rows`` (indices,
    one per channel in order) belong to its channels: its producers' filters and biases, the
    affine parameters of its norms and the filters of its depthwise convs (the structured
    groups of SSL, Wen et al. 2016: everything a channel's removal removes on the output side)."""
    wanted = set(gids)
    out = {gid: [] for gid in gids}
    for layer in graph.layers:
        m = model.get_submodule(layer.name)
        # A transposed conv's filters are its weight's dim 1: a view puts them first.
        weight = m.weight.transpose(0, 1) if layer.transposed else m.weight
        params = [p for p in (weight, getattr(m, "bias", None)) if p is not None]
        if layer.out_group is not None and layer.out_group in wanted:
            rows = torch.arange(graph.groups[layer.out_group].width, device=params[0].device)
            out[layer.out_group] += [(p, rows) for p in params]
        elif layer.kind == "norm" or layer.depthwise:
            positions = torch.arange(params[0].shape[0]) if layer.in_perm is None else torch.tensor(layer.in_perm)
            offset = 0
            for gid in layer.in_layout:
                width = graph.groups[gid].width
                if gid in wanted:
                    out[gid] += [(p, positions[offset:offset + width].to(p.device)) for p in params]
                offset += width
    return out


def channel_norms(pieces: list[tuple[torch.Tensor, torch.Tensor]], width: int) -> torch.Tensor:
    """The L2 norm of each channel's parameters over ``pieces`` (see :func:`channel_parameters`)."""
    total = torch.zeros(width, dtype=torch.float64)
    for p, rows in pieces:
        total += p.detach()[rows].double().reshape(width, -1).square().sum(1).cpu()
    return total.sqrt()


@torch.no_grad()
def group_lasso_prox(groups: dict[int, list[tuple[torch.Tensor, torch.Tensor]]], widths: dict[int, int],
                     amount: float) -> None:
    """The proximal step of ``amount · Σ_channels ‖θ_channel‖₂`` (group lasso): every channel's
    parameters shrink by ``amount`` in norm, and a channel whose norm is below it becomes
    exactly zero. Applied after each SGD step (lr × strength), it zeroes whole channels."""
    for gid, pieces in groups.items():
        norms = channel_norms(pieces, widths[gid])
        scale = torch.clamp(1 - amount / norms.clamp_min(1e-30), min=0)
        for p, rows in pieces:
            p[rows] = p[rows] * scale.to(p.device, p.dtype).reshape(-1, *([1] * (p.dim() - 1)))
