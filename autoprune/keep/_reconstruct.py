"""The ``reconstruct`` keep rule (channel pruning, He et al., 2017): the input channels a LASSO
regression keeps longest when it reconstructs each consuming layer's output, then a
least-squares refit of the consumers' kept weights.

It reads the inputs of every conv / linear layer that consumes free channels: their second
moment gives a LASSO ranking of the input channels per consumer (pooled over a group's
consumers) and lets surgery refit the kept weights by least squares.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.graph import ChannelGraph
from autoprune.keep._base import (
    DataRule,
    Sampled,
    layout_indices,
    pool_layer_scores,
    register_keep_rule,
    run_hooked,
    sample_batches,
)
from autoprune.keep._weights import L1

# Sampled output positions per image for a conv's input patches: enough rows for a stable
# second moment (rows ≫ patch size after a few dozen images), few enough to stay cheap.
POSITIONS_PER_IMAGE = 16
# Consumers with wider input patches (e.g. a 25088-wide classifier) are not sampled: their
# D×D moment would not fit in memory. Their input channels are ranked by the other consumers.
MAX_PATCH = 8192


@register_keep_rule
class Reconstruct(DataRule):
    """LASSO channel selection on each consumer's sampled inputs, then a least-squares refit
    of the consumers' kept weights (:meth:`refit`); widths, shapes and MACs are those of any
    other rule."""

    name = "reconstruct"
    summary = "LASSO channel selection, then a least-squares refit of the consumer (He et al., 2017)"

    def sample(self, model, graph, data, *, seed, device):
        names = consumer_layers(graph, model)
        sums, counts = {}, {}
        gen = torch.Generator().manual_seed(seed + 1)

        def hook(name, module, x):
            rows = input_rows(module, x, gen)
            sums[name] = sums.get(name, 0) + rows.T @ rows
            counts[name] = counts.get(name, 0) + rows.shape[0]

        batches = sample_batches(data, seed=seed, images=self.images, batch_size=self.batch_size)
        run_hooked(model, names, hook, batches, device=device, pre=True)
        moments = {n: sums[n] / counts[n] for n in sums}
        return Sampled(reconstruct_scores(model, graph, moments), moments)

    def refit(self, pruned, model, graph, kept):
        """Refit, by least squares on the sampled inputs, the weights of every conv / linear
        layer of ``pruned`` that lost input channels and whose input moment was sampled."""
        moments = self.sampled.moments if self.sampled is not None else {}
        for layer in graph.layers:
            if layer.name not in moments or layer.kind == "norm" or layer.depthwise:
                continue
            original = model.get_submodule(layer.name).weight
            span = layer.spatial if layer.kind == "linear" else original[0, 0].numel()
            in_cols = layout_indices(graph, layer.in_layout, kept, span, layer.in_perm)
            if len(in_cols) == original[0].numel():
                continue  # nothing dropped from the input: the original weights are the least-squares fit
            out_idx = kept[layer.out_group] if layer.out_group is not None else torch.arange(original.shape[0])
            m = pruned.get_submodule(layer.name)
            w = refit_weights(moments[layer.name], original, in_cols, out_idx)
            with torch.no_grad():
                m.weight.copy_(w.reshape(m.weight.shape).to(m.weight.dtype))


def consumer_layers(graph: ChannelGraph, model: nn.Module) -> list[str]:
    """The conv / linear layers whose input holds free channels and whose weights a least-squares
    refit may change: not depthwise, not grouped, 2-d convs with numeric padding, patch ≤ MAX_PATCH."""
    out = []
    for layer in graph.layers:
        if layer.kind == "norm" or layer.depthwise or layer.groups > 1:
            continue
        if all(graph.groups[g].fixed for g in layer.in_layout):
            continue
        m = model.get_submodule(layer.name)
        if layer.kind == "conv" and not (isinstance(m, nn.Conv2d) and not isinstance(m.padding, str)
                                         and m.padding_mode == "zeros"):
            continue
        if m.weight[0].numel() <= MAX_PATCH:
            out.append(layer.name)
    return out


def input_rows(module: nn.Module, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The rows a layer multiplies by its weight matrix: a conv's input patches at
    :data:`POSITIONS_PER_IMAGE` seeded output positions per image, a linear layer's inputs."""
    if isinstance(module, nn.Linear):
        return x.detach().flatten(1).double().cpu()
    patches = F.unfold(x.detach().float(), module.kernel_size, dilation=module.dilation, padding=module.padding,
                       stride=module.stride)  # (N, D, L)
    n, _, positions = patches.shape
    pick = torch.randint(positions, (n, min(POSITIONS_PER_IMAGE, positions)), generator=gen).to(patches.device)
    rows = torch.gather(patches, 2, pick[:, None, :].expand(-1, patches.shape[1], -1))
    return rows.permute(0, 2, 1).flatten(0, 1).double().cpu()


def reconstruct_scores(model: nn.Module, graph: ChannelGraph, moments: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Per-group scores: each consumer's LASSO survival of its input channels, pooled over the
    consumers of a group; a group no consumer of which was sampled (read only by a transposed
    conv, a 1-d conv or a layer too wide) is ranked by its producers' filters, as ``l1`` does."""
    per_layer, layouts = {}, {}
    for layer in graph.layers:
        if layer.name not in moments:
            continue
        weight = model.get_submodule(layer.name).weight
        span = layer.spatial if layer.kind == "linear" else weight[0, 0].numel()
        per_layer[layer.name] = lasso_survival(channel_gram(moments[layer.name], weight, span))
        layouts[layer.name] = layer.in_layout
    pooled = pool_layer_scores(graph, per_layer, layouts)
    scored = {gid for layout in layouts.values() for gid in layout}
    if all(g.id in scored for g in graph.groups):
        return pooled
    by_filters = L1().scores(model, graph)
    return {gid: s if gid in scored else by_filters[gid] for gid, s in pooled.items()}


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
