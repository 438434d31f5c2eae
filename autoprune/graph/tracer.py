"""The walk: one pass over the fx graph that hands every node to a rule.

:func:`trace` runs a :class:`Tracer` over the shaped fx graph of the model
(:mod:`~autoprune.graph.fxtrace`). The tracer keeps what each node's value carries (a
:class:`~autoprune.graph.ChannelTensor`, containers of them, or nothing), looks up the rule
for each call (:mod:`~autoprune.graph.registry`) and runs it on a
:class:`~autoprune.graph.GroupTable`; it knows no op itself. Where a rule fails inside a
submodule, that submodule is frozen and the trace starts again; the finished table becomes a
:class:`~autoprune.graph.ChannelGraph` (:mod:`~autoprune.graph.assemble`).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import TensorMetadata

from autoprune.errors import TraceError, one_line
from autoprune.graph.assemble import assemble
from autoprune.graph.fxtrace import NeedsLeaf, called_modules, first_trace, same_in_both_modes, shaped_graph_module
from autoprune.graph.nodes import (
    HOW_TO_ADD,
    flat_leaves,
    is_record_class,
    metadata_args,
    same_kind,
    shape_of,
    source_line,
    unsupported_function,
    where,
)
from autoprune.graph.parts import trace_parts
from autoprune.graph.registry import keeps_order, module_rule, rule_for
from autoprune.graph.result import ChannelGraph
from autoprune.graph.rewrites import plain
from autoprune.graph.table import GroupTable, Handler
from autoprune.graph.tensor import ChannelTensor, Parts

# How many submodules one trace may freeze; each costs a fresh fx trace and forward pass.
MAX_FROZEN_LEAVES = 64


def trace(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32), mode: str | None = None) -> ChannelGraph:
    """Trace ``model`` on an input of shape ``input_shape`` (no batch dimension), in ``mode``:
    ``"eval"`` (the graph that is deployed), ``"train"``, or None for the mode the model is in
    (it is put back afterwards).

    A submodule that cannot be traced is frozen (see :class:`~autoprune.graph.FrozenLeaf`) and
    the trace starts again, up to :data:`MAX_FROZEN_LEAVES` times. A model whose own
    ``forward`` cannot be traced is traced in parts (:mod:`~autoprune.graph.parts`: a whole
    detector's backbone, box head, prediction heads). TraceError if no part has anything to
    search either (the model's own error), or if nothing is left to search.
    """
    if mode not in (None, "eval", "train"):
        raise TraceError(f"trace mode must be 'eval' or 'train', got {mode!r}")
    was = model.training
    if mode is not None:
        model.train(mode == "train")
    try:
        try:
            graph = _trace(model, input_shape)
        except TraceError as why:
            graph = trace_parts(model, input_shape, why, _trace_part)
        graph = dataclasses.replace(graph, mode="train" if model.training else "eval")
        return graph if model.training else _kept_for_training(model, input_shape, graph)
    finally:
        model.train(was)


def _trace_part(part: nn.Module, input_shape: tuple[int, ...]):
    """(graph, end ids) of a part of a model (see :mod:`~autoprune.graph.parts`), in eval
    mode with the channels its training forward needs whole fixed, as for a whole model."""
    graph, ends = _trace(part, input_shape, ends=True)
    return (graph if part.training else _kept_for_training(part, input_shape, graph)), ends


def _kept_for_training(model: nn.Module, input_shape: tuple[int, ...], graph: ChannelGraph) -> ChannelGraph:
    """The eval-mode ``graph`` with the channels the training forward needs whole fixed too.

    A pruned model is fine-tuned in training mode, whose forward may run layers the deployed
    one does not (GoogLeNet's and Inception's auxiliary classifiers): surgery, following the
    eval graph, would not slice them. So where the training forward calls modules the eval
    forward does not, it is traced too, and every group that feeds a layer of the training
    forward alone, or that the training forward fixes, is fixed here (matched by name). The
    MACs stay the eval graph's, the deployed model's."""
    leaves = [f.path for f in graph.frozen]
    try:
        _, deployed = first_trace(model, leaves, input_shape)
        model.train(True)
        _, training = first_trace(model, leaves, input_shape)
        if called_modules(training) <= called_modules(deployed):
            return graph
        trained = _trace(model, input_shape)
    except Exception:  # noqa: BLE001 — a training forward that cannot be traced is the user's to fix at fine-tuning
        return graph
    finally:
        model.train(False)
    layers = {layer.name for layer in graph.layers}
    needed = {trained.groups[g].name for layer in trained.layers if layer.name not in layers for g in layer.in_layout}
    needed |= {g.name for g in trained.groups if g.fixed}
    if not any(g.name in needed and not g.fixed for g in graph.groups):
        return graph
    return dataclasses.replace(graph, groups=tuple(dataclasses.replace(g, fixed=True) if g.name in needed else g
                                                   for g in graph.groups))


def _trace(model: nn.Module, input_shape: tuple[int, ...], ends: bool = False):
    """The graph of ``model``, freezing what cannot be traced; with ``ends`` (a part of a
    model, see :mod:`~autoprune.graph.parts`), (graph, end group ids) of Tracer.run."""
    leaves: dict[str, str] = {}
    while True:
        try:
            result = Tracer(model, input_shape, leaves, ends=ends).run()
            graph = result[0] if ends else result
        except NeedsLeaf as need:
            if len(leaves) >= MAX_FROZEN_LEAVES:
                raise TraceError(f"more than {MAX_FROZEN_LEAVES} submodules of {type(model).__name__} cannot be "
                                 f"traced; the last: '{need.path}': {need.reason}") from None
            leaves[need.path] = need.reason
            continue
        if graph.frozen and all(g.fixed for g in graph.groups):
            why = "; ".join(f"'{f.path}' ({f.kind}): {f.reason}" for f in graph.frozen)
            raise TraceError(f"nothing in {type(model).__name__} can be searched: every channel group is fixed "
                             f"by the submodules that cannot be traced: {why}")
        return result


def flat_values(args, values: dict) -> list[ChannelTensor]:
    """The channel tensors ``args`` carry, in order (the tensors of parts one by one)."""
    out: list[ChannelTensor] = []
    for a in args:
        if isinstance(a, fx.Node):
            v = values.get(a)
            if isinstance(v, Parts):
                out += v
            elif v is not None:
                out.append(v)
        elif isinstance(a, (list, tuple)):
            out += flat_values(a, values)
        elif isinstance(a, dict):
            out += flat_values(tuple(a.values()), values)
    return out


class Tracer:
    """One pass over the fx graph of ``model`` with the submodules at the paths of ``leaves``
    frozen (path -> why); :meth:`run` returns the ChannelGraph or raises NeedsLeaf.

    With ``ends`` the model is a part of a larger one whose other parts may share its input's
    and outputs' channels: those are left free (the input group is produced by ``""``), and
    :meth:`run` returns (graph, ids) where ids are the input's group, then the group of each
    output in :func:`flat_leaves` order (None for one that is not a single group)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], leaves: dict[str, str] | None = None,
                 ends: bool = False):
        self.ends = ends
        self.end_groups: list[int | None] = []
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.leaves = dict(leaves or {})  # path -> why it is frozen
        self.leaf_rank: dict[str, float] = {}  # where each leaf sits among the layers, for ordering names
        self.parts: dict[fx.Node, Any] = {}  # tuples, namedtuples and dicts of channel tensors
        self.seen_modules: dict[str, bool] = {}
        self.table = GroupTable()

    def run(self) -> ChannelGraph:
        gm, leaf_macs = shaped_graph_module(self.model, self.input_shape, self.leaves)
        self.modules = dict(gm.named_modules())
        values: dict[fx.Node, ChannelTensor | None] = {}
        for node in gm.graph.nodes:
            self.table.position += 1
            if node.op == "output":
                if self.ends:  # each output a single group, left free; the rest fixed
                    for t in flat_leaves(self.resolve(node.args[0], values), ChannelTensor):
                        one = (isinstance(t, ChannelTensor) and len(t.layout) == 1 and t.perm is None and t.dim == 1
                               and t.spatial == 1)
                        self.end_groups.append(t.layout[0] if one else None)
                        if isinstance(t, ChannelTensor) and not one:
                            self.table.fix(*t.layout)
                    continue
                for t in self.channel_tensors(node.args, values):
                    self.table.fix(*t.layout)
                continue
            try:
                values[node] = self.step(node, values)
            except TraceError as exc:
                raise self.leaf_for(node, exc) from None
        if self.table.rewrites and not same_in_both_modes(self.model, gm, self.leaves, self.input_shape):
            # Surgery re-traces the pruned model, which would keep one mode's forward only.
            for r in self.table.rewrites:
                self.table.fix(*r.layout)
        return assemble(self.table, self.model, self.input_shape, self.modules, self.leaves, leaf_macs,
                        self.leaf_rank, self.end_groups if self.ends else None)

    def leaf_for(self, node: fx.Node, exc: TraceError) -> Exception:
        """What to raise when the rules fail at ``node``: a request to freeze the innermost
        submodule around it that is not frozen yet, or ``exc`` itself at top level."""
        stack = node.meta.get("nn_module_stack") or {}
        for path, _ in reversed(list(stack.values())):
            if path and path not in self.leaves:
                return NeedsLeaf(path, one_line(exc))
        return self.with_line(node, exc)

    def with_line(self, node: fx.Node, exc: TraceError) -> TraceError:
        """``exc`` naming the line of the model's code that made ``node``, found by tracing
        again with stack traces (too slow to record on every trace)."""
        try:
            _, graph = first_trace(self.model, self.leaves, self.input_shape, stack_traces=True)
        except Exception:  # noqa: BLE001 — the line is a courtesy; the error stands without it
            return exc
        line = next((source_line(n) for n in graph.nodes if n.name == node.name), None)
        return TraceError(f"{one_line(exc)} (model code: {line})") if line else exc

    def step(self, node: fx.Node, values: dict) -> ChannelTensor | None:
        """Frozen leaves and containers of channel tensors, then the rules (:meth:`visit`)."""
        if node.op == "call_module" and node.target in self.leaves:
            return self.visit_frozen(node, values)
        if node.op == "call_function":
            if is_record_class(node.target):
                # A model's namedtuple or dataclass output (GoogLeNet's and Inception's in training mode).
                args = [self.resolve(a, values) for a in node.args]
                kwargs = {k: self.resolve(v, values) for k, v in node.kwargs.items()}
                self.parts[node] = node.target(*args, **kwargs)
                return None
            src = node.args[0] if node.args else None
            if (node.target in (operator.getitem, getattr) and isinstance(src, fx.Node) and src in self.parts
                    and len(node.args) == 2 and not isinstance(node.args[1], fx.Node)):
                try:
                    part = node.target(self.parts[src], node.args[1])
                except (AttributeError, LookupError, TypeError):  # not an element: no channels
                    return None
                if isinstance(part, ChannelTensor) or part is None:
                    return part
                self.parts[node] = part
                return None
        return self.visit(node, values)

    def resolve(self, arg, values: dict):
        """``arg`` with every node replaced by what it carries (a ChannelTensor, a container, None)."""
        if isinstance(arg, fx.Node):
            return self.parts[arg] if arg in self.parts else values.get(arg)
        if isinstance(arg, (list, tuple)):
            return same_kind(arg, [self.resolve(a, values) for a in arg])
        if isinstance(arg, dict):
            return {k: self.resolve(v, values) for k, v in arg.items()}
        return None

    def channel_tensors(self, args, values: dict) -> list[ChannelTensor]:
        """Every channel tensor in ``args``, inside containers too."""
        out: list[ChannelTensor] = []
        stack = [self.resolve(args, values)]
        while stack:
            x = stack.pop()
            if isinstance(x, ChannelTensor):
                out.append(x)
            elif isinstance(x, dict):
                stack += x.values()
            elif isinstance(x, (list, tuple)):
                stack += x
            elif dataclasses.is_dataclass(x) and not isinstance(x, type):
                stack += [getattr(x, f.name) for f in dataclasses.fields(x)]
        return out

    def visit_frozen(self, node: fx.Node, values: dict) -> ChannelTensor | None:
        """A frozen leaf: its input channels are fixed; each tensor it returns is a new fixed group."""
        for t in self.channel_tensors((node.args, node.kwargs), values):
            self.table.fix(*t.layout)
        self.leaf_rank.setdefault(node.target, self.table.layer_count - 0.5)
        out = self.leaf_output(node, node.meta.get("tensor_meta"))
        if isinstance(out, ChannelTensor) or out is None:
            return out
        self.parts[node] = out
        if isinstance(out, (list, tuple)) and all(isinstance(t, ChannelTensor) for t in out):
            return Parts(out)  # used whole (torch.cat(leaf(x), 1)), its tensors are read in order
        return None

    def leaf_output(self, node: fx.Node, meta):
        if isinstance(meta, TensorMetadata):
            shape = tuple(meta.shape)
            return ChannelTensor([self.table.produce(node, shape[1], fixed=True)]) if len(shape) >= 2 else None
        if isinstance(meta, dict):
            return {k: self.leaf_output(node, v) for k, v in meta.items()}
        if isinstance(meta, (list, tuple)):
            return same_kind(meta, [self.leaf_output(node, v) for v in meta])
        return None

    def visit(self, node: fx.Node, values: dict) -> ChannelTensor | None:
        """A node by its op: the network input, a constant, or a call, handed to its rule."""
        if node.op == "placeholder":
            shape = shape_of(node)
            first = self.ends and len(self.end_groups) == 0  # the first placeholder: the part's input
            if shape is None or len(shape) < 2:
                if first:
                    self.end_groups.insert(0, None)
                return None
            if first:  # produced by whatever feeds the part: "" until parts are joined
                g = self.table.new_group(shape[1])
                self.table.add_producer(g, "")
                self.leaf_rank[""] = -1
                self.end_groups.insert(0, g)
                return ChannelTensor([g])
            return ChannelTensor([self.table.new_group(shape[1], fixed=True)])
        if node.op == "get_attr":
            return None  # constants: an op mixing them with channel tensors is caught below
        read = [a for i, a in enumerate(node.args) if i not in metadata_args(node)]  # not x in x.size()
        inputs = flat_values(read, values) + flat_values(tuple(node.kwargs.values()), values)
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target], inputs)
        if not inputs:
            return None
        if node.op == "call_function":
            handler = rule_for("function", node.target)
            if handler is not None:
                return self.call(handler, node, node.target, inputs)
            if shape_of(node) is None and not isinstance(node.meta.get("tensor_meta"), (list, tuple)):
                return None  # e.g. x.size(1) * 2: a number, not a channel tensor
            raise unsupported_function(node)
        if node.op == "call_method":
            handler = rule_for("method", node.target)
            if handler is None:
                raise TraceError(f"node '{node.name}' ({where(node)}): method .{node.target}() on a channel tensor "
                                 f"is not supported; {HOW_TO_ADD}")
            return self.call(handler, node, node.target, inputs)
        raise TraceError(f"node '{node.name}' ({where(node)}): unsupported op {node.op}")

    def visit_module(self, node: fx.Node, module: nn.Module, inputs: list[ChannelTensor]) -> ChannelTensor | None:
        name, kind = node.target, type(module).__name__
        has_params = any(True for _ in module.parameters(recurse=False))
        if not inputs:
            if has_params:
                raise TraceError(f"module '{name}' ({kind}) takes no channel input")
            return None
        if len(inputs) != 1:
            raise TraceError(f"module '{name}' ({kind}) takes {len(inputs)} channel tensors; "
                             "only single-input modules are supported")
        if has_params:
            # A layer applied twice would need its cost counted twice but sliced once.
            if name in self.seen_modules:
                raise TraceError(f"module '{name}' ({kind}) is called more than once; "
                                 "layers with parameters must be used once per forward")
            self.seen_modules[name] = True
        handler = module_rule(type(module))
        if handler is None:
            raise TraceError(f"module '{name}' ({kind}) is not supported by the channel tracer; {HOW_TO_ADD}")
        return self.call(handler, node, module, inputs)

    def call(self, handler: Handler, node: fx.Node, target, inputs: list[ChannelTensor]):
        """Run a rule; one that does not follow reordered channels gets them with their groups fixed."""
        if not keeps_order(handler):
            inputs = [plain(self.table, node, t) for t in inputs]
        return handler(self.table, node, target, inputs)
