"""The keep rules that read the weights alone: ``l1``, ``bn_gamma``, ``random``, ``first``."""

from __future__ import annotations

import torch

from autoprune.keep._base import KeepRule, register_keep_rule


def _zeros(graph) -> dict[int, torch.Tensor]:
    return {g.id: torch.zeros(g.width, dtype=torch.float64) for g in graph.groups}


@register_keep_rule
class L1(KeepRule):
    """L1 norm of each producer's output filter, divided by that producer's mean so that the
    branches of a residual group weigh alike, averaged over producers (Li et al., 2017)."""

    name = "l1"
    summary = "L1 norm of the filters (Li et al., 2017)"

    def scores(self, model, graph, *, seed=0):
        scores, counts = _zeros(graph), {g.id: 0 for g in graph.groups}
        with torch.no_grad():
            for layer in graph.layers:
                if layer.kind == "scale" or layer.out_group is None:
                    continue  # a scale is a parameter path, not a module; it scores nothing
                w = model.get_submodule(layer.name).weight
                w = w.transpose(0, 1) if layer.transposed else w  # a transposed conv's filters: its dim 1
                w = w.detach().double().abs().flatten(1).sum(1).cpu()  # scores live on the CPU
                scores[layer.out_group] += w / w.mean().clamp_min(1e-12)
                counts[layer.out_group] += 1
        return {gid: s / max(counts[gid], 1) for gid, s in scores.items()}


@register_keep_rule
class BnGamma(KeepRule):
    """|γ| of the BatchNorms over the group, averaged (network slimming, Liu et al., 2017)."""

    name = "bn_gamma"
    summary = "|γ| of the BatchNorms (Liu et al., 2017)"

    def scores(self, model, graph, *, seed=0):
        scores, counts = _zeros(graph), {g.id: 0 for g in graph.groups}
        with torch.no_grad():
            for layer in graph.layers:
                if layer.kind != "norm" or model.get_submodule(layer.name).weight is None:
                    continue
                gamma = model.get_submodule(layer.name).weight.detach().double().abs().cpu()
                if layer.in_perm is not None:
                    gamma = gamma[list(layer.in_perm)]  # in layout order
                offset = 0
                for gid in layer.in_layout:
                    n = graph.groups[gid].width
                    scores[gid] += gamma[offset:offset + n]
                    counts[gid] += 1
                    offset += n
        return {gid: s / max(counts[gid], 1) for gid, s in scores.items()}


@register_keep_rule
class Random(KeepRule):
    """A random score per channel, drawn from ``seed``."""

    name = "random"
    summary = "a seeded random score"

    def scores(self, model, graph, *, seed=0):
        gen = torch.Generator().manual_seed(seed)
        return {g.id: torch.rand(g.width, generator=gen, dtype=torch.float64) for g in graph.groups}


@register_keep_rule
class First(KeepRule):
    """The first k channels of every group: what rebuilding an architecture from scratch keeps."""

    name = "first"
    summary = "the first channels of every group"

    def scores(self, model, graph, *, seed=0):
        return {g.id: -torch.arange(g.width, dtype=torch.float64) for g in graph.groups}
