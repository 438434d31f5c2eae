"""Turn a width vector into a physically smaller model.

:func:`materialise` copies the model and replaces the weights of every traced Conv, Linear
and BatchNorm layer by the slices that the kept channels select, so the copy runs the same
forward code with fewer channels. Coupled layers slice the same indices because they share
a group; a concatenation is sliced with each part's offset. Which channels survive is the
keep rule's choice (:mod:`autoprune.keep`), and the rule may then adjust the sliced copy:
``reconstruct`` refits every consuming layer whose input lost channels by least squares, so
that it reproduces the original layer's output on the sampled features; widths, shapes and
MACs are those of any other rule.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.fx as fx
import torch.nn as nn

from autoprune.graph import ChannelGraph, fx_graph_module, in_positions
from autoprune.keep import L1, First, KeepRule, layout_indices
from autoprune.space import SearchSpace

# The default keep rule, and the one a fresh rebuild keeps (rules that need no fit are stateless).
_L1, _FIRST = L1(), First()


def _ultralytics_halves(pruned: nn.Module, original: nn.Module) -> None:
    """ultralytics' blocks that split ``cv1``'s output into two halves of ``c`` channels (C2f,
    C3k2, C2fAttn, RepNCSPELAN4, ELAN1, PSA, C2PSA) keep ``c`` for the forwards that split by it
    (``forward_split``, which ultralytics' exporter runs): it follows the pruned halves."""
    conv = getattr(getattr(original, "cv1", None), "conv", None)
    c = getattr(original, "c", None)
    if isinstance(c, int) and isinstance(conv, nn.Conv2d) and conv.out_channels == 2 * c:
        pruned.c = pruned.cv1.conv.out_channels // 2


# What brings a pruned module's own records of its widths in line with its sliced layers:
# (which modules, how), run after slicing; see register_resize.
_RESIZERS: list[tuple] = [(lambda m: type(m).__module__.startswith("ultralytics."), _ultralytics_halves)]


def register_resize(cls: type, fn) -> None:
    """After surgery, call ``fn(pruned_module, original_module)`` for every module of class
    ``cls`` (subclasses too), so that attributes recording a width (a block's hidden width,
    which another of its forwards reads) follow the sliced layers. ultralytics' blocks that
    split by ``self.c`` are handled already."""
    if not isinstance(cls, type) or not callable(fn):
        raise TypeError(f"register_resize takes a class and a function, got {cls!r} and {fn!r}")
    _RESIZERS.append((lambda m: isinstance(m, cls), fn))


def _resized(pruned: nn.Module, model: nn.Module) -> nn.Module:
    original = dict(model.named_modules())
    for name, m in pruned.named_modules():
        for applies, fn in _RESIZERS:
            if name in original and applies(m):
                fn(m, original[name])
    return pruned


def _param(t: torch.Tensor, requires_grad: bool) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().contiguous(), requires_grad=requires_grad)


def _slice_layer(m: nn.Module, kind: str, in_idx: torch.Tensor, out_idx: torch.Tensor | None,
                 depthwise: bool) -> None:
    if kind == "norm":
        for name in ("weight", "bias"):  # parameters, or buffers in a frozen BatchNorm
            t = getattr(m, name, None)
            if isinstance(t, nn.Parameter):
                setattr(m, name, _param(t[in_idx], t.requires_grad))
            elif t is not None:
                setattr(m, name, t[in_idx].clone())
        if getattr(m, "running_mean", None) is not None:
            m.running_mean = m.running_mean[in_idx].clone()
            m.running_var = m.running_var[in_idx].clone()
        if getattr(m, "num_batches_tracked", None) is not None:
            m.num_batches_tracked = m.num_batches_tracked.clone()
        if isinstance(m, nn.GroupNorm):
            m.num_channels = len(in_idx)  # num_groups stays: every block lost the same channels
        elif isinstance(m, nn.LayerNorm):
            m.normalized_shape = (len(in_idx),)
        elif hasattr(m, "num_features"):
            m.num_features = len(in_idx)
        return
    w = m.weight
    if depthwise:
        # With a channel multiplier the kept filters are the output group's (each input's k in a row).
        out = in_idx if out_idx is None else out_idx
        m.weight = _param(w[out], w.requires_grad)
        if m.bias is not None:
            m.bias = _param(m.bias[out], m.bias.requires_grad)
        m.in_channels = m.groups = len(in_idx)
        m.out_channels = len(out)
        return
    if isinstance(m, nn.modules.conv._ConvTransposeNd):  # its weight holds the input channels first
        w = w[in_idx][:, out_idx]
    elif kind == "conv" and m.groups > 1:
        w = _grouped_weight(w, m.groups, m.in_channels, in_idx, out_idx)
    else:
        w = w[out_idx][:, in_idx]
    m.weight = _param(w, m.weight.requires_grad)
    if m.bias is not None:
        m.bias = _param(m.bias[out_idx], m.bias.requires_grad)
    if kind == "linear":
        m.in_features, m.out_features = len(in_idx), len(out_idx)
    else:  # a grouped conv keeps `groups`: in_channels stays groups x the width per group
        m.in_channels, m.out_channels = len(in_idx), len(out_idx)


def _grouped_weight(w: torch.Tensor, groups: int, in_channels: int, in_idx: torch.Tensor,
                    out_idx: torch.Tensor) -> torch.Tensor:
    """The weight of a grouped conv keeping ``in_idx`` and ``out_idx`` (the same number in
    every block): each kept filter keeps the kept inputs of its own group."""
    per_in, per_out = in_channels // groups, w.shape[0] // groups
    # Kept inputs of each group, as positions inside that group: [groups, kept per group].
    local = in_idx.reshape(groups, -1) - torch.arange(groups)[:, None] * per_in
    idx = local[out_idx // per_out]  # [kept filters, kept inputs per group]
    idx = idx.reshape(*idx.shape, *([1] * (w.dim() - 2))).expand(-1, -1, *w.shape[2:])
    return torch.gather(w[out_idx], 1, idx)


def _slice_scale(model: nn.Module, target: str, idx: torch.Tensor) -> None:
    """Slice a per-channel parameter along its one dimension longer than 1."""
    owner, _, attr = target.rpartition(".")
    module = model.get_submodule(owner)
    p = getattr(module, attr)
    dim = next(i for i, n in enumerate(p.shape) if n > 1)
    setattr(module, attr, _param(p.index_select(dim, idx), p.requires_grad))


def _copy_sharing_layers(model: nn.Module, graph: ChannelGraph) -> nn.Module:
    """Deep copy of ``model`` whose traced layers still share tensors with the original.

    Every shared tensor is replaced by a sliced copy right after, so the original is never
    modified; skipping the full copy first matters for large layers (VGG's 25088×4096).
    """
    memo = {}
    for layer in graph.layers:
        if layer.kind == "scale":
            t = model.get_parameter(layer.name)
            memo[id(t)] = t
            continue
        m = model.get_submodule(layer.name)
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            memo[id(t)] = t
    return copy.deepcopy(model, memo)


def slice_channels(model: nn.Module, graph: ChannelGraph, kept: dict[int, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` that keeps, in every group id, the channels ``kept[id]`` (sorted
    indices): every traced layer sliced to them; ``model`` is untouched. The core of
    :func:`materialise`, for callers that choose the channels themselves (stripe pruning
    removes the filters that keep no stripe)."""
    pruned = _copy_sharing_layers(model, graph)
    for layer in graph.layers:
        spatial = layer.spatial if layer.kind == "linear" else 1
        in_idx = layout_indices(graph, layer.in_layout, kept, spatial, layer.in_perm)
        if layer.kind == "scale":
            _slice_scale(pruned, layer.name, in_idx)
            continue
        m = pruned.get_submodule(layer.name)
        out_idx = kept[layer.out_group] if layer.out_group is not None else None
        _slice_layer(m, layer.kind, in_idx, out_idx, layer.depthwise)
    _resized(pruned, model)
    return _rewritten(pruned, graph, kept) if graph.rewrites else pruned


def _rewritten(pruned: nn.Module, graph: ChannelGraph, kept: dict[int, torch.Tensor]) -> fx.GraphModule:
    """``pruned`` as an fx GraphModule whose channel shuffles and constant cuts
    (``graph.rewrites``) act on the kept channels: a shuffle gathers them in the order the
    original puts them, a cut splits or narrows at the kept counts. The gather indices are
    buffers, so a state dict carries them with the weights they belong to."""
    gm = fx_graph_module(pruned, graph)
    nodes = {n.name: n for n in gm.graph.nodes}
    device = next(pruned.parameters()).device
    replaced = []
    for i, r in enumerate(graph.rewrites):
        node, source = nodes[r.node], nodes[r.source]
        keep = torch.zeros(len(r.perm) if r.perm is not None else sum(graph.groups[g].width for g in r.layout),
                           dtype=torch.bool)
        keep[layout_indices(graph, r.layout, {g: k.cpu() for g, k in kept.items()}, 1, r.perm)] = True
        with gm.graph.inserting_before(node):
            if r.kind == "gather":
                src = torch.tensor(r.arg, dtype=torch.long)
                name = f"autoprune_gather_{i}"
                gm.register_buffer(name, (torch.cumsum(keep, 0) - 1)[src[keep[src]]].to(device))
                new = gm.graph.call_function(torch.index_select, (source, 1, gm.graph.get_attr(name)))
            elif r.kind == "split":
                new = gm.graph.call_function(torch.split, (source, [int(keep[a:b].sum()) for a, b in r.arg], 1))
            else:
                ((a, b),) = r.arg
                new = gm.graph.call_function(torch.narrow, (source, 1, int(keep[:a].sum()), int(keep[a:b].sum())))
        node.replace_all_uses_with(new)
        nodes[r.node] = new  # a later rewrite may read this one's output
        replaced.append(node)
    _erase_unused(gm.graph, replaced)
    gm.recompile()
    return gm.train(pruned.training)


def materialise(model: nn.Module, space: SearchSpace, widths: Sequence[int], *, keep: KeepRule = _L1,
                seed: int = 0, fresh: bool = False) -> nn.Module:
    """A pruned copy of ``model`` with the free groups at ``widths``; ``model`` is untouched.

    ``keep`` is the :class:`~autoprune.keep.KeepRule` that picks the surviving channels
    (``get_keep_rule(name)`` builds one; a data-driven rule fitted to ``model``), and then
    adjusts the copy (``reconstruct`` refits the consumers' kept weights). With
    ``fresh=True`` the first channels are kept and every parameter is re-initialised by its
    module's ``reset_parameters`` (the architecture, freshly initialised, for training from
    scratch).
    """
    widths = space.validate(widths)
    graph = space.graph
    rule = _FIRST if fresh else keep
    kept = rule.keep_indices(model, graph, space.full_widths(widths), seed=seed)
    pruned = slice_channels(model, graph, kept)
    rule.refit(pruned, model, graph, kept)
    if fresh:
        for m in pruned.modules():
            if hasattr(m, "reset_parameters") and m is not pruned:
                m.reset_parameters()
            if hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
    return pruned


# Ops that compute nothing but the channel arithmetic a rewrite replaced; only these are erased.
_ARITHMETIC = {"view", "reshape", "transpose", "permute", "contiguous", "size", "chunk", "split", "flatten",
               "getitem", "floordiv", "mul", "add", "sub"}


def _erase_unused(graph: fx.Graph, nodes: list[fx.Node]) -> None:
    """Erase ``nodes`` and, upwards, the arithmetic (views, sizes) only they used; never a
    node that may act in place, as a global dead-code pass would (``x.relu_()``)."""
    todo, erased = list(nodes), set()
    while todo:
        node = todo.pop()
        if node in erased or node.users or node.op not in ("call_function", "call_method"):
            continue
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        if node not in nodes and name not in _ARITHMETIC:
            continue
        inputs = list(node.all_input_nodes)
        graph.erase_node(node)
        erased.add(node)
        todo += inputs


def zero_dropped(model: nn.Module, space: SearchSpace, widths: Sequence[int], *, keep: KeepRule = _L1,
                 seed: int = 0) -> nn.Module:
    """A copy of ``model`` at full width whose dropped channels output zero.

    Producers' filters and biases and the norms' affine parameters of dropped channels are
    zeroed; in eval mode the result computes what :func:`materialise` computes before the
    rule's refit. Used to check surgery and to compare pruned and unpruned models channel
    for channel.
    """
    widths = space.validate(widths)
    graph = space.graph
    kept = keep.keep_indices(model, graph, space.full_widths(widths), seed=seed)
    return zero_channels(model, graph, kept)


def zero_channels(model: nn.Module, graph: ChannelGraph, kept: dict[int, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` at full width in which every channel outside ``kept`` outputs zero:
    what :func:`slice_channels` computes (in eval mode), channel for channel."""
    dropped = {}
    for g in graph.groups:
        mask = torch.ones(g.width, dtype=torch.bool)
        mask[kept[g.id]] = False
        dropped[g.id] = mask
    out = copy.deepcopy(model)
    with torch.no_grad():
        for layer in graph.layers:
            if layer.kind == "scale":
                continue  # the channels it scales are zero already
            m = out.get_submodule(layer.name)
            if layer.kind == "norm" or layer.depthwise and layer.out_group is None:
                mask = torch.cat([dropped[g] for g in layer.in_layout])
                if layer.in_perm is not None:
                    mask = in_positions(mask, layer.in_perm)
            elif layer.out_group is not None:
                mask = dropped[layer.out_group]
            else:
                continue
            if m.weight is not None:
                if layer.transposed:
                    m.weight[:, mask] = 0
                else:
                    m.weight[mask] = 0
            if m.bias is not None:
                m.bias[mask] = 0
    return out
