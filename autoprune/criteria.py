"""The data-driven keep rules: sample a trained base's feature maps once, score its channels.

:func:`data_scores` runs the base (eval mode, no gradient) on a fixed, seeded sample of
training images and turns what it sees into :class:`~autoprune.importance.Scores`:

* ``hrank``, ``activation``, ``apoz`` read each group's feature maps at its BatchNorm layers
  (at its producers' outputs where the group has no norm), so a residual group pools the maps
  of every branch that meets at the add, and a depthwise group those before and after the
  depthwise conv;
* ``reconstruct`` reads the inputs of every conv / linear layer that consumes free channels:
  their second moment gives a LASSO ranking of the input channels per consumer (pooled over a
  group's consumers) and lets surgery refit the kept weights by least squares.

Scores depend on the base's weights and the sample only, so they are computed once per base
and cached beside its checkpoint, keyed by the checkpoint's hash, the rule, the seed and the
sample size (``<checkpoint>.scores/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.errors import AutopruneError
from autoprune.files import torch_save
from autoprune.graph import ChannelGraph
from autoprune.importance import (
    DATA_RULES,
    Scores,
    channel_gram,
    lasso_survival,
    map_statistics,
    pool_layer_scores,
)

SCORES_FORMAT = "autoprune.scores/1"
# Sampled output positions per image for a conv's input patches: enough rows for a stable
# second moment (rows ≫ patch size after a few dozen images), few enough to stay cheap.
POSITIONS_PER_IMAGE = 16
# Consumers with wider input patches (e.g. a 25088-wide classifier) are not sampled: their
# D×D moment would not fit in memory. Their input channels are ranked by the other consumers.
MAX_PATCH = 8192


@dataclass(frozen=True)
class ScoreCache:
    """Where the scores for one base checkpoint are kept: a folder beside it, and its hash."""

    folder: Path
    key: str

    @classmethod
    def beside(cls, checkpoint, sha1: str) -> "ScoreCache":
        checkpoint = Path(checkpoint)
        return cls(checkpoint.parent / f"{checkpoint.name}.scores", str(sha1))

    def file(self, rule: str, seed: int, images: int) -> Path:
        return self.folder / f"{rule}-{self.key[:16]}-seed{seed}-n{images}.pt"


def data_scores(model: nn.Module, graph: ChannelGraph, data, rule: str, *, seed: int = 0, images: int = 256,
                batch_size: int = 64, device="cpu", cache: ScoreCache | None = None) -> Scores:
    """The :class:`Scores` of a data-driven ``rule`` on ``images`` seeded training images.

    With a ``cache``, the scores are read from its file when it exists, and written there
    after computing otherwise (a folder that cannot be written only costs a recomputation).
    """
    if rule not in DATA_RULES:
        raise AutopruneError(f"'{rule}' is not a data-driven rule; expected one of {', '.join(DATA_RULES)}")
    if data is None:
        raise AutopruneError(f"rule '{rule}' scores channels on training data, and none was given")
    cache = cache.file(rule, seed, images) if cache is not None else None
    if cache is not None and Path(cache).is_file():
        stored = torch.load(cache, map_location="cpu", weights_only=True)
        if stored.get("format") == SCORES_FORMAT and stored.get("rule") == rule:
            return Scores(rule, stored["by_group"], stored.get("moments", {}))
    if rule == "reconstruct":
        moments = sample_moments(model, graph, data, seed=seed, images=images, batch_size=batch_size, device=device)
        scores = Scores(rule, reconstruct_scores(model, graph, moments), moments)
    else:
        per_layer, layouts = sample_map_statistics(model, graph, data, rule, seed=seed, images=images,
                                                   batch_size=batch_size, device=device)
        scores = Scores(rule, pool_layer_scores(graph, per_layer, layouts))
    if cache is not None:
        payload = {"format": SCORES_FORMAT, "rule": rule, "by_group": scores.by_group,
                   "moments": {k: v.float() for k, v in scores.moments.items()}}
        try:
            torch_save(payload, cache)
        except OSError:
            pass  # a read-only checkpoint directory: the scores are simply recomputed next time
    return scores


def feature_layers(graph: ChannelGraph) -> dict[str, tuple[int, ...]]:
    """The layers whose outputs carry each group's feature maps, with their output layouts:
    every norm layer, plus the producers of groups that no norm layer normalises."""
    layouts = {layer.name: layer.in_layout for layer in graph.layers if layer.kind == "norm"}
    normed = {gid for layout in layouts.values() for gid in layout}
    for layer in graph.layers:
        if layer.out_group is not None and layer.out_group not in normed:
            layouts[layer.name] = (layer.out_group,)
    return layouts


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


def sample_batches(data, *, seed: int, images: int, batch_size: int):
    """The fixed sample: un-augmented training batches in a seeded order, ``images`` in all."""
    gen = torch.Generator().manual_seed(seed)
    seen = 0
    for xb, _ in data.batches("train", batch_size=batch_size, train=True, generator=gen, augment=False):
        xb = xb[:images - seen]
        yield xb
        seen += len(xb)
        if seen >= images:
            return


def _run_hooked(model: nn.Module, names, hook, data, *, seed, images, batch_size, device, pre: bool) -> None:
    handles = []
    for name in names:
        m = model.get_submodule(name)
        if pre:
            handles.append(m.register_forward_pre_hook(lambda mod, args, n=name: hook(n, mod, args[0])))
        else:
            handles.append(m.register_forward_hook(lambda mod, args, out, n=name: hook(n, mod, out)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for xb in sample_batches(data, seed=seed, images=images, batch_size=batch_size):
                model(xb.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def sample_map_statistics(model, graph, data, rule, *, seed=0, images=256, batch_size=64, device="cpu"):
    """Per-layer channel statistics of ``rule`` (mean over the sampled images), and the layouts."""
    layouts = feature_layers(graph)
    sums, counts = {}, {}

    def hook(name, _module, out):
        s = map_statistics(rule, out)
        sums[name] = sums.get(name, 0) + s
        counts[name] = counts.get(name, 0) + out.shape[0]

    _run_hooked(model, list(layouts), hook, data, seed=seed, images=images, batch_size=batch_size, device=device,
                pre=False)
    return {n: sums[n] / counts[n] for n in sums}, layouts


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


def sample_moments(model, graph, data, *, seed=0, images=256, batch_size=64, device="cpu") -> dict[str, torch.Tensor]:
    """``E[x xᵀ]`` of every consumer layer's input rows over the sample, by layer name."""
    names = consumer_layers(graph, model)
    sums, counts = {}, {}
    gen = torch.Generator().manual_seed(seed + 1)

    def hook(name, module, x):
        rows = input_rows(module, x, gen)
        sums[name] = sums.get(name, 0) + rows.T @ rows
        counts[name] = counts.get(name, 0) + rows.shape[0]

    _run_hooked(model, names, hook, data, seed=seed, images=images, batch_size=batch_size, device=device, pre=True)
    return {n: sums[n] / counts[n] for n in sums}


def reconstruct_scores(model: nn.Module, graph: ChannelGraph, moments: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Per-group scores: each consumer's LASSO survival of its input channels, pooled over the
    consumers of a group."""
    per_layer, layouts = {}, {}
    for layer in graph.layers:
        if layer.name not in moments:
            continue
        weight = model.get_submodule(layer.name).weight
        span = layer.spatial if layer.kind == "linear" else weight[0, 0].numel()
        per_layer[layer.name] = lasso_survival(channel_gram(moments[layer.name], weight, span))
        layouts[layer.name] = layer.in_layout
    return pool_layer_scores(graph, per_layer, layouts)
