"""Channels out of order, and cuts the forward code would get wrong on the pruned model.

A channel shuffle (a view that splits the channels, a transpose, a view back) leaves every
group its own width while the tensor records the position of each channel
(:attr:`ChannelTensor.perm <autoprune.graph.ChannelTensor>`). A cut at constant positions
(``x[:, a:b]``, ``split`` by sizes) takes a range of each group it reaches. Surgery rewrites
those nodes of the forward (:class:`~autoprune.graph.Rewrite`) into gathers and splits of the
kept channels, since the code's constants and arithmetic no longer hold on the pruned model.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from autoprune.graph.follow import range_of
from autoprune.graph.nodes import first_tensor_arg
from autoprune.graph.result import Rewrite
from autoprune.graph.table import GroupTable
from autoprune.graph.tensor import ChannelTensor


def in_positions(values: torch.Tensor, perm: tuple[int, ...]) -> torch.Tensor:
    """Per-channel ``values`` in layout order put in the positions ``perm`` gives (a layer's
    ``in_perm``): the order of the tensor's channels."""
    return torch.empty_like(values).index_put_((torch.as_tensor(perm, device=values.device),), values)


def positions(table: GroupTable, x: ChannelTensor) -> tuple[int, ...]:
    """The position of each channel of ``x``'s layout in the tensor."""
    return x.perm if x.perm is not None else tuple(range(sum(table.widths(x.layout))))


def plain(table: GroupTable, node: fx.Node, x: ChannelTensor) -> ChannelTensor:
    """``x`` for an op that does not follow reordered channels: after a shuffle, every group
    of it keeps its width (the pruned tensor is then the original one) and the tensor is one
    new fixed group."""
    if x.perm is None:
        return x
    (layout,) = fixed_pieces(table, node, x.layout, [len(x.perm)])
    return ChannelTensor(layout, x.spatial, x.dim)


def fixed_pieces(table: GroupTable, node: fx.Node, layout: list[int], widths: list[int]) -> list[list[int]]:
    """The simple, exact answer to a cut the groups cannot follow: every group of ``layout``
    keeps its width, and each piece is a new fixed group of its width."""
    table.fix(*layout)
    return [[table.new_group(w, fixed=True, hint=node.name)] for w in widths]


def cut_reordered(table: GroupTable, node: fx.Node, x: ChannelTensor, bounds: list[tuple[int, int]],
                  kind: str = "split") -> list[ChannelTensor]:
    """Cuts [start, stop) at constant positions of ``x`` (shuffled or not) that the forward code
    would get wrong on the pruned tensor. Each group's channels inside a cut are a run of it,
    which becomes a group that follows it as a ``range``; surgery cuts the pruned tensor at the
    kept counts (``kind``: ``split`` for chunk and split, ``narrow`` for a slice). Where a run
    is not whole (or its group cannot be ranged), every group keeps its width."""
    pos = positions(table, x)
    if bounds == [(0, len(pos))] and kind == "narrow":
        return [x]  # the whole tensor: nothing to cut
    entries = table.entries(x.layout)
    parts = []
    for a, b in bounds:
        layout, perm = [], []
        for g, s, e in entries:
            inside = [i for i in range(e - s) if a <= pos[s + i] < b]
            if not inside:
                continue
            lo, hi = inside[0], inside[-1] + 1
            sub = range_of(table, node, g, lo, hi) if hi - lo == len(inside) else None
            if sub is None:
                return [ChannelTensor(layout) for layout in fixed_pieces(table, node, x.layout,
                                                                         [b - a for a, b in bounds])]
            layout.append(sub)
            perm += [pos[s + i] - a for i in inside]
        parts.append(ChannelTensor(layout, perm=None if perm == sorted(perm) else tuple(perm)))
    source = first_tensor_arg(node).name
    table.add_rewrite(Rewrite(node.name, kind, source, tuple(x.layout), x.perm, tuple(bounds)))
    return parts
