"""Rules for ops that move the channels: flatten, view and reshape, permute, transpose, and the
channel shuffle they make together ([N, C, ...] viewed as [N, g, C/g, ...], transposed, and
viewed back), after which every group keeps its own width while the tensor records where each
channel went."""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.fx as fx
import torch.nn as nn

from autoprune.errors import TraceError
from autoprune.graph.nodes import first_tensor_arg, shape_of, where
from autoprune.graph.result import Rewrite
from autoprune.graph.rewrites import plain, positions
from autoprune.graph.table import GroupTable
from autoprune.graph.tensor import ChannelTensor


def flatten(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor:
    """[N, C, ...] to [N, features]: each channel spans the features of its positions."""
    x = inputs[0]
    src, dst = shape_of(first_tensor_arg(node)), shape_of(node)
    if (src is None or dst is None or len(dst) != 2 or src[0] != dst[0] or math.prod(src[1:]) != dst[1]
            or x.dim != 1):
        raise TraceError(f"node '{node.name}' ({where(node)}) reshapes channels {src} -> {dst}; only "
                         "flattening [N, C, ...] to [N, features] is supported")
    return ChannelTensor(x.layout, x.spatial * math.prod(src[2:]))


def view(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor:
    """view / reshape / flatten: a flatten to [N, features]; a reshape of the spatial
    dimensions; or a channel shuffle, [N, C, ...] -> [N, g, C/g, ...], transposed, and back."""
    x = inputs[0]
    src, dst = shape_of(first_tensor_arg(node)), shape_of(node)
    if src is None or dst is None:
        return flatten(table, node, target, [plain(table, node, x)])
    if x.split:
        if len(dst) != len(src) - 1 or dst[:2] != (src[0], src[1] * src[2]) or dst[2:] != src[3:]:
            raise TraceError(f"node '{node.name}' ({where(node)}) reshapes channels split by a view "
                             f"{src} -> {dst}; only joining them back is supported")
        return shuffle(table, node, x) if x.swapped else ChannelTensor(x.layout, perm=x.perm)
    if x.dim == 1 and x.spatial == 1 and len(src) >= 3:
        if len(dst) == len(src) + 1 and dst[0] == src[0] and dst[1] * dst[2] == src[1] and dst[3:] == src[2:]:
            return ChannelTensor(x.layout, 1, -1, dst[1], perm=x.perm, origin=first_tensor_arg(node).name)
        if len(dst) >= 3 and dst[:2] == src[:2] and math.prod(dst[2:]) == math.prod(src[2:]):
            return x  # the spatial dimensions reshaped, the channels untouched
    return flatten(table, node, target, [plain(table, node, x)])


def permute(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor:
    """A permute that keeps the batch first: the channels move to another dimension (channels
    last), or, on channels split by a view, the two halves swap (a channel shuffle)."""
    x = inputs[0]
    dims = node.args[1:] if len(node.args) > 2 else node.args[1] if len(node.args) > 1 else node.kwargs["dims"]
    ndim = len(dims)
    dims = [d % ndim for d in dims]
    if x.split:
        if dims != [0, 2, 1, *range(3, ndim)]:
            raise TraceError(f"node '{node.name}' ({where(node)}) permutes channels split by a view; only "
                             "swapping the two halves (a channel shuffle) is supported")
        return dataclasses.replace(x, swapped=not x.swapped)
    x = plain(table, node, x)
    if x.spatial != 1 or dims[0] != 0:
        raise TraceError(f"node '{node.name}' ({where(node)}) permutes a flattened tensor or its batch")
    return ChannelTensor(x.layout, 1, dims.index(x.dim))


def transpose(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor:
    """Two dimensions swapped: as :func:`permute`."""
    x = inputs[0]
    ndim = len(shape_of(node.args[0]))
    a, b = sorted(d % ndim for d in (*node.args[1:], *node.kwargs.values()))
    if x.split:
        if (a, b) != (1, 2):
            raise TraceError(f"node '{node.name}' ({where(node)}) transposes channels split by a view; only "
                             "swapping the two halves (a channel shuffle) is supported")
        return dataclasses.replace(x, swapped=not x.swapped)
    x = plain(table, node, x)
    if x.spatial != 1 or a == 0:
        raise TraceError(f"node '{node.name}' ({where(node)}) transposes a flattened tensor or its batch")
    return ChannelTensor(x.layout, 1, b if x.dim == a else a if x.dim == b else x.dim)


def shuffle(table: GroupTable, node: fx.Node, x: ChannelTensor) -> ChannelTensor:
    """A channel shuffle of ``x.split`` runs: output channel ``i * g + k`` is channel ``i`` of
    run ``k``. Every group keeps its own width and choice of channels; the tensor records
    where each channel went (``perm``), and surgery gathers the kept channels in that order."""
    g = x.split
    run = len(positions(table, x)) // g
    src = tuple((j % g) * run + j // g for j in range(g * run))
    dst = [0] * len(src)
    for j, q in enumerate(src):
        dst[q] = j
    table.add_rewrite(Rewrite(node.name, "gather", x.origin, tuple(x.layout), x.perm, src))
    return ChannelTensor(x.layout, perm=tuple(dst[q] for q in positions(table, x)))


MODULES = {nn.Flatten: flatten}
FUNCTIONS = {
    torch.permute: permute,
    **dict.fromkeys((torch.flatten, torch.reshape), view),
    **dict.fromkeys((torch.transpose, torch.swapaxes), transpose),
}
METHODS = {
    "permute": permute,
    **dict.fromkeys(("flatten", "view", "reshape"), view),
    **dict.fromkeys(("transpose", "swapaxes"), transpose),
}
# Rules that follow a shuffled tensor's channel positions (see ChannelTensor.perm).
KEEP_ORDER = frozenset({view, transpose, permute})
