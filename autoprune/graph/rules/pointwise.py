"""Rules for ops that keep the channels: activations, dropout, pooling, spatial reductions, and
element-wise ops of several tensors, whose channels must then be the same channels.

:func:`passthrough` and :func:`spatial_reduce` are the ready-made handlers for a user's own
ops (see :func:`~autoprune.graph.register_rule`).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import padding

from autoprune.errors import TraceError
from autoprune.graph.follow import range_of
from autoprune.graph.nodes import first_tensor_arg, shape_of, where
from autoprune.graph.result import Follow
from autoprune.graph.rewrites import plain
from autoprune.graph.rules.layers import scale_parameters
from autoprune.graph.table import GroupTable
from autoprune.graph.tensor import ChannelTensor


def passthrough(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor:
    """Handler for an op that keeps the channels: each output channel comes from the same
    input channel (activations, dropout, pooling, element-wise ops of several tensors).
    TraceError if the output's channel dimension differs or a module holds per-channel state.
    """
    check_no_channel_state(node, target)
    if len(inputs) != 1:
        return merge(table, node, inputs)
    src, dst = shape_of(first_tensor_arg(node)), shape_of(node)
    if src is not None and dst is not None and (len(src) < 2 or len(dst) < 2 or src[1] != dst[1]):
        raise TraceError(f"node '{node.name}' ({where(node)}) changes the channel dimension {src} -> {dst}")
    return inputs[0]


def spatial_reduce(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor:
    """Handler for an op that reduces over spatial dimensions only, keeping batch and
    channels (a global pooling, ``x.mean((2, 3))``). TraceError if it reduces over more."""
    check_no_channel_state(node, target)
    x = inputs[0]
    src, dst = shape_of(first_tensor_arg(node)), shape_of(node)
    if (src is None or dst is None or len(dst) < 2 or src[0] != dst[0] or src[1] != dst[1] or x.spatial != 1
            or x.dim != 1):
        raise TraceError(f"node '{node.name}' ({where(node)}) reduces over channels {src} -> {dst}; "
                         "only spatial reductions are supported")
    return x


def check_no_channel_state(node: fx.Node, target) -> None:
    """TraceError if ``target`` is a module with parameters or buffers of more than one value."""
    # Surgery never changes a module it has no layer kind for, so its state must not depend
    # on the channel count (PReLU with one parameter is fine, one per channel is not).
    if isinstance(target, nn.Module):
        state = [*target.parameters(), *target.buffers()]
        if any(t.numel() > 1 for t in state):
            raise TraceError(f"module '{node.target}' ({type(target).__name__}) holds parameters or buffers "
                             "that surgery would not resize; a ready-made rule cannot keep it consistent")


def same_channels(table: GroupTable, node: fx.Node, m: nn.Module, inputs: list[ChannelTensor]) -> ChannelTensor:
    # Built-in channel-wise modules are trusted by type, without passthrough's shape check.
    return inputs[0]


def prelu(table: GroupTable, node: fx.Node, m: nn.PReLU, inputs: list[ChannelTensor]) -> ChannelTensor:
    if m.num_parameters != 1:
        raise TraceError(f"module '{node.target}' (PReLU with per-channel parameters) is not supported")
    return inputs[0]


def pad(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor:
    """``F.pad`` and the padding modules (ConstantPad, ZeroPad, ReflectionPad, ReplicationPad,
    CircularPad): padding the spatial dimensions keeps every channel; TraceError where the
    padding reaches the channel dimension, whose new channels no layer would own."""
    x = inputs[0]
    src, dst = shape_of(first_tensor_arg(node)), shape_of(node)
    if src is None or dst is None or len(src) != len(dst) or x.dim < 0 or x.spatial != 1:
        raise TraceError(f"node '{node.name}' ({where(node)}) pads a flattened tensor or one it cannot follow")
    if src[x.dim] != dst[x.dim]:
        raise TraceError(f"node '{node.name}' ({where(node)}) pads the channel dimension {src} -> {dst}; only "
                         "spatial padding is supported (pad the channels with a conv, or freeze the module)")
    return x


def normalise(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor:
    """softmax / log_softmax: over another dimension each channel is normalised alone; over
    the channels every channel's value depends on all the others', so they keep their width."""
    x = inputs[0]
    shape = shape_of(node)
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if shape is None or not isinstance(dim, int):
        raise TraceError(f"node '{node.name}' ({where(node)}): {node.target} over a dimension the tracer cannot tell")
    if x.split or dim % len(shape) == x.dim % len(shape):
        table.fix(*x.layout)
    return x


def written(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> None:
    """``x[key] = value``: which channels go where is not followed, so every channel of both
    keeps its width (ultralytics' keypoint decoding writes into strided channel slices)."""
    for x in inputs:
        table.fix(*x.layout)


def no_channels(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> None:
    """x.size(), x.dim(), x.numel(): numbers, not channel tensors."""


def elementwise(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor:
    return merge(table, node, inputs)


def merge(table: GroupTable, node: fx.Node, tensors: list[ChannelTensor]) -> ChannelTensor:
    """Element-wise op of several channel tensors: their channels are the same channels."""
    if len({t.perm for t in tensors}) > 1:
        tensors = [plain(table, node, t) for t in tensors]
    first = tensors[0]
    for t in tensors[1:]:
        a, b = table.widths(first.layout), table.widths(t.layout)
        if a == b:
            for x, y in zip(first.layout, t.layout):
                table.union(x, y, node)
        elif len(t.layout) == 1 and sum(b) == 1 or len(first.layout) == 1 and sum(a) == 1:
            # Broadcast of a single channel: it must stay (a range of one channel would not).
            table.fix(t.layout[0] if sum(b) == 1 else first.layout[0])
            continue
        elif sum(a) == sum(b):
            copies = any(len(x) > 1 and len({table.find(g) for g in x}) == 1 for x in (first.layout, t.layout))
            if copies or not align(table, node, first.layout, t.layout):
                tile(table, first.layout, t.layout) or tile(table, t.layout, first.layout)
        else:
            raise TraceError(f"node '{node.name}' ({where(node)}) combines {sum(a)} and {sum(b)} channels")
        if t.spatial != first.spatial or t.dim != first.dim or t.split != first.split:
            raise TraceError(f"node '{node.name}' ({where(node)}) combines tensors with channels in "
                             "different places (flattened, or permuted)")
    scale_parameters(table, node, first)
    return ChannelTensor(list(first.layout), first.spatial, first.dim, perm=first.perm)


def align(table: GroupTable, node: fx.Node, a: list[int], b: list[int]) -> bool:
    """The same channels concatenated differently (a residual over MixNet's split conv):
    each side cut at the other's boundaries into ranges, coupled piece by piece. False,
    coupling nothing, where a group to cut follows another some other way."""
    ea, eb = table.entries(a), table.entries(b)
    if any(table.follows(g) is not None and table.follows(g).kind != "range" for g, _, _ in ea + eb):
        return False
    cuts = sorted({s for _, s, _ in ea + eb} | {e for _, _, e in ea + eb})
    pieces = []
    for entries in (ea, eb):
        pieces.append([range_of(table, node, g, lo - s, hi - s) for g, s, e in entries
                       for lo, hi in zip(cuts, cuts[1:]) if s <= lo and hi <= e])
    for x, y in zip(*pieces):
        table.union(x, y, node)
    return True


def tile(table: GroupTable, one: list[int], many: list[int]) -> bool:
    """Channels concatenated differently meet. A single group against copies of one
    group (GhostNet adds a conv's output to cat([y, depthwise(y)])) follows those copies;
    anything else keeps every group involved at full width. False only when ``one`` is
    not a single group, to try the other way round."""
    roots = {table.find(g) for g in many}
    if len(one) != 1:
        if len(many) == 1:
            return False
    elif len(roots) == 1 and table.find(one[0]) not in roots:
        table.add_follow(one[0], Follow("tile", roots.pop(), 0, len(many)))
        return True
    table.fix(*one, *many)
    return True


# Module rules match subclasses too (see registry.module_rule); these keys are unrelated classes
# except ReLU6 < Hardtanh, which share a handler.
MODULES = {
    nn.PReLU: prelu,
    # Modules that act on every channel independently (or not at all).
    **dict.fromkeys((
        nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.SiLU, nn.GELU, nn.Mish,
        nn.Hardswish, nn.Hardtanh, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Identity,
        nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
        nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
        nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
        nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample), same_channels),
    # Padding modules, by their bases (ZeroPad2d is a ConstantPad2d).
    **dict.fromkeys((padding._ConstantPadNd, padding._ReflectionPadNd, padding._ReplicationPadNd,
                     padding._CircularPadNd), pad),
}
FUNCTIONS = {
    # Binary element-wise ops: two channel tensors meeting here must share their channels.
    **dict.fromkeys((operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
                     operator.truediv, torch.add, torch.sub, torch.mul), elementwise),
    **dict.fromkeys((torch.mean, torch.sum, torch.amax), spatial_reduce),
    **dict.fromkeys((
        F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.silu, F.gelu, F.mish, F.hardswish, F.hardtanh,
        F.hardsigmoid, F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh,
        F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
        F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
        F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
        F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
        operator.neg, torch.neg, torch.cos, torch.sin, torch.exp, torch.log, torch.abs, torch.sqrt,
        torch.square), passthrough),
    **dict.fromkeys((F.softmax, F.log_softmax, torch.softmax, torch.log_softmax), normalise),
    F.pad: pad,
    operator.setitem: written,
}
METHODS = {
    **dict.fromkeys(("size", "dim", "numel"), no_channels),
    **dict.fromkeys(("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"), elementwise),
    **dict.fromkeys(("mean", "sum", "amax"), spatial_reduce),
    **dict.fromkeys(("relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "to",
                     "type_as", "clamp", "clamp_", "neg", "cos", "sin", "exp", "log", "abs", "sqrt", "square",
                     "sigmoid_"), passthrough),
    **dict.fromkeys(("softmax", "log_softmax"), normalise),
}
# Modules of packages the tracer does not import (torchvision.ops, timm), matched by class name
# anywhere in the module's MRO, after any rule keyed by class.
BY_CLASS_NAME = {
    # Drop a whole sample's residual branch (or nothing, in eval): identity on channels.
    "StochasticDepth": same_channels,
    "DropPath": same_channels,
}
# Rules that follow a shuffled tensor's channel positions (see ChannelTensor.perm).
KEEP_ORDER = frozenset({same_channels, prelu, pad, passthrough, spatial_reduce, elementwise, no_channels, written})
