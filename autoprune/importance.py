"""Which channels of a group to keep: one score per channel, the highest survive.

Rules:

* ``l1`` — L1 norm of each producer's output filter, divided by that producer's mean so that
  the branches of a residual group weigh alike, averaged over producers (Li et al., 2017);
* ``bn_gamma`` — |γ| of the BatchNorms over the group, averaged (Liu et al., 2017);
* ``random`` — a seeded random score;
* ``first`` — the first k channels (for rebuilding an architecture from scratch).

Scores are averaged, not summed, over a group's layers so that they compare across groups:
a residual stage with four producers must not outrank every single conv in a global
ranking. Scores only depend on the model's weights and the traced graph, never on an
optimizer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.graph import ChannelGraph

RULES = ("l1", "bn_gamma", "random", "first")
# The rules a search may use to pick the channels a candidate inherits (``first`` is for
# rebuilding from scratch, where no weights are inherited).
KEEP_RULES = ("l1", "bn_gamma", "random")


def channel_scores(model: nn.Module, graph: ChannelGraph, rule: str = "l1", seed: int = 0) -> dict[int, torch.Tensor]:
    """A score per channel for every group id (higher is kept first)."""
    if rule not in RULES:
        raise AutopruneError(f"unknown importance rule '{rule}'; expected one of {', '.join(RULES)}")
    scores = {g.id: torch.zeros(g.width, dtype=torch.float64) for g in graph.groups}
    if rule == "first":
        return {gid: -torch.arange(len(s), dtype=torch.float64) for gid, s in scores.items()}
    if rule == "random":
        gen = torch.Generator().manual_seed(seed)
        return {gid: torch.rand(len(s), generator=gen, dtype=torch.float64) for gid, s in scores.items()}
    modules = dict(model.named_modules())
    contributors = {gid: 0 for gid in scores}
    with torch.no_grad():
        for layer in graph.layers:
            if layer.kind == "scale":
                continue  # a parameter path, not a module; it scores nothing
            m = modules[layer.name]
            if rule == "l1" and layer.out_group is not None:
                w = m.weight.detach().double().abs().flatten(1).sum(1).cpu()  # scores live on the CPU
                scores[layer.out_group] += w / w.mean().clamp_min(1e-12)
                contributors[layer.out_group] += 1
            elif rule == "bn_gamma" and layer.kind == "norm" and m.weight is not None:
                gamma = m.weight.detach().double().abs().cpu()
                offset = 0
                for gid in layer.in_layout:
                    n = graph.groups[gid].width
                    scores[gid] += gamma[offset:offset + n]
                    contributors[gid] += 1
                    offset += n
    return {gid: s / max(contributors[gid], 1) for gid, s in scores.items()}


def keep_indices(model: nn.Module, graph: ChannelGraph, full_widths: list[int], rule: str = "l1",
                 seed: int = 0) -> dict[int, torch.Tensor]:
    """Sorted indices of the channels each group keeps, the top ``full_widths[g]`` by score."""
    scores = channel_scores(model, graph, rule, seed)
    out = {}
    for g in graph.groups:
        k = int(full_widths[g.id])
        if k >= g.width:
            out[g.id] = torch.arange(g.width)
        else:
            out[g.id] = _top(scores[g.id], k, g.blocks)
    return out


def _top(scores: torch.Tensor, k: int, blocks: int) -> torch.Tensor:
    """Sorted indices of the ``k`` best channels, ``k / blocks`` from each equal block."""
    per = scores.reshape(blocks, -1)
    # Stable sort so that ties (e.g. all-equal fresh weights) keep the first channels.
    order = torch.sort(-per, dim=1, stable=True).indices[:, :k // blocks]
    order = order + torch.arange(blocks)[:, None] * per.shape[1]
    return torch.sort(order.flatten()).values
