"""Trace a model into channel groups: the sets of layers whose channel counts must be equal.

A :class:`ChannelGroup` is one channel dimension that can be pruned as a unit: the output of a
conv or linear layer together with everything that must match it (its BatchNorm, activations,
pooling, every branch that meets it at a residual add, the input and output of a depthwise
conv). Concatenation (DenseNet) is kept as a *layout*: the ordered list of groups that make up
a tensor's channels, so that a consumer slices its input with the right offsets.

Tracing uses :mod:`torch.fx`; one shape propagation gives every layer's spatial size, which
is all the cost model needs. Anything the tracer does not understand on a channel-carrying
tensor raises :class:`~autoprune.errors.TraceError` naming the node and module, rather than
producing a silently wrong model.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from autoprune.errors import TraceError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Modules that act on every channel independently (or not at all): channel layout passes through.
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.SiLU, nn.GELU, nn.Mish,
    nn.Hardswish, nn.Hardtanh, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample,
)
_PASS_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.silu, F.gelu, F.mish, F.hardswish, F.hardtanh,
    F.hardsigmoid, F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh,
    F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
    operator.neg, torch.neg,
}
_PASS_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "to", "type_as",
    "clamp", "clamp_", "neg",
}
# Binary element-wise ops: two channel tensors meeting here must share their channels.
_MERGE_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                    operator.imul, operator.truediv, torch.add, torch.sub, torch.mul}
_MERGE_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_FLATTEN_FUNCTIONS = {torch.flatten}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}
_MEAN_METHODS = {"mean", "sum", "amax"}
_MEAN_FUNCTIONS = {torch.mean, torch.sum, torch.amax}


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable channel dimension.

    ``members`` names the layers that produce or normalise these channels, in graph order;
    the group's ``name`` is its first producer's. ``fixed`` groups (the network input, the
    classifier output, channels of grouped convs) keep their original ``width``.
    """

    id: int
    name: str
    width: int
    fixed: bool
    members: tuple[str, ...]
    producers: tuple[str, ...]


@dataclass(frozen=True)
class Layer:
    """A layer whose parameters depend on channel widths.

    ``kind`` is ``conv``, ``linear`` or ``norm``. ``in_layout`` lists the groups that make up
    the input channels in order; ``out_group`` is the group of the output channels (``None``
    for norms and depthwise convs, whose output layout equals their input layout). For a
    linear layer after a flatten, every input channel spans ``spatial`` features.
    ``out_positions`` is the number of output positions (H×W for a 2-d conv), ``kernel`` the
    kernel volume, ``groups`` the conv groups when they are not tied to the width.
    """

    name: str
    kind: str
    in_layout: tuple[int, ...]
    out_group: int | None = None
    depthwise: bool = False
    groups: int = 1
    spatial: int = 1
    kernel: int = 1
    out_positions: int = 1
    bias: bool = False
    affine: bool = False


@dataclass(frozen=True)
class ChannelGraph:
    """The traced structure of a model: groups, the layers that depend on them, and the
    parameter count that no width affects."""

    groups: tuple[ChannelGroup, ...]
    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    other_params: int


@dataclass
class _Tensor:
    """What the tracer knows of a node's value: its channel layout (group ids in order) and,
    after a flatten, how many features each channel spans."""

    layout: list[int]
    spatial: int = 1


class _Tracer:
    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.parent: list[int] = []
        self.width: list[int] = []
        self.fixed: list[bool] = []
        self.first_seen: list[int] = []  # graph position, for naming and ordering
        self.members: list[list[str]] = []
        self.producers: list[list[str]] = []
        self.layers: list[Layer] = []
        self.seen_modules: dict[str, bool] = {}
        self.pos = 0

    # -- union-find over group ids ---------------------------------------------------------
    def new_group(self, width: int, fixed: bool = False) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.width.append(int(width))
        self.fixed.append(fixed)
        self.first_seen.append(self.pos)
        self.members.append([])
        self.producers.append([])
        return gid

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, node: fx.Node) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        if self.width[a] != self.width[b]:
            raise TraceError(f"node '{node.name}' ({_where(node)}) joins {self.width[a]} and "
                             f"{self.width[b]} channels; cannot couple them")
        keep, drop = (a, b) if self.first_seen[a] <= self.first_seen[b] else (b, a)
        self.parent[drop] = keep
        self.fixed[keep] = self.fixed[keep] or self.fixed[drop]

    def merge_layouts(self, tensors: list[_Tensor], node: fx.Node) -> _Tensor:
        """Element-wise op of several channel tensors: their channels are the same channels."""
        first = tensors[0]
        for t in tensors[1:]:
            a = [self.width[self.find(g)] for g in first.layout]
            b = [self.width[self.find(g)] for g in t.layout]
            if a == b:
                for x, y in zip(first.layout, t.layout):
                    self.union(x, y, node)
            elif len(t.layout) == 1 and sum(b) == 1 or len(first.layout) == 1 and sum(a) == 1:
                continue  # broadcast of a single channel
            elif sum(a) == sum(b):
                raise TraceError(f"node '{node.name}' ({_where(node)}) combines tensors whose channels are "
                                 f"concatenated differently ({a} vs {b}); not supported")
            else:
                raise TraceError(f"node '{node.name}' ({_where(node)}) combines {sum(a)} and {sum(b)} channels")
            if t.spatial != first.spatial:
                raise TraceError(f"node '{node.name}' ({_where(node)}) combines flattened and unflattened tensors")
        return _Tensor(list(first.layout), first.spatial)

    # -- the pass --------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        try:
            gm = fx.symbolic_trace(self.model)
        except Exception as exc:  # fx raises many kinds; all mean the same to the user
            raise TraceError(f"cannot trace {type(self.model).__name__} with torch.fx: "
                             f"{str(exc).splitlines()[0]}") from None
        was_training = gm.training
        gm.eval()
        try:
            with torch.no_grad():
                param = next(self.model.parameters(), None)
                device = param.device if param is not None else "cpu"
                ShapeProp(gm).propagate(torch.zeros(1, *self.input_shape, device=device))
        except Exception as exc:
            raise TraceError(f"a forward pass of {type(self.model).__name__} on input shape "
                             f"{self.input_shape} failed: {str(exc).splitlines()[0]}") from None
        finally:
            gm.train(was_training)
        self.modules = dict(gm.named_modules())
        values: dict[fx.Node, _Tensor | None] = {}
        for node in gm.graph.nodes:
            self.pos += 1
            if node.op == "output":
                for t in _flat_values(node.args, values):
                    for g in t.layout:
                        self.fixed[self.find(g)] = True
                continue
            values[node] = self.visit(node, values)
        return self.finish()

    def visit(self, node: fx.Node, values: dict) -> _Tensor | None:
        if node.op == "placeholder":
            shape = _shape(node)
            if shape is None or len(shape) < 2:
                return None
            return _Tensor([self.new_group(shape[1], fixed=True)])
        if node.op == "get_attr":
            return None  # constants: an op mixing them with channel tensors is caught below
        inputs = _flat_values(node.args, values) + _flat_values(tuple(node.kwargs.values()), values)
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target], inputs)
        if not inputs:
            return None
        if node.op == "call_function":
            return self.visit_function(node, inputs)
        if node.op == "call_method":
            return self.visit_method(node, inputs)
        raise TraceError(f"node '{node.name}' ({_where(node)}): unsupported op {node.op}")

    def visit_module(self, node: fx.Node, module: nn.Module, inputs: list[_Tensor]) -> _Tensor | None:
        name = node.target
        if not inputs:
            if any(True for _ in module.parameters(recurse=False)):
                raise TraceError(f"module '{name}' ({type(module).__name__}) takes no channel input")
            return None
        if len(inputs) != 1:
            raise TraceError(f"module '{name}' ({type(module).__name__}) takes {len(inputs)} channel tensors; "
                             "only single-input modules are supported")
        x = inputs[0]
        if any(True for _ in module.parameters(recurse=False)):
            # A layer applied twice would need its cost counted twice but sliced once.
            if name in self.seen_modules:
                raise TraceError(f"module '{name}' ({type(module).__name__}) is called more than once; "
                                 "layers with parameters must be used once per forward")
            self.seen_modules[name] = True
        if isinstance(module, _CONV):
            return self.visit_conv(node, module, x)
        if isinstance(module, nn.Linear):
            return self.visit_linear(node, module, x)
        if isinstance(module, _NORM):
            if x.spatial != 1:
                raise TraceError(f"module '{name}' ({type(module).__name__}) normalises a flattened tensor; "
                                 "only per-channel norms are supported")
            self.check_channels(node, x, module.num_features)
            self.layers.append(Layer(name, "norm", tuple(x.layout), affine=module.affine))
            for g in x.layout:
                self.members[self.find(g)].append(name)
            return x
        if isinstance(module, nn.Flatten):
            return self.flatten(node, x)
        if isinstance(module, _PASS_MODULES):
            if isinstance(module, nn.PReLU) and module.num_parameters != 1:
                raise TraceError(f"module '{name}' (PReLU with per-channel parameters) is not supported")
            return x
        raise TraceError(f"module '{name}' ({type(module).__name__}) is not supported by the channel tracer; "
                         "wrap it as a frozen block or register its pruning rule")

    def check_channels(self, node: fx.Node, x: _Tensor, expected: int) -> None:
        got = sum(self.width[self.find(g)] for g in x.layout) * x.spatial
        if got != expected:
            raise TraceError(f"module '{node.target}' expects {expected} channels but the tracer sees {got}")

    def visit_conv(self, node: fx.Node, m: nn.Module, x: _Tensor) -> _Tensor:
        if x.spatial != 1:
            raise TraceError(f"module '{node.target}' convolves a flattened tensor")
        self.check_channels(node, x, m.in_channels)
        shape = _shape(node)
        out_positions = math.prod(shape[2:])
        kernel = math.prod(m.kernel_size)
        bias = m.bias is not None
        if m.groups == 1:
            out = self.new_group(m.out_channels)
            self.producers[out].append(node.target)
            self.members[out].append(node.target)
            self.layers.append(Layer(node.target, "conv", tuple(x.layout), out, False, 1, 1, kernel, out_positions, bias))
            return _Tensor([out])
        if m.groups == m.in_channels == m.out_channels:
            # Depthwise: each output channel is its input channel filtered; they prune together.
            for g in x.layout:
                self.members[self.find(g)].append(node.target)
            self.layers.append(Layer(node.target, "conv", tuple(x.layout), None, True, 1, 1, kernel, out_positions, bias))
            return x
        # Grouped convs (and depth multipliers) tie channels to groups in ways a width vector
        # cannot keep consistent: freeze both sides.
        for g in x.layout:
            self.fixed[self.find(g)] = True
        out = self.new_group(m.out_channels, fixed=True)
        self.producers[out].append(node.target)
        self.members[out].append(node.target)
        self.layers.append(Layer(node.target, "conv", tuple(x.layout), out, False, m.groups, 1, kernel,
                                 out_positions, bias))
        return _Tensor([out])

    def visit_linear(self, node: fx.Node, m: nn.Linear, x: _Tensor) -> _Tensor:
        in_shape = _shape(node.args[0])
        if in_shape is None or len(in_shape) != 2:
            raise TraceError(f"module '{node.target}' (Linear) is applied to a {len(in_shape or ())}-d tensor; "
                             "only [N, features] inputs are supported")
        self.check_channels(node, x, m.in_features)
        out = self.new_group(m.out_features)
        self.producers[out].append(node.target)
        self.members[out].append(node.target)
        self.layers.append(Layer(node.target, "linear", tuple(x.layout), out, False, 1, x.spatial, 1, 1,
                                 m.bias is not None))
        return _Tensor([out])

    def flatten(self, node: fx.Node, x: _Tensor) -> _Tensor:
        src, dst = _shape(_first_tensor_arg(node)), _shape(node)
        if src is None or dst is None or len(dst) != 2 or src[0] != dst[0] or math.prod(src[1:]) != dst[1]:
            raise TraceError(f"node '{node.name}' ({_where(node)}) reshapes channels {src} -> {dst}; only "
                             "flattening [N, C, ...] to [N, features] is supported")
        return _Tensor(x.layout, x.spatial * math.prod(src[2:]))

    def visit_function(self, node: fx.Node, inputs: list[_Tensor]) -> _Tensor | None:
        fn = node.target
        if fn in _MERGE_FUNCTIONS:
            return self.merge_layouts(inputs, node)
        if fn is torch.cat or fn is torch.concat:
            return self.concat(node, inputs)
        if fn in _FLATTEN_FUNCTIONS:
            return self.flatten(node, inputs[0])
        if fn in _MEAN_FUNCTIONS:
            return self.reduce(node, inputs[0])
        if fn in _PASS_FUNCTIONS:
            return self.single(node, inputs)
        if fn is operator.getitem and _shape(node) is None:
            return None
        if _shape(node) is None and not isinstance(node.meta.get("tensor_meta"), (list, tuple)):
            return None  # e.g. x.size(1) * 2: a number, not a channel tensor
        raise TraceError(f"node '{node.name}' ({_where(node)}): function {_fn_name(fn)} on a channel tensor "
                         "is not supported")

    def visit_method(self, node: fx.Node, inputs: list[_Tensor]) -> _Tensor | None:
        name = node.target
        if name in ("size", "dim", "numel"):
            return None
        if name in _MERGE_METHODS:
            return self.merge_layouts(inputs, node)
        if name in _FLATTEN_METHODS:
            return self.flatten(node, inputs[0])
        if name in _MEAN_METHODS:
            return self.reduce(node, inputs[0])
        if name in _PASS_METHODS:
            return self.single(node, inputs)
        raise TraceError(f"node '{node.name}' ({_where(node)}): method .{name}() on a channel tensor is not supported")

    def single(self, node: fx.Node, inputs: list[_Tensor]) -> _Tensor:
        if len(inputs) != 1:
            return self.merge_layouts(inputs, node)
        src, dst = _shape(_first_tensor_arg(node)), _shape(node)
        if src is not None and dst is not None and (len(src) < 2 or len(dst) < 2 or src[1] != dst[1]):
            raise TraceError(f"node '{node.name}' ({_where(node)}) changes the channel dimension {src} -> {dst}")
        return inputs[0]

    def reduce(self, node: fx.Node, x: _Tensor) -> _Tensor:
        src, dst = _shape(_first_tensor_arg(node)), _shape(node)
        if src is None or dst is None or len(dst) < 2 or src[0] != dst[0] or src[1] != dst[1] or x.spatial != 1:
            raise TraceError(f"node '{node.name}' ({_where(node)}) reduces over channels {src} -> {dst}; "
                             "only spatial reductions are supported")
        return x

    def concat(self, node: fx.Node, inputs: list[_Tensor]) -> _Tensor:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        shape = _shape(node)
        if dim < 0:
            dim += len(shape)
        if dim != 1:
            return self.merge_layouts(inputs, node)
        if any(t.spatial != 1 for t in inputs):
            raise TraceError(f"node '{node.name}' ({_where(node)}) concatenates flattened tensors")
        n_tensors = len(_tensor_args(node.args[0]))
        if n_tensors != len(inputs):
            raise TraceError(f"node '{node.name}' ({_where(node)}) concatenates constants with channel tensors")
        return _Tensor([g for t in inputs for g in t.layout])

    # -- canonical result ------------------------------------------------------------------
    def finish(self) -> ChannelGraph:
        roots = sorted({self.find(g) for g in range(len(self.parent))}, key=lambda g: self.first_seen[g])
        # Keep only groups some layer depends on (the input group always counts).
        used = {self.find(g) for layer in self.layers for g in layer.in_layout}
        used |= {self.find(layer.out_group) for layer in self.layers if layer.out_group is not None}
        roots = [r for r in roots if r in used]
        new_id = {r: i for i, r in enumerate(roots)}
        members: dict[int, list[str]] = {r: [] for r in roots}
        producers: dict[int, list[str]] = {r: [] for r in roots}
        for g in range(len(self.parent)):
            r = self.find(g)
            if r in members:
                members[r] += self.members[g]
                producers[r] += self.producers[g]
        order = {layer.name: i for i, layer in enumerate(self.layers)}
        groups = []
        for r in roots:
            mem = tuple(sorted(set(members[r]), key=order.get))
            prod = tuple(sorted(set(producers[r]), key=order.get))
            name = prod[0] if prod else (mem[0] if mem else "input")
            fixed = self.fixed[r] or not prod
            groups.append(ChannelGroup(new_id[r], name, self.width[r], fixed, mem, prod))
        # Group names must be unique; two groups can only share a name if neither has producers.
        seen: dict[str, int] = {}
        for i, g in enumerate(groups):
            if g.name in seen:
                seen[g.name] += 1
                groups[i] = ChannelGroup(g.id, f"{g.name}#{seen[g.name]}", g.width, g.fixed, g.members, g.producers)
            else:
                seen[g.name] = 0
        remap = lambda g: new_id[self.find(g)]  # noqa: E731
        layers = tuple(
            Layer(l.name, l.kind, tuple(remap(g) for g in l.in_layout),
                  None if l.out_group is None else remap(l.out_group), l.depthwise, l.groups, l.spatial,
                  l.kernel, l.out_positions, l.bias, l.affine)
            for l in self.layers
        )
        covered = set()
        for layer in layers:
            covered |= {id(p) for p in self.modules[layer.name].parameters(recurse=False)}
        other = sum(p.numel() for p in self.model.parameters() if id(p) not in covered)
        return ChannelGraph(tuple(groups), layers, self.input_shape, other)


def trace(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> ChannelGraph:
    """Trace ``model`` on an input of shape ``input_shape`` (no batch dimension)."""
    return _Tracer(model, input_shape).run()


# -- small helpers on fx nodes -------------------------------------------------------------

def _shape(node) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _tensor_args(arg) -> list[fx.Node]:
    if isinstance(arg, fx.Node):
        return [arg] if _shape(arg) is not None else []
    if isinstance(arg, (list, tuple)):
        return [n for a in arg for n in _tensor_args(a)]
    return []


def _first_tensor_arg(node: fx.Node) -> fx.Node | None:
    found = _tensor_args(node.args)
    return found[0] if found else None


def _flat_values(args, values: dict) -> list[_Tensor]:
    out: list[_Tensor] = []
    for a in args:
        if isinstance(a, fx.Node):
            v = values.get(a)
            if v is not None:
                out.append(v)
        elif isinstance(a, (list, tuple)):
            out += _flat_values(a, values)
        elif isinstance(a, dict):
            out += _flat_values(tuple(a.values()), values)
    return out


def _fn_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = getattr(cls, "__name__", str(cls))
        return f"in module '{path}' ({cls_name})"
    return "at top level"
