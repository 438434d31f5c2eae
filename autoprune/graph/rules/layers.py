"""Rules for layers with parameters that depend on the channels: convs, linear layers, norms,
and per-channel parameters that scale a tensor (``scale``). Each records a
:class:`~autoprune.graph.Layer` that surgery slices and the cost model counts."""

from __future__ import annotations

import math

import torch.fx as fx
import torch.nn as nn

from autoprune.errors import TraceError
from autoprune.graph.nodes import parameter_behind, shape_of
from autoprune.graph.result import Follow, Layer
from autoprune.graph.rewrites import plain
from autoprune.graph.table import GroupTable
from autoprune.graph.tensor import ChannelTensor


def check_channels(table: GroupTable, node: fx.Node, x: ChannelTensor, expected: int) -> None:
    """TraceError unless ``x`` has the ``expected`` channels (features, after a flatten)."""
    got = sum(table.widths(x.layout)) * x.spatial
    if got != expected:
        raise TraceError(f"module '{node.target}' expects {expected} channels but the tracer sees {got}")


def conv(table: GroupTable, node: fx.Node, m: nn.Module, inputs: list[ChannelTensor]) -> ChannelTensor:
    """A plain conv makes a new group; a depthwise conv keeps its input's; a grouped conv
    splits both sides into blocks, one per conv group."""
    x = inputs[0]
    if x.spatial != 1 or x.dim != 1:
        raise TraceError(f"module '{node.target}' convolves a flattened or permuted tensor")
    check_channels(table, node, x, m.in_channels)
    out_positions = math.prod(shape_of(node)[2:])
    kernel = math.prod(m.kernel_size)
    bias = m.bias is not None
    if m.groups == 1:
        out = table.produce(node, m.out_channels)
        table.add_layer(Layer(node.target, "conv", tuple(x.layout), out, False, 1, 1, kernel, out_positions,
                              bias, in_perm=x.perm))
        return ChannelTensor([out])
    if m.groups == m.in_channels == m.out_channels:
        # Depthwise: each output channel is its input channel filtered; they prune together.
        for g in x.layout:
            table.add_member(g, node.target)
        table.add_layer(Layer(node.target, "conv", tuple(x.layout), None, True, 1, 1, kernel, out_positions,
                              bias, in_perm=x.perm))
        return x
    x = plain(table, node, x)
    if m.groups == m.in_channels and m.out_channels % m.in_channels == 0:
        # Depthwise with a channel multiplier k: output channels c*k .. c*k+k-1 filter input
        # channel c, so the output repeats each kept input channel k times and prunes with it.
        k = m.out_channels // m.in_channels
        out = table.new_group(m.out_channels, follows=Follow("repeat", joined(table, node, x), 0, k))
        table.add_producer(out, node.target)
        table.add_member(out, node.target)
        table.add_layer(Layer(node.target, "conv", tuple(x.layout), out, True, 1, 1, kernel, out_positions, bias))
        return ChannelTensor([out])
    if len(x.layout) == 1:
        # Grouped: conv group j reads input block j and writes output block j. Pruning every
        # block of each side by the same amount keeps `groups` and the pairing of blocks.
        table.split_into_blocks(x.layout[0], m.groups)
        out = table.produce(node, m.out_channels)
        table.split_into_blocks(out, m.groups)
    else:
        # A grouped conv over a concatenation: blocks would cut across the parts; freeze.
        table.fix(*x.layout)
        out = table.produce(node, m.out_channels, fixed=True)
    table.add_layer(Layer(node.target, "conv", tuple(x.layout), out, False, m.groups, 1, kernel,
                          out_positions, bias))
    return ChannelTensor([out])


def conv_transpose(table: GroupTable, node: fx.Node, m: nn.Module, inputs: list[ChannelTensor]) -> ChannelTensor:
    """A transposed conv (an upsampling conv) makes a new group as a conv does; it scatters
    every input position, so its MACs count those. Grouped ones have no rule."""
    x = inputs[0]
    if m.groups != 1:
        raise TraceError(f"module '{node.target}' is a grouped transposed conv ({m.groups} groups), which has no rule")
    if x.spatial != 1 or x.dim != 1:
        raise TraceError(f"module '{node.target}' convolves a flattened or permuted tensor")
    check_channels(table, node, x, m.in_channels)
    source = node.args[0] if node.args else node.kwargs.get("input")
    in_shape = shape_of(source) if isinstance(source, fx.Node) else None
    if in_shape is None:
        raise TraceError(f"module '{node.target}' (a transposed conv): the shape of its input is not known")
    out = table.produce(node, m.out_channels)
    table.add_layer(Layer(node.target, "conv", tuple(x.layout), out, False, 1, 1, math.prod(m.kernel_size),
                          math.prod(in_shape[2:]), m.bias is not None, in_perm=x.perm, transposed=True))
    return ChannelTensor([out])


def joined(table: GroupTable, node: fx.Node, x: ChannelTensor) -> int:
    """The one group a depthwise conv with a multiplier repeats: the input's single group, or
    a new fixed group standing for a concatenation (whose parts keep their width)."""
    if len(x.layout) == 1:
        return x.layout[0]
    table.fix(*x.layout)
    return table.new_group(sum(table.widths(x.layout)), fixed=True, hint=node.name)


def linear(table: GroupTable, node: fx.Node, m: nn.Linear, inputs: list[ChannelTensor]) -> ChannelTensor:
    """A linear layer on [N, features] (features spanning ``spatial`` positions per channel after
    a flatten) or on channels last, once per position; its output is a new group."""
    x = inputs[0]
    in_shape = shape_of(node.args[0])
    if in_shape is None or x.dim != len(in_shape) - 1:
        raise TraceError(f"module '{node.target}' (Linear) is applied to a {len(in_shape or ())}-d tensor whose "
                         "last dimension is not the channels; only [N, features] or channels-last inputs are supported")
    check_channels(table, node, x, m.in_features)
    out = table.produce(node, m.out_features)
    # Channels last (ConvNeXt's MLP): the layer runs once per position.
    table.add_layer(Layer(node.target, "linear", tuple(x.layout), out, False, 1, x.spatial, 1,
                          math.prod(in_shape[1:-1]), m.bias is not None))
    return ChannelTensor([out], dim=x.dim)


def norm(table: GroupTable, node: fx.Node, m: nn.Module, inputs: list[ChannelTensor]) -> ChannelTensor:
    """A per-channel norm (BatchNorm): a member of every group of its input."""
    x = inputs[0]
    if x.spatial != 1 or x.dim != 1:
        raise TraceError(f"module '{node.target}' ({type(m).__name__}) normalises a flattened or permuted tensor; "
                         "only per-channel norms are supported")
    check_channels(table, node, x, m.num_features)
    table.add_layer(Layer(node.target, "norm", tuple(x.layout), affine=m.affine, in_perm=x.perm))
    for g in x.layout:
        table.add_member(g, node.target)
    return x


def frozen_norm(table: GroupTable, node: fx.Node, m: nn.Module, inputs: list[ChannelTensor]) -> ChannelTensor:
    """A BatchNorm whose statistics and affine values are buffers (torchvision's and timm's
    FrozenBatchNorm2d, in every pretrained torchvision detector): a norm with no parameters."""
    x = inputs[0]
    if x.spatial != 1 or x.dim != 1:
        raise TraceError(f"module '{node.target}' ({type(m).__name__}) normalises a flattened or permuted tensor; "
                         "only per-channel norms are supported")
    check_channels(table, node, x, m.weight.shape[0])
    table.add_layer(Layer(node.target, "norm", tuple(x.layout), affine=False, in_perm=x.perm))
    for g in x.layout:
        table.add_member(g, node.target)
    return x


def group_norm(table: GroupTable, node: fx.Node, m: nn.GroupNorm, inputs: list[ChannelTensor]) -> ChannelTensor:
    x = inputs[0]
    if x.spatial != 1 or len(x.layout) != 1:
        raise TraceError(f"module '{node.target}' (GroupNorm) normalises a flattened or concatenated tensor; "
                         "only a single channel group is supported")
    check_channels(table, node, x, m.num_channels)
    # Each norm group's statistics are over one block: pruning every block alike keeps num_groups.
    table.split_into_blocks(x.layout[0], m.num_groups)
    table.add_layer(Layer(node.target, "norm", tuple(x.layout), affine=m.affine))
    table.add_member(x.layout[0], node.target)
    return x


def layer_norm(table: GroupTable, node: fx.Node, m: nn.LayerNorm, inputs: list[ChannelTensor]) -> ChannelTensor:
    x = inputs[0]
    ndim = len(shape_of(node) or ())
    # A LayerNorm over the channels: channels last (nn.LayerNorm after a permute, or on
    # [N, features]), or a subclass that permutes inside (LayerNorm2d of torchvision and timm).
    over_channels = x.dim == ndim - 1 or (type(m) is not nn.LayerNorm and x.dim == 1)
    if len(m.normalized_shape) != 1 or x.spatial != 1 or not over_channels:
        raise TraceError(f"module '{node.target}' ({type(m).__name__}) normalises over {tuple(m.normalized_shape)}, "
                         "not over the channels alone")
    check_channels(table, node, x, m.normalized_shape[0])
    table.add_layer(Layer(node.target, "norm", tuple(x.layout), affine=m.elementwise_affine))
    for g in x.layout:
        table.add_member(g, node.target)
    return x


def scale_parameters(table: GroupTable, node: fx.Node, x: ChannelTensor) -> None:
    """A parameter with one value per channel that scales or shifts ``x`` (ConvNeXt's
    layer scale) is a layer of its own: surgery slices it with the channels. Any other
    tensor of several values along the channels (a detection head's grid of anchor points
    added to its boxes) fixes them: surgery could not slice it to match."""
    width = sum(table.widths(x.layout))
    for arg in node.args:
        param = parameter_behind(arg)
        if param is None:
            continue
        target, size = param
        if (size == width * x.spatial and width != 1 and x.spatial == 1 and shape_of(node) is not None
                and _is_parameter(node, target)):
            table.add_layer(Layer(target, "scale", tuple(x.layout), in_perm=x.perm))
        elif spans_channels(shape_of(arg), shape_of(node), x):
            table.fix(*x.layout)


def _is_parameter(node: fx.Node, target: str) -> bool:
    """Whether ``target`` is a parameter of the traced model (not a buffer, nor a constant fx
    computed from buffers, which the pruned model computes anew from its sliced buffers)."""
    owner, _, name = target.rpartition(".")
    return name in node.graph.owning_module.get_submodule(owner)._parameters


def spans_channels(const: tuple[int, ...] | None, out: tuple[int, ...] | None, x: ChannelTensor) -> bool:
    """Whether a tensor of shape ``const``, broadcast against ``x`` into ``out``, holds more
    than one value along ``x``'s channel dimension (or where the shapes do not say)."""
    if const is None or out is None or x.split or x.dim not in (1, -1, len(out) - 1):
        return True
    i = (x.dim % len(out)) - (len(out) - len(const))  # broadcasting aligns the last dimensions
    return i >= 0 and const[i] != 1


MODULES = {
    **dict.fromkeys((nn.Conv1d, nn.Conv2d, nn.Conv3d), conv),
    **dict.fromkeys((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), conv_transpose),
    nn.Linear: linear,
    **dict.fromkeys((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), norm),
    nn.GroupNorm: group_norm,
    nn.LayerNorm: layer_norm,
}
FUNCTIONS: dict = {}
METHODS: dict = {}
BY_CLASS_NAME = {"FrozenBatchNorm2d": frozen_norm}  # torchvision.ops.misc and timm.layers
# Rules that follow a shuffled tensor's channel positions (see ChannelTensor.perm).
KEEP_ORDER = frozenset({conv, conv_transpose, norm, frozen_norm})
