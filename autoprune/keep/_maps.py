"""The keep rules scored on feature maps: ``hrank``, ``activation``, ``apoz``.

Each reads a group's feature maps at its BatchNorm layers (at its producers' outputs where
the group has no norm), so a residual group pools the maps of every branch that meets at the
add, and a depthwise group those before and after the depthwise conv.
"""

from __future__ import annotations

import torch

from autoprune.graph import ChannelGraph
from autoprune.keep._base import DataRule, Sampled, pool_layer_scores, register_keep_rule, run_hooked, sample_batches


def feature_layers(graph: ChannelGraph) -> dict[str, tuple[int, ...]]:
    """The layers whose outputs carry each group's feature maps, with their output layouts:
    every norm layer, plus the producers of groups that no norm layer normalises."""
    layouts = {layer.name: layer.in_layout for layer in graph.layers if layer.kind == "norm"}
    normed = {gid for layout in layouts.values() for gid in layout}
    for layer in graph.layers:
        if layer.out_group is not None and layer.out_group not in normed:
            layouts[layer.name] = (layer.out_group,)
    return layouts


class FeatureMapRule(DataRule):
    """A rule that scores each channel by the per-image mean of one statistic of its feature
    maps (:meth:`statistic`), pooled over a group's layers like ``l1``."""

    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel sum over a batch ``x`` (N, C, *spatial), float32 with at least two
        spatial dimensions, of one image's statistic."""
        raise NotImplementedError

    def map_statistics(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`statistic` of a layer's output ``x`` (a linear layer's (N, C) as 1×1 maps)."""
        x = x.detach().float()
        if x.dim() == 2:
            x = x[:, :, None, None]
        return self.statistic(x)

    def sample(self, model, graph, data, *, seed, device):
        layouts = feature_layers(graph)
        sums, counts = {}, {}

        def hook(name, _module, out):
            s = self.map_statistics(out)
            sums[name] = sums.get(name, 0) + s
            counts[name] = counts.get(name, 0) + out.shape[0]

        batches = sample_batches(data, seed=seed, images=self.images, batch_size=self.batch_size)
        run_hooked(model, list(layouts), hook, batches, device=device, pre=False)
        return Sampled(pool_layer_scores(graph, {n: sums[n] / counts[n] for n in sums}, layouts))


@register_keep_rule
class HRank(FeatureMapRule):
    """Mean matrix rank of each channel's feature maps (HRank, Lin et al., 2020), plus a
    tie-breaker below one rank (the map's share of the batch's largest mean |x|): at full
    rank every channel ties, and the stronger map should then win."""

    name = "hrank"
    summary = "mean rank of the feature maps on training images (HRank, Lin et al., 2020)"

    def statistic(self, x):
        maps = x.flatten(3) if x.dim() > 4 else x  # (N, C, H, W); 3-d maps are flattened to 2-d
        ranks = torch.linalg.matrix_rank(maps).double()
        energy = maps.abs().mean(dim=(-2, -1)).double()
        return (ranks + 1e-3 * energy / energy.max().clamp_min(1e-12)).sum(0).cpu()


@register_keep_rule
class Activation(FeatureMapRule):
    """Mean post-activation value (DropNet, Min et al., 2020)."""

    name = "activation"
    summary = "mean post-activation on training images (DropNet, Min et al., 2020)"

    def statistic(self, x):
        return torch.relu(x).flatten(2).mean(2).double().sum(0).cpu()


@register_keep_rule
class APoZ(FeatureMapRule):
    """One minus the average percentage of zeros after the activation (Hu et al., 2016)."""

    name = "apoz"
    summary = "fewest zeros after the activation on training images (APoZ, Hu et al., 2016)"

    def statistic(self, x):
        return (torch.relu(x).flatten(2) > 0).double().mean(2).sum(0).cpu()
