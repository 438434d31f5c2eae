"""Which channels of a group to keep: one score per channel, the highest survive.

Rules:

* ``l1`` — L1 norm of each producer's output filter, divided by that producer's mean so that
  the branches of a residual group weigh alike, averaged over producers (Li et al., 2017);
* ``bn_gamma`` — |γ| of the BatchNorms over the group, averaged (Liu et al., 2017);
* ``random`` — a seeded random score;
* ``first`` — the first k channels (for rebuilding an architecture from scratch).

Data-driven rules, scored on feature maps sampled from training data (the sampling lives in
:mod:`autoprune.criteria`; this module only turns the sampled tensors into scores):

* ``hrank`` — mean matrix rank of each channel's feature maps (HRank, Lin et al., 2020);
* ``activation`` — mean post-activation value (DropNet, Min et al., 2020);
* ``apoz`` — one minus the average percentage of zeros after the activation (Hu et al., 2016);
* ``reconstruct`` — the input channels a LASSO regression keeps longest when it reconstructs
  each consuming layer's output (channel pruning, He et al., 2017); surgery then refits the
  consumer's kept weights by least squares (:func:`refit_weights`).

Rules that need data are scored once into a :class:`Scores` and handed to
:func:`keep_indices` (and :func:`autoprune.surgery.materialise`) in place of the rule name.

Scores are averaged, not summed, over a group's layers so that they compare across groups:
a residual stage with four producers must not outrank every single conv in a global
ranking. Scores only depend on the model's weights and the traced graph, never on an
optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from autoprune.errors import AutopruneError
from autoprune.graph import ChannelGraph, follow_indices, range_kept

# The rules scored from sampled training data rather than from the weights alone.
DATA_RULES = ("hrank", "activation", "apoz", "reconstruct")
RULES = ("l1", "bn_gamma", "random", "first") + DATA_RULES
# The rules a search may use to pick the channels a candidate inherits (``first`` is for
# rebuilding from scratch, where no weights are inherited).
KEEP_RULES = ("l1", "bn_gamma", "random") + DATA_RULES


@dataclass(frozen=True)
class Scores:
    """The scores of a data-driven rule for one base model: a score per channel for every
    group id, and (``reconstruct``) the second moment ``E[x xᵀ]`` of each consuming layer's
    sampled input patches, by layer name, from which surgery refits the kept weights."""

    rule: str
    by_group: dict[int, torch.Tensor]
    moments: dict[str, torch.Tensor] = field(default_factory=dict)


def channel_scores(model: nn.Module, graph: ChannelGraph, rule: str | Scores = "l1",
                   seed: int = 0) -> dict[int, torch.Tensor]:
    """A score per channel for every group id (higher is kept first)."""
    if isinstance(rule, Scores):
        return rule.by_group
    if rule not in RULES:
        raise AutopruneError(f"unknown importance rule '{rule}'; expected one of {', '.join(RULES)}")
    if rule in DATA_RULES:
        raise AutopruneError(f"rule '{rule}' is scored from training data: compute it once with "
                             "autoprune.criteria.data_scores and pass the Scores in its place")
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
                if layer.in_perm is not None:
                    gamma = gamma[list(layer.in_perm)]  # in layout order
                offset = 0
                for gid in layer.in_layout:
                    n = graph.groups[gid].width
                    scores[gid] += gamma[offset:offset + n]
                    contributors[gid] += 1
                    offset += n
    return {gid: s / max(contributors[gid], 1) for gid, s in scores.items()}


def keep_indices(model: nn.Module, graph: ChannelGraph, full_widths: list[int], rule: str | Scores = "l1",
                 seed: int = 0) -> dict[int, torch.Tensor]:
    """Sorted indices of the channels each group keeps, the top ``full_widths[g]`` by score;
    a group that follows another keeps what its parent's choice implies."""
    scores = channel_scores(model, graph, rule, seed)
    out = {}
    for g in graph.groups:
        if g.follows is not None:
            continue
        k = int(full_widths[g.id])
        if k >= g.width:
            out[g.id] = torch.arange(g.width)
        elif g.cuts:
            out[g.id] = _top_in_segments(scores[g.id], k, g.cuts)
        else:
            out[g.id] = _top(scores[g.id], k, g.blocks)
    return follow_indices(graph, out)


def _top_in_segments(scores: torch.Tensor, k: int, cuts: tuple[int, ...]) -> torch.Tensor:
    """Sorted indices of the best channels of each segment between ``cuts``, as many in each
    as :func:`~autoprune.graph.range_kept` gives it at width ``k``."""
    n = len(scores)
    ends = [0, *cuts, n]
    out = []
    for a, b in zip(ends, ends[1:]):
        take = range_kept(k, n, b) - range_kept(k, n, a)
        out.append(a + torch.sort(-scores[a:b], stable=True).indices[:take])
    return torch.sort(torch.cat(out)).values


def _top(scores: torch.Tensor, k: int, blocks: int) -> torch.Tensor:
    """Sorted indices of the ``k`` best channels, ``k / blocks`` from each equal block."""
    per = scores.reshape(blocks, -1)
    # Stable sort so that ties (e.g. all-equal fresh weights) keep the first channels.
    order = torch.sort(-per, dim=1, stable=True).indices[:, :k // blocks]
    order = order + torch.arange(blocks)[:, None] * per.shape[1]
    return torch.sort(order.flatten()).values


# --------------------------------------------------------------------------------------------
# Data-driven scores from sampled tensors (the sampling itself is autoprune.criteria's).
# --------------------------------------------------------------------------------------------


def map_statistics(rule: str, x: torch.Tensor) -> torch.Tensor:
    """Per-channel sum over a batch ``x`` (N, C, *spatial) of one image's statistic.

    ``hrank``: the matrix rank of each 2-d feature map, plus a tie-breaker below one rank
    (the map's share of the batch's largest mean |x|): at full rank every channel ties, and
    the stronger map should then win. ``activation``: the mean rectified value. ``apoz``: the
    fraction of rectified values above zero. Dividing by the number of images gives the
    per-image mean.
    """
    x = x.detach().float()
    if x.dim() == 2:
        x = x[:, :, None, None]
    if rule == "hrank":
        maps = x.flatten(3) if x.dim() > 4 else x  # (N, C, H, W); 3-d maps are flattened to 2-d
        ranks = torch.linalg.matrix_rank(maps).double()
        energy = maps.abs().mean(dim=(-2, -1)).double()
        return (ranks + 1e-3 * energy / energy.max().clamp_min(1e-12)).sum(0).cpu()
    act = torch.relu(x).flatten(2)
    if rule == "activation":
        return act.mean(2).double().sum(0).cpu()
    if rule == "apoz":
        return (act > 0).double().mean(2).sum(0).cpu()
    raise AutopruneError(f"'{rule}' is not a feature-map rule; expected hrank, activation or apoz")


def pool_layer_scores(graph: ChannelGraph, per_layer: dict[str, torch.Tensor],
                      layouts: dict[str, tuple[int, ...]]) -> dict[int, torch.Tensor]:
    """Per-group scores from per-layer channel scores laid out as ``layouts[name]``.

    Each layer's slice for a group is divided by its mean, so that the layers of a residual
    group weigh alike, and the slices are averaged over the group's layers (as ``l1`` does).
    A group that no layer scored keeps zeros (every channel ties).
    """
    scores = {g.id: torch.zeros(g.width, dtype=torch.float64) for g in graph.groups}
    counts = {g.id: 0 for g in graph.groups}
    # A layer's input after a shuffle holds its layout's channels at the positions in_perm gives.
    permuted = {layer.name: layer for layer in graph.layers if layer.in_perm is not None}
    for name, values in per_layer.items():
        if name in permuted and tuple(layouts[name]) == permuted[name].in_layout:
            values = values[list(permuted[name].in_perm)]
        offset = 0
        for gid in layouts[name]:
            n = graph.groups[gid].width
            part = values[offset:offset + n].double()
            scores[gid] += part / part.mean().clamp_min(1e-12)
            counts[gid] += 1
            offset += n
    return {gid: s / max(counts[gid], 1) for gid, s in scores.items()}


def channel_gram(moment: torch.Tensor, weight: torch.Tensor, span: int) -> torch.Tensor:
    """Gram matrix of the input channels' contributions to a linear map's output.

    ``moment`` is ``E[x xᵀ]`` of the sampled input rows (D×D), ``weight`` the layer's
    (out, D) matrix, and every input channel spans ``span`` consecutive columns (a conv's
    kernel window, a flattened map). ``G[c, d] = E[<W_c x_c, W_d x_d>]``: channel c's output
    contribution against channel d's.
    """
    w = weight.detach().double().flatten(1).cpu()
    prod = moment.double() * (w.T @ w)
    c = prod.shape[0] // span
    return prod.reshape(c, span, c, span).sum(dim=(1, 3))


def lasso_survival(gram: torch.Tensor, steps: int = 30, iters: int = 40) -> torch.Tensor:
    """How long each channel survives along a LASSO path that reconstructs the layer output.

    Solves ``min_β ½‖y − Σ_c β_c z_c‖² + λ‖β‖₁`` with ``y = Σ_c z_c`` (the original output)
    from the channels' Gram matrix by proximal gradient steps (vectorised, so a 512-channel
    layer costs milliseconds), for ``steps`` values of λ from λ_max down to λ_max/1000,
    warm-started. A channel's score is the largest λ/λ_max at which its β is non-zero, plus a
    tie-breaker below one step (its final |β|): the channels that reconstruct the output best
    are the last the penalty removes.
    """
    g = gram.double()
    corr = g.sum(1)
    lam_max = float(corr.abs().max().clamp_min(1e-30))
    step = 1.0 / float(torch.linalg.eigvalsh(g).max().clamp_min(1e-30))
    beta = torch.zeros(g.shape[0], dtype=torch.float64)
    alive = torch.zeros_like(beta)
    for lam in (lam_max * torch.logspace(0, -3, steps, dtype=torch.float64)).tolist():
        for _ in range(iters):
            z = beta - step * (g @ beta - corr)
            beta = torch.sign(z) * torch.clamp(z.abs() - step * lam, min=0)
        alive[(beta != 0) & (alive == 0)] = lam / lam_max
    tie = beta.abs() / beta.abs().max().clamp_min(1e-30)
    return alive + 1e-6 * tie


def refit_weights(moment: torch.Tensor, weight: torch.Tensor, in_cols: torch.Tensor,
                  out_idx: torch.Tensor) -> torch.Tensor:
    """Least-squares weights on the kept input columns that best reproduce the full output.

    With ``A = E[x xᵀ]`` over the sampled rows, the kept rows ``out_idx`` of ``weight``
    (out, D) become ``argmin_V E‖V x_S − W x‖²`` = ``(A_SS + εI)⁻¹ A_S: Wᵀ``, ε a tiny
    ridge that keeps dead inputs solvable. Returns (len(out_idx), len(in_cols)).
    """
    a = moment.double()
    w = weight.detach().double().flatten(1).cpu()[out_idx]
    a_ss = a[in_cols][:, in_cols]
    ridge = 1e-6 * a_ss.diagonal().mean().clamp_min(1e-12)
    rhs = a[in_cols] @ w.T
    sol = torch.linalg.solve(a_ss + ridge * torch.eye(len(in_cols), dtype=torch.float64), rhs)
    return sol.T.contiguous()
