"""Trace a model into channel groups: the sets of layers whose channel counts must be equal.

A :class:`ChannelGroup` is one channel dimension that can be pruned as a unit: the output of a
conv or linear layer together with everything that must match it (its BatchNorm, activations,
pooling, every branch that meets it at a residual add, the input and output of a depthwise
conv). Concatenation (DenseNet) is kept as a *layout*: the ordered list of groups that make up
a tensor's channels, so that a consumer slices its input with the right offsets.

Ops that cut channels at run time keep working on the pruned model because the forward code
recomputes their sizes: ``chunk`` cuts a group into parts that :class:`Follow` their parent
(the parent is pruned alike in every part). A cut at constant positions (``x[:, a:b]``,
``split`` by sizes) takes a ``range`` of each group it reaches, and a channel shuffle (a view
that splits the channels, a transpose, a view back) leaves every group its own width while
the tensor records the position of each channel; surgery rewrites those nodes of the forward
(:class:`Rewrite`) into gathers and splits of the kept channels, since the code's constants
and arithmetic no longer hold on the pruned model.

Tracing uses :mod:`torch.fx`; one shape propagation gives every layer's spatial size, which
is all the cost model needs. Each fx node is handled by a *rule* looked up by module type,
function or tensor-method name (the built-in table is near the end of this file);
:func:`register_rule` adds rules for a model's own modules and functions.

A submodule that fx cannot trace (control flow on a tensor's value), or in which the tracer
meets an op it has no rule for, becomes a :class:`FrozenLeaf`: it runs as one opaque step,
its input and output channels are fixed, its MACs are measured once and counted as a
constant, and the rest of the model is searched as usual. The smallest such submodule is
frozen, never the whole model. What cannot be handled that way (an unsupported op in the
model's own ``forward``, or a model with nothing left to search) raises
:class:`~autoprune.errors.TraceError` naming the node and module, rather than producing a
silently wrong model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from autoprune.errors import TraceError, one_line

__all__ = [
    "ChannelGraph", "ChannelGroup", "Follow", "FrozenLeaf", "Layer", "Rewrite", "follow_indices", "follow_widths",
    "fx_graph_module", "in_positions", "passthrough", "range_kept", "register_rule", "spatial_reduce", "trace", "unregister_rule",
]

# How many submodules one trace may freeze; each costs a fresh fx trace and forward pass.
MAX_FROZEN_LEAVES = 64


# -- the result ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Follow:
    """How a group's channels derive from another group's, its ``parent``.

    ``part``: run ``index`` of ``count`` equal runs of the parent (a ``chunk``); the parent is
    cut into blocks so that every run keeps as many channels. ``tile``: ``count`` copies of
    the parent one after the other (a single group added to a concatenation of copies of one
    group, as in GhostNet). ``range``: the parent's channels ``index`` to ``count`` (exclusive),
    cut out of a reordered tensor (see :class:`Rewrite`); the parent keeps ``w * x // n`` of its
    first ``x`` channels at width ``w`` of ``n`` (:func:`range_kept`), so every range keeps a
    number of channels that its parent's width decides.
    """

    kind: str
    parent: int
    index: int
    count: int


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable channel dimension.

    ``members`` names the layers that produce or normalise these channels, in graph order;
    the group's ``name`` is its first producer's. ``fixed`` groups (the network input, the
    classifier output) keep their original ``width``. A group that feeds or leaves a grouped
    conv is cut into ``blocks`` equal runs of channels, one per conv group; it is pruned by
    the same number of channels in every block, so the conv keeps its ``groups``. A group
    that ``follows`` another is not searchable either: its width and kept channels are its
    parent's, as :func:`follow_widths` and :func:`follow_indices` derive them. A group that
    ranges follow is ``cuts`` into segments at their ends; each segment keeps the number of
    channels :func:`range_kept` gives it.
    """

    id: int
    name: str
    width: int
    fixed: bool
    members: tuple[str, ...]
    producers: tuple[str, ...]
    blocks: int = 1
    follows: Follow | None = None
    cuts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Layer:
    """A layer whose parameters depend on channel widths.

    ``kind`` is ``conv``, ``linear``, ``norm`` or ``scale`` (a parameter with one value per
    channel, named by its path, such as ConvNeXt's layer scale). ``in_layout`` lists the groups that make up
    the input channels in order; ``out_group`` is the group of the output channels (``None``
    for norms and depthwise convs, whose output layout equals their input layout). For a
    linear layer after a flatten, every input channel spans ``spatial`` features.
    ``out_positions`` is the number of output positions (H×W for a 2-d conv), ``kernel`` the
    kernel volume, ``groups`` the groups of a grouped (not depthwise) conv, which pruning keeps.
    ``in_perm``, after a channel shuffle, gives the input position of each channel of
    ``in_layout`` (None: in layout order).
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
    in_perm: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Rewrite:
    """An fx node whose channel arithmetic surgery replaces, because it no longer holds on the
    pruned model: a channel shuffle (``kind`` ``gather``: output position ``j`` is input
    position ``arg[j]``) or cuts at constant positions (the half-open ``arg`` bounds;
    ``split`` for chunk and split, ``narrow`` for a slice). ``source`` names the node of the
    input tensor, whose channels are ``layout`` in the positions ``perm`` (None: in layout
    order). The pruned model keeps every tensor's kept channels in their original order;
    :func:`autoprune.surgery.slice_channels` turns each rewrite into an index gather, or a
    split or narrow at the kept counts."""

    node: str
    kind: str
    source: str
    layout: tuple[int, ...]
    perm: tuple[int, ...] | None
    arg: tuple


@dataclass(frozen=True)
class FrozenLeaf:
    """A submodule the tracer does not look into: ``path`` in the model, its class name
    ``kind``, and ``reason`` (why it could not be traced). Its input and output channels are
    fixed and surgery leaves it as it is; ``macs`` are its Conv/Linear MACs per sample,
    measured once, since no width changes them."""

    path: str
    kind: str
    reason: str
    macs: int = 0


@dataclass(frozen=True)
class ChannelGraph:
    """The traced structure of a model: groups, the layers that depend on them, the parameter
    count and MACs that no width affects (``other_macs``: those of the ``frozen`` leaves)."""

    groups: tuple[ChannelGroup, ...]
    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    other_params: int
    other_macs: int = 0
    frozen: tuple[FrozenLeaf, ...] = ()
    rewrites: tuple[Rewrite, ...] = ()


def trace(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> ChannelGraph:
    """Trace ``model`` on an input of shape ``input_shape`` (no batch dimension).

    A submodule that cannot be traced is frozen (see :class:`FrozenLeaf`) and the trace starts
    again, up to :data:`MAX_FROZEN_LEAVES` times. TraceError if the model's own ``forward``
    cannot be traced, or if nothing is left to search.
    """
    leaves: dict[str, str] = {}
    while True:
        try:
            graph = _Tracer(model, input_shape, leaves).run()
        except _NeedsLeaf as need:
            if len(leaves) >= MAX_FROZEN_LEAVES:
                raise TraceError(f"more than {MAX_FROZEN_LEAVES} submodules of {type(model).__name__} cannot be "
                                 f"traced; the last: '{need.path}': {need.reason}") from None
            leaves[need.path] = need.reason
            continue
        if graph.frozen and all(g.fixed for g in graph.groups):
            why = "; ".join(f"'{f.path}' ({f.kind}): {f.reason}" for f in graph.frozen)
            raise TraceError(f"nothing in {type(model).__name__} can be searched: every channel group is fixed "
                             f"by the submodules that cannot be traced: {why}")
        return graph


def fx_graph_module(model: nn.Module, graph: ChannelGraph | None = None) -> fx.GraphModule:
    """``model`` traced by torch.fx as :func:`trace` sees it, without shapes: every module with
    a rule, and every frozen leaf of ``graph``, is one ``call_module`` node named by its path."""
    tracer = _FxTracer(f.path for f in graph.frozen) if graph is not None else _FxTracer()
    traced = tracer.trace(model)  # sets tracer.root
    return fx.GraphModule(tracer.root, traced, type(model).__name__)


class _NeedsLeaf(Exception):
    """Raised inside a trace: the submodule at ``path`` must become a frozen leaf."""

    def __init__(self, path: str, reason: str):
        super().__init__(path)
        self.path, self.reason = path, reason


def follow_widths(graph: ChannelGraph, full: list) -> list:
    """Set, in ``full`` (a width per group id), the width of every group that follows
    another from its parent's; returns ``full``. Widths may be differentiable scalars."""
    for g in _follow_order(graph):
        f, w = g.follows, full[g.follows.parent]
        if f.kind == "tile":
            full[g.id] = w * f.count
        elif f.kind == "range":
            n = graph.groups[f.parent].width
            full[g.id] = w * (f.count - f.index) / n if isinstance(w, torch.Tensor) else (
                range_kept(int(w), n, f.count) - range_kept(int(w), n, f.index))
        else:
            full[g.id] = w / f.count if isinstance(w, torch.Tensor) else int(w) // f.count
    return full


def in_positions(values: torch.Tensor, perm: tuple[int, ...]) -> torch.Tensor:
    """Per-channel ``values`` in layout order put in the positions ``perm`` gives (a layer's
    ``in_perm``): the order of the tensor's channels."""
    return torch.empty_like(values).index_put_((torch.as_tensor(perm, device=values.device),), values)


def range_kept(width: int, full: int, x: int) -> int:
    """How many of a group's first ``x`` channels (of ``full``) it keeps at ``width``, when a
    range of it follows the group: ``width * x // full``, so a segment's count depends on
    its ends alone and segments add up."""
    return width * x // full


def follow_indices(graph: ChannelGraph, kept: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Set, in ``kept`` (sorted kept channel indices per group id), those of every group that
    follows another from its parent's; returns ``kept``."""
    for g in _follow_order(graph):
        f, k = g.follows, kept[g.follows.parent]
        if f.kind == "tile":
            kept[g.id] = (torch.arange(f.count)[:, None] * graph.groups[f.parent].width + k).flatten()
            continue
        if f.kind == "range":
            lo, hi = f.index, f.count
        else:
            run = graph.groups[f.parent].width // f.count
            lo, hi = f.index * run, (f.index + 1) * run
        kept[g.id] = k[(k >= lo) & (k < hi)] - lo
    return kept


def _parent_blocks(f: Follow, blocks: int) -> int:
    """The blocks a parent needs so that its follower keeps as many channels in each of its ``blocks``."""
    if f.kind == "part":
        return f.count * blocks
    if f.kind == "range":
        return 1  # a range and its parent must both be whole (settle_follows checks it)
    if f.kind == "tile" and f.count % blocks == 0:
        return 1  # every block of the follower is whole copies of the parent
    return blocks


def _follow_order(graph: ChannelGraph) -> list[ChannelGroup]:
    """The groups that follow another, each after its parent (the tracer leaves no cycles)."""
    order: list[ChannelGroup] = []
    done: set[int] = set()

    def visit(g: ChannelGroup) -> None:
        if g.follows is None or g.id in done:
            return
        visit(graph.groups[g.follows.parent])
        done.add(g.id)
        order.append(g)

    for g in graph.groups:
        visit(g)
    return order


# -- rules ---------------------------------------------------------------------------------

# A handler gets the tracer, the fx node, the rule's target (the module instance for a module
# rule, the function or the method name otherwise) and the channel tensors among the node's
# arguments; it returns what the node's output carries, or None when it carries no channels.
_Handler = Callable[["_Tracer", fx.Node, Any, "list[_Tensor]"], "_Tensor | None"]

_HOW_TO_ADD = "add a rule with autoprune.graph.register_rule"
# Rules added by register_rule, by kind; they take precedence over the built-in ones.
_USER_RULES: dict[str, dict[Any, _Handler]] = {"module": {}, "function": {}, "method": {}}


def register_rule(target, handler: _Handler | None = None):
    """Tell the tracer how the channels flow through ``target``.

    ``target`` is an ``nn.Module`` subclass (the rule also covers its subclasses, and fx no
    longer traces into it), a function such as ``torch.erf``, or a tensor-method name such
    as ``"erf"``. ``handler(tracer, node, target, inputs)`` gets the channel tensors among the
    node's arguments (exactly one for a module) and returns what the output carries: one of
    ``inputs`` for an op that keeps the channels, None for an output without channels. The
    ready-made :func:`passthrough` and :func:`spatial_reduce` cover ops that keep the channels
    or reduce spatial dimensions only, on modules without per-channel parameters. A rule
    replaces any earlier one for the same target, built-in rules included, until
    :func:`unregister_rule`. Without ``handler``, returns a decorator that registers the
    function it decorates:

    >>> import torch, torch.nn as nn
    >>> from autoprune.graph import passthrough, register_rule, trace, unregister_rule
    >>> class ErfGELU(nn.Module):  # acts on every channel on its own
    ...     def forward(self, x):
    ...         return 0.5 * x * (1 + torch.erf(x * 0.7071))
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), ErfGELU(), nn.Conv2d(8, 4, 3))
    >>> _ = register_rule(ErfGELU, passthrough)  # without it: TraceError on torch.erf
    >>> [g.name for g in trace(model, (3, 8, 8)).groups if not g.fixed]
    ['0']
    >>> unregister_rule(ErfGELU)
    >>> @register_rule("erf")  # x.erf(): the decorator form
    ... def erf(tracer, node, target, inputs):
    ...     return passthrough(tracer, node, target, inputs)
    >>> unregister_rule("erf")
    """
    kind = _rule_kind(target)
    if handler is None:
        def decorator(fn: _Handler) -> _Handler:
            return register_rule(target, fn)
        return decorator
    if not callable(handler):
        raise TypeError(f"register_rule: handler for {_target_name(target)} must be callable, "
                        f"got {type(handler).__name__}")
    _USER_RULES[kind][target] = handler
    return handler


def unregister_rule(target) -> None:
    """Remove the rule :func:`register_rule` added for ``target``; a built-in rule it replaced
    applies again. ValueError if there is none."""
    if _USER_RULES[_rule_kind(target)].pop(target, None) is None:
        raise ValueError(f"unregister_rule: no rule was registered for {_target_name(target)}")


def _rule_kind(target) -> str:
    """Which table ``target`` belongs in; TypeError for anything a rule cannot be about."""
    if isinstance(target, str):
        if not target.isidentifier():
            raise TypeError(f"register_rule: {target!r} is not a tensor-method name")
        return "method"
    if isinstance(target, type):
        if not issubclass(target, nn.Module) or target is nn.Module:
            raise TypeError(f"register_rule: {target.__name__} is not a subclass of nn.Module; a rule's target "
                            "is a module class, a function or a tensor-method name")
        return "module"
    if isinstance(target, nn.Module):
        raise TypeError(f"register_rule: got an instance of {type(target).__name__}; "
                        "register the class, not a module")
    if callable(target):
        return "function"
    raise TypeError(f"register_rule: {target!r} is not a module class, a function or a tensor-method name")


def _target_name(target) -> str:
    return target if isinstance(target, str) else _fn_name(target)


def _rule(kind: str, key) -> _Handler | None:
    if key in _USER_RULES[kind]:
        return _USER_RULES[kind][key]
    return _BUILTIN_RULES[kind].get(key)


def _module_rule(cls: type) -> _Handler | None:
    # cls.__mro__ starts with cls itself: an exact match wins, then the nearest base class.
    for base in cls.__mro__:
        handler = _rule("module", base) or _BUILTIN_BY_CLASS_NAME.get(base.__name__)
        if handler is not None:
            return handler
    return None


class _FxTracer(fx.Tracer):
    """fx's tracer, except that every module with a rule is a leaf: its rule, not its code,
    says how channels pass through it. That covers subclasses of built-in layers outside
    torch.nn (timm's BatchNormAct2d, Conv2dSame), whose forward fx could not follow.

    The modules at the paths in ``leaves`` are leaves too; ``failure`` records the innermost
    module whose forward raised (exception, path), the one to freeze when tracing fails."""

    def __init__(self, leaves=()):
        super().__init__()
        self.leaves = frozenset(leaves)
        self.failure: tuple[BaseException, str] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (module_qualified_name in self.leaves or _module_rule(type(m)) is not None
                or super().is_leaf_module(m, module_qualified_name))

    def call_module(self, m: nn.Module, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            # The innermost module sees the exception first; its callers see the same one.
            if self.failure is None or self.failure[0] is not exc:
                with contextlib.suppress(Exception):
                    self.failure = (exc, self.path_of_module(m))
            raise

    def failed_module(self, exc: BaseException) -> str | None:
        """The path of the innermost submodule in which ``exc`` (or an exception it was
        raised from) arose; None when it arose in the root's own forward."""
        seen = set()
        while exc is not None and id(exc) not in seen and self.failure is not None:
            if exc is self.failure[0]:
                return self.failure[1] or None
            seen.add(id(exc))
            exc = exc.__cause__ or exc.__context__
        return None


# -- ready-made handlers -------------------------------------------------------------------

def passthrough(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Tensor:
    """Handler for an op that keeps the channels: each output channel comes from the same
    input channel (activations, dropout, pooling, element-wise ops of several tensors).
    TraceError if the output's channel dimension differs or a module holds per-channel state.
    """
    _check_no_channel_state(node, target)
    if len(inputs) != 1:
        return tracer.merge_layouts(inputs, node)
    src, dst = _shape(_first_tensor_arg(node)), _shape(node)
    if src is not None and dst is not None and (len(src) < 2 or len(dst) < 2 or src[1] != dst[1]):
        raise TraceError(f"node '{node.name}' ({_where(node)}) changes the channel dimension {src} -> {dst}")
    return inputs[0]


def spatial_reduce(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Tensor:
    """Handler for an op that reduces over spatial dimensions only, keeping batch and
    channels (a global pooling, ``x.mean((2, 3))``). TraceError if it reduces over more."""
    _check_no_channel_state(node, target)
    x = inputs[0]
    src, dst = _shape(_first_tensor_arg(node)), _shape(node)
    if (src is None or dst is None or len(dst) < 2 or src[0] != dst[0] or src[1] != dst[1] or x.spatial != 1
            or x.dim != 1):
        raise TraceError(f"node '{node.name}' ({_where(node)}) reduces over channels {src} -> {dst}; "
                         "only spatial reductions are supported")
    return x


def _check_no_channel_state(node: fx.Node, target) -> None:
    # Surgery never changes a module it has no layer kind for, so its state must not depend
    # on the channel count (PReLU with one parameter is fine, one per channel is not).
    if isinstance(target, nn.Module):
        state = [*target.parameters(), *target.buffers()]
        if any(t.numel() > 1 for t in state):
            raise TraceError(f"module '{node.target}' ({type(target).__name__}) holds parameters or buffers "
                             "that surgery would not resize; a ready-made rule cannot keep it consistent")


# -- the tracer ----------------------------------------------------------------------------

@dataclass
class _Tensor:
    """What the tracer knows of a node's value: its channel layout (group ids in order),
    after a flatten how many features each channel spans, and which dimension holds the
    channels (1, or the last one after a channels-last permute). While a view splits the
    channels into ``split`` runs over dimensions 1 and 2 (a channel shuffle), ``dim`` is -1
    and ``swapped`` says whether those two dimensions have been transposed; ``origin`` names
    the node whose channels the view splits. After a shuffle, ``perm`` gives the position of
    each channel of the layout (None: in layout order); only the handlers in
    :data:`_KEEP_PERM` see such a tensor, any other gets it with its groups fixed."""

    layout: list[int]
    spatial: int = 1
    dim: int = 1
    split: int = 0
    swapped: bool = False
    perm: tuple[int, ...] | None = None
    origin: str | None = None


class _Parts(list):
    """The channel tensors of a node that returns several (``chunk``, ``split``), in order."""


class _Tracer:
    """One pass over the fx graph: a union-find over channel groups, grown by the rules."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], leaves: dict[str, str] | None = None):
        self.model = model
        self.input_shape = tuple(int(s) for s in input_shape)
        self.leaves = dict(leaves or {})  # path -> why it is frozen
        self.leaf_macs: dict[str, int] = {}  # of the leaves the graph calls, measured by shaped_graph_module
        self.leaf_rank: dict[str, float] = {}  # where each leaf sits among the layers, for ordering names
        self.parts: dict[fx.Node, Any] = {}  # tuples, namedtuples and dicts of channel tensors
        self.parent: list[int] = []
        self.width: list[int] = []
        self.fixed: list[bool] = []
        self.first_seen: list[int] = []  # graph position, for naming and ordering
        self.blocks: list[int] = []
        self.members: list[list[str]] = []
        self.producers: list[list[str]] = []
        self.follows: list[Follow | None] = []  # parent ids as created, resolved with find
        self.hint: list[str | None] = []  # the name of a group with no layer of its own
        self.layers: list[Layer] = []
        self.seen_modules: dict[str, bool] = {}
        self.rewrites: list[Rewrite] = []
        self.pos = 0

    # -- union-find over group ids ---------------------------------------------------------
    def new_group(self, width: int, fixed: bool = False, follows: Follow | None = None,
                  hint: str | None = None) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.width.append(int(width))
        self.fixed.append(fixed)
        self.first_seen.append(self.pos)
        self.blocks.append(1)
        self.members.append([])
        self.producers.append([])
        self.follows.append(follows)
        self.hint.append(hint)
        return gid

    def produce(self, node: fx.Node, width: int, fixed: bool = False) -> int:
        """A new group whose first producer and member is the module at ``node``."""
        out = self.new_group(width, fixed)
        self.producers[out].append(node.target)
        self.members[out].append(node.target)
        return out

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
        self.blocks[keep] = math.lcm(self.blocks[keep], self.blocks[drop])
        if self.follows[drop] is not None:
            self.add_follow(keep, self.follows[drop])

    def add_follow(self, g: int, f: Follow) -> None:
        """Root ``g`` follows ``f``. Two different rules for the same channels cannot both
        hold: then every group involved keeps its full width."""
        a = self.follows[g]
        if a is None:
            self.follows[g] = f
        elif (a.kind, a.index, a.count) != (f.kind, f.index, f.count) or self.find(a.parent) != self.find(f.parent):
            for x in (g, a.parent, f.parent):
                self.fixed[self.find(x)] = True

    def settle_follows(self) -> None:
        """Once every union is known: cut each parent into the blocks its followers need,
        and keep a follower and its parent at full width together when either must be (a
        fixed group, blocks that do not tile the parent, a cycle). A follower at full width
        is an ordinary fixed group."""
        produced = {self.find(g) for g in range(len(self.parent)) if self.producers[g]}
        roots = [g for g in range(len(self.parent)) if self.find(g) == g]
        for r in roots:
            if self.follows[r] is None and r not in produced:
                self.fixed[r] = True  # as final_groups decides, but early enough to reach followers
        kids = [r for r in roots if self.follows[r] is not None]
        for g in kids:
            self.follows[g] = self.range_root(g)
        changed = True
        while changed:
            changed = False
            for g in kids:
                f = self.follows[g]
                p = self.find(f.parent)
                blocks = math.lcm(self.blocks[p], _parent_blocks(f, self.blocks[g]))
                changed |= blocks != self.blocks[p]
                self.blocks[p] = blocks
                stuck = self.fixed[g] or self.fixed[p] or self.width[p] % blocks != 0 or self.in_cycle(g)
                # A range's count is its root parent's choice: no blocks on either side.
                stuck |= f.kind == "range" and (self.blocks[g] > 1 or self.blocks[p] > 1 or self.follows[p] is not None)
                if stuck and not (self.fixed[g] and self.fixed[p]):
                    self.fixed[g] = self.fixed[p] = changed = True
        for g in kids:
            if self.fixed[g]:
                self.follows[g] = None

    def range_root(self, g: int) -> Follow:
        """``g``'s follow rule, a range of a range re-expressed as a range of the group at the
        end of the chain (the counts agree: both are the root's, at the same positions)."""
        f = self.follows[g]
        for _ in range(len(self.parent)):
            p = self.follows[self.find(f.parent)] if f.kind == "range" else None
            if p is None or p.kind != "range" or self.find(p.parent) == self.find(g):
                return f
            f = Follow("range", p.parent, p.index + f.index, p.index + f.count)
        return f

    def in_cycle(self, g: int) -> bool:
        p = g
        for _ in range(len(self.parent)):
            f = self.follows[p]
            if f is None:
                return False
            p = self.find(f.parent)
            if p == g:
                return True
        return True

    def with_parents(self, roots: set[int]) -> set[int]:
        """``roots`` and every group they follow, directly or not."""
        out, todo = set(roots), list(roots)
        while todo:
            f = self.follows[todo.pop()]
            if f is not None and self.find(f.parent) not in out:
                out.add(self.find(f.parent))
                todo.append(self.find(f.parent))
        return out

    def split_into_blocks(self, g: int, blocks: int) -> None:
        """Group ``g`` must keep the same number of channels in each of ``blocks`` equal runs."""
        r = self.find(g)
        self.blocks[r] = math.lcm(self.blocks[r], blocks)

    def merge_layouts(self, tensors: list[_Tensor], node: fx.Node) -> _Tensor:
        """Element-wise op of several channel tensors: their channels are the same channels."""
        if len({t.perm for t in tensors}) > 1:
            tensors = [_plain(self, node, t) for t in tensors]
        first = tensors[0]
        for t in tensors[1:]:
            a = [self.width[self.find(g)] for g in first.layout]
            b = [self.width[self.find(g)] for g in t.layout]
            if a == b:
                for x, y in zip(first.layout, t.layout):
                    self.union(x, y, node)
            elif len(t.layout) == 1 and sum(b) == 1 or len(first.layout) == 1 and sum(a) == 1:
                # Broadcast of a single channel: it must stay (a range of one channel would not).
                self.fixed[self.find(t.layout[0] if sum(b) == 1 else first.layout[0])] = True
                continue
            elif sum(a) == sum(b):
                copies = any(len(x) > 1 and len({self.find(g) for g in x}) == 1 for x in (first.layout, t.layout))
                if copies or not self.align(first.layout, t.layout, node):
                    self.tile(first.layout, t.layout) or self.tile(t.layout, first.layout)
            else:
                raise TraceError(f"node '{node.name}' ({_where(node)}) combines {sum(a)} and {sum(b)} channels")
            if t.spatial != first.spatial or t.dim != first.dim or t.split != first.split:
                raise TraceError(f"node '{node.name}' ({_where(node)}) combines tensors with channels in "
                                 "different places (flattened, or permuted)")
        self.scale_parameters(node, first)
        return _Tensor(list(first.layout), first.spatial, first.dim, perm=first.perm)

    def align(self, a: list[int], b: list[int], node: fx.Node) -> bool:
        """The same channels concatenated differently (a residual over MixNet's split conv):
        each side cut at the other's boundaries into ranges, coupled piece by piece. False,
        coupling nothing, where a group to cut follows another some other way."""
        ea, eb = _entries(self, a), _entries(self, b)
        if any(self.follows[self.find(g)] is not None and self.follows[self.find(g)].kind != "range"
               for g, _, _ in ea + eb):
            return False
        cuts = sorted({s for _, s, _ in ea + eb} | {e for _, _, e in ea + eb})
        pieces = []
        for entries in (ea, eb):
            pieces.append([_range_of(self, node, g, lo - s, hi - s) for g, s, e in entries
                           for lo, hi in zip(cuts, cuts[1:]) if s <= lo and hi <= e])
        for x, y in zip(*pieces):
            self.union(x, y, node)
        return True

    def tile(self, one: list[int], many: list[int]) -> bool:
        """Channels concatenated differently meet. A single group against copies of one
        group (GhostNet adds a conv's output to cat([y, depthwise(y)])) follows those copies;
        anything else keeps every group involved at full width. False only when ``one`` is
        not a single group, to try the other way round."""
        roots = {self.find(g) for g in many}
        if len(one) != 1:
            if len(many) == 1:
                return False
        elif len(roots) == 1 and self.find(one[0]) not in roots:
            self.add_follow(self.find(one[0]), Follow("tile", roots.pop(), 0, len(many)))
            return True
        for x in one + many:
            self.fixed[self.find(x)] = True
        return True

    def scale_parameters(self, node: fx.Node, x: _Tensor) -> None:
        """A parameter with one value per channel that scales or shifts ``x`` (ConvNeXt's
        layer scale) is a layer of its own: surgery slices it with the channels."""
        width = sum(self.width[self.find(g)] for g in x.layout)
        for arg in node.args:
            param = _parameter_behind(arg)
            if param is None:
                continue
            shape = _shape(node)
            target, size = param
            if size != width * x.spatial or width == 1 or x.spatial != 1 or shape is None:
                raise TraceError(f"node '{node.name}' ({_where(node)}) combines channels with parameter "
                                 f"'{target}' of {size} values; only one value per channel is supported")
            self.layers.append(Layer(target, "scale", tuple(x.layout), in_perm=x.perm))

    def check_channels(self, node: fx.Node, x: _Tensor, expected: int) -> None:
        got = sum(self.width[self.find(g)] for g in x.layout) * x.spatial
        if got != expected:
            raise TraceError(f"module '{node.target}' expects {expected} channels but the tracer sees {got}")

    # -- the pass --------------------------------------------------------------------------
    def run(self) -> ChannelGraph:
        gm = self.shaped_graph_module()
        self.modules = dict(gm.named_modules())
        values: dict[fx.Node, _Tensor | None] = {}
        for node in gm.graph.nodes:
            self.pos += 1
            if node.op == "output":
                for t in self.channel_tensors(node.args, values):
                    for g in t.layout:
                        self.fixed[self.find(g)] = True
                continue
            try:
                values[node] = self.step(node, values)
            except TraceError as exc:
                raise self.leaf_for(node, exc) from None
        if self.rewrites and not self.same_in_both_modes(gm):
            # Surgery re-traces the pruned model, which would keep one mode's forward only.
            for r in self.rewrites:
                for g in r.layout:
                    self.fixed[self.find(g)] = True
        return self.finish()

    def same_in_both_modes(self, gm: fx.GraphModule) -> bool:
        """Whether fx traces the model's forward alike in train and in eval mode (``F.dropout(x,
        training=self.training)`` or ``if self.training:`` make the two differ)."""
        was = self.model.training
        try:
            self.model.train(not was)
            other = _FxTracer(self.leaves).trace(self.model)
        except Exception:  # noqa: BLE001 — fx raises many kinds; untraceable in the other mode is "not alike"
            return False
        finally:
            self.model.train(was)
        return other.python_code("self").src == gm.graph.python_code("self").src

    def leaf_for(self, node: fx.Node, exc: TraceError) -> Exception:
        """What to raise when the rules fail at ``node``: a request to freeze the innermost
        submodule around it that is not frozen yet, or ``exc`` itself at top level."""
        stack = node.meta.get("nn_module_stack") or {}
        for path, _ in reversed(list(stack.values())):
            if path and path not in self.leaves:
                return _NeedsLeaf(path, one_line(exc))
        return exc

    def step(self, node: fx.Node, values: dict) -> _Tensor | None:
        """Frozen leaves and containers of channel tensors, then the rules (:meth:`visit`)."""
        if node.op == "call_module" and node.target in self.leaves:
            return self.visit_frozen(node, values)
        if node.op == "call_function":
            if _is_namedtuple_class(node.target):
                # A model's namedtuple output (GoogLeNet's and Inception's in training mode).
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
                if isinstance(part, _Tensor) or part is None:
                    return part
                self.parts[node] = part
                return None
        return self.visit(node, values)

    def resolve(self, arg, values: dict):
        """``arg`` with every node replaced by what it carries (a _Tensor, a container, None)."""
        if isinstance(arg, fx.Node):
            return self.parts[arg] if arg in self.parts else values.get(arg)
        if isinstance(arg, (list, tuple)):
            return _same_kind(arg, [self.resolve(a, values) for a in arg])
        if isinstance(arg, dict):
            return {k: self.resolve(v, values) for k, v in arg.items()}
        return None

    def channel_tensors(self, args, values: dict) -> list[_Tensor]:
        """Every channel tensor in ``args``, inside containers too."""
        out: list[_Tensor] = []
        stack = [self.resolve(args, values)]
        while stack:
            x = stack.pop()
            if isinstance(x, _Tensor):
                out.append(x)
            elif isinstance(x, dict):
                stack += x.values()
            elif isinstance(x, (list, tuple)):
                stack += x
        return out

    def visit_frozen(self, node: fx.Node, values: dict) -> _Tensor | None:
        """A frozen leaf: its input channels are fixed; each tensor it returns is a new fixed group."""
        for t in self.channel_tensors((node.args, node.kwargs), values):
            for g in t.layout:
                self.fixed[self.find(g)] = True
        self.leaf_rank.setdefault(node.target, len(self.layers) - 0.5)
        out = self.leaf_output(node, node.meta.get("tensor_meta"))
        if isinstance(out, _Tensor) or out is None:
            return out
        self.parts[node] = out
        if isinstance(out, (list, tuple)) and all(isinstance(t, _Tensor) for t in out):
            return _Parts(out)  # used whole (torch.cat(leaf(x), 1)), its tensors are read in order
        return None

    def leaf_output(self, node: fx.Node, meta):
        if isinstance(meta, TensorMetadata):
            shape = tuple(meta.shape)
            return _Tensor([self.produce(node, shape[1], fixed=True)]) if len(shape) >= 2 else None
        if isinstance(meta, dict):
            return {k: self.leaf_output(node, v) for k, v in meta.items()}
        if isinstance(meta, (list, tuple)):
            return _same_kind(meta, [self.leaf_output(node, v) for v in meta])
        return None

    def shaped_graph_module(self) -> fx.GraphModule:
        """The fx graph of the model, every node's output shape recorded by one forward pass,
        which also measures the MACs of every frozen leaf (:attr:`leaf_macs`)."""
        name = type(self.model).__name__
        tracer = _FxTracer(self.leaves)
        try:
            graph = tracer.trace(self.model)
            gm = fx.GraphModule(tracer.root, graph, name)  # what fx.symbolic_trace does
        except Exception as exc:  # fx raises many kinds; all mean the same to the user
            path = tracer.failed_module(exc)
            if path is not None and path not in self.leaves:
                raise _NeedsLeaf(path, f"torch.fx cannot trace it: {one_line(exc)}") from None
            raise TraceError(f"cannot trace {name} with torch.fx: {one_line(exc)}") from None
        called = [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target in self.leaves]
        self.leaf_macs = dict.fromkeys(called, 0)
        hooks = [m.register_forward_hook(self.count_macs(path)) for path in self.leaf_macs
                 for m in gm.get_submodule(path).modules() if isinstance(m, _MAC_LAYERS)]
        was_training = gm.training
        gm.eval()
        try:
            # ShapeProp prints the failing node's traceback itself before re-raising: keep it
            # off the user's terminal, whose error is the one line below.
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                param = next(self.model.parameters(), None)
                device = param.device if param is not None else "cpu"
                ShapeProp(gm).propagate(torch.zeros(1, *self.input_shape, device=device))
        except Exception as exc:
            cause = exc.__cause__ or exc  # the layer's own error, not ShapeProp's node dump
            raise TraceError(f"a forward pass of {name} on input shape {self.input_shape} failed: "
                             f"{one_line(cause)[:300]}") from None
        finally:
            gm.train(was_training)
            for h in hooks:
                h.remove()
        return gm

    def count_macs(self, path: str):
        """A forward hook adding a Conv/Linear layer's MACs (per sample) to the leaf at ``path``."""
        def hook(m, args, out):
            # Output elements x multiply-accumulates per element (in_channels / groups x kernel
            # for a conv, in_features for a linear layer), as thop counts these layers.
            per = m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * math.prod(m.kernel_size)
            self.leaf_macs[path] += out[0].numel() * per
        return hook

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
        handler = _module_rule(type(module))
        if handler is None:
            raise TraceError(f"module '{name}' ({kind}) is not supported by the channel tracer; {_HOW_TO_ADD}")
        return self.call(handler, node, module, inputs)

    def call(self, handler: _Handler, node: fx.Node, target, inputs: list[_Tensor]):
        """Run a rule; one that does not follow reordered channels gets them with their groups fixed."""
        if handler not in _KEEP_PERM:
            inputs = [_plain(self, node, t) for t in inputs]
        return handler(self, node, target, inputs)

    def visit_function(self, node: fx.Node, inputs: list[_Tensor]) -> _Tensor | None:
        handler = _rule("function", node.target)
        if handler is not None:
            return self.call(handler, node, node.target, inputs)
        if _shape(node) is None and not isinstance(node.meta.get("tensor_meta"), (list, tuple)):
            return None  # e.g. x.size(1) * 2: a number, not a channel tensor
        raise _unsupported_function(node)

    def visit_method(self, node: fx.Node, inputs: list[_Tensor]) -> _Tensor | None:
        handler = _rule("method", node.target)
        if handler is None:
            raise TraceError(f"node '{node.name}' ({_where(node)}): method .{node.target}() on a channel tensor "
                             f"is not supported; {_HOW_TO_ADD}")
        return self.call(handler, node, node.target, inputs)

    # -- canonical result ------------------------------------------------------------------
    def finish(self) -> ChannelGraph:
        self.settle_follows()
        roots = sorted({self.find(g) for g in range(len(self.parent))}, key=lambda g: self.first_seen[g])
        # Keep only groups some layer depends on (the input group always counts), and their parents.
        used = {self.find(g) for layer in self.layers for g in layer.in_layout}
        used |= {self.find(g) for r in self.rewrites for g in r.layout}
        used |= {self.find(layer.out_group) for layer in self.layers if layer.out_group is not None}
        used = self.with_parents(used)
        roots = [r for r in roots if r in used]
        new_id = {r: i for i, r in enumerate(roots)}
        groups = self.final_groups(roots, new_id)
        remap = lambda g: new_id[self.find(g)]  # noqa: E731
        layers = tuple(
            dataclasses.replace(l, in_layout=tuple(remap(g) for g in l.in_layout),
                                out_group=None if l.out_group is None else remap(l.out_group))
            for l in self.layers
        )
        # A rewrite over groups that all keep their width changes nothing: the forward stays as it is.
        rewrites = tuple(dataclasses.replace(r, layout=tuple(remap(g) for g in r.layout)) for r in self.rewrites
                         if not all(groups[remap(g)].fixed for g in r.layout))
        covered = set()
        for layer in layers:
            if layer.kind == "scale":
                covered.add(id(self.model.get_parameter(layer.name)))
            else:
                covered |= {id(p) for p in self.modules[layer.name].parameters(recurse=False)}
        other = sum(p.numel() for p in self.model.parameters() if id(p) not in covered)
        frozen = tuple(FrozenLeaf(path, type(self.modules[path]).__name__, self.leaves[path], macs)
                       for path, macs in self.leaf_macs.items())
        return ChannelGraph(tuple(groups), layers, self.input_shape, other, sum(f.macs for f in frozen), frozen,
                            rewrites)

    def final_groups(self, roots: list[int], new_id: dict[int, int]) -> list[ChannelGroup]:
        """One ChannelGroup per union-find root, named after its first producer."""
        members: dict[int, list[str]] = {r: [] for r in roots}
        producers: dict[int, list[str]] = {r: [] for r in roots}
        for g in range(len(self.parent)):
            r = self.find(g)
            if r in members:
                members[r] += self.members[g]
                producers[r] += self.producers[g]
        order = {**self.leaf_rank, **{layer.name: i for i, layer in enumerate(self.layers)}}
        cuts: dict[int, set[int]] = {}
        for r in roots:
            f = self.follows[r]
            if f is not None and f.kind == "range" and not self.fixed[r]:
                cuts.setdefault(self.find(f.parent), set()).update((f.index, f.count))
        groups = []
        for r in roots:
            mem = tuple(sorted(set(members[r]), key=order.get))
            prod = tuple(sorted(set(producers[r]), key=order.get))
            name = prod[0] if prod else (mem[0] if mem else self.hint[r] or "input")
            f = self.follows[r]
            # Blocks from grouped convs of different group counts may not tile the width.
            fixed = self.fixed[r] or (not prod and f is None) or self.width[r] % self.blocks[r] != 0
            f = None if f is None or fixed else Follow(f.kind, new_id[self.find(f.parent)], f.index, f.count)
            inner = tuple(sorted(cuts.get(r, set()) - {0, self.width[r]})) if not fixed else ()
            groups.append(ChannelGroup(new_id[r], name, self.width[r], fixed, mem, prod, self.blocks[r], f, inner))
        # Group names must be unique; two groups can only share a name if neither has producers.
        seen: dict[str, int] = {}
        for i, g in enumerate(groups):
            if g.name in seen:
                seen[g.name] += 1
                groups[i] = dataclasses.replace(g, name=f"{g.name}#{seen[g.name]}")
            else:
                seen[g.name] = 0
        return groups


# -- built-in handlers ---------------------------------------------------------------------

def _conv(tracer: _Tracer, node: fx.Node, m: nn.Module, inputs: list[_Tensor]) -> _Tensor:
    x = inputs[0]
    if x.spatial != 1 or x.dim != 1:
        raise TraceError(f"module '{node.target}' convolves a flattened or permuted tensor")
    tracer.check_channels(node, x, m.in_channels)
    shape = _shape(node)
    out_positions = math.prod(shape[2:])
    kernel = math.prod(m.kernel_size)
    bias = m.bias is not None
    if m.groups == 1:
        out = tracer.produce(node, m.out_channels)
        tracer.layers.append(Layer(node.target, "conv", tuple(x.layout), out, False, 1, 1, kernel, out_positions,
                                   bias, in_perm=x.perm))
        return _Tensor([out])
    if m.groups == m.in_channels == m.out_channels:
        # Depthwise: each output channel is its input channel filtered; they prune together.
        for g in x.layout:
            tracer.members[tracer.find(g)].append(node.target)
        tracer.layers.append(Layer(node.target, "conv", tuple(x.layout), None, True, 1, 1, kernel, out_positions,
                                   bias, in_perm=x.perm))
        return x
    x = _plain(tracer, node, x)
    if len(x.layout) == 1:
        # Grouped: conv group j reads input block j and writes output block j. Pruning every
        # block of each side by the same amount keeps `groups` and the pairing of blocks.
        tracer.split_into_blocks(x.layout[0], m.groups)
        out = tracer.produce(node, m.out_channels)
        tracer.split_into_blocks(out, m.groups)
    else:
        # A grouped conv over a concatenation: blocks would cut across the parts; freeze.
        for g in x.layout:
            tracer.fixed[tracer.find(g)] = True
        out = tracer.produce(node, m.out_channels, fixed=True)
    tracer.layers.append(Layer(node.target, "conv", tuple(x.layout), out, False, m.groups, 1, kernel,
                               out_positions, bias))
    return _Tensor([out])


def _linear(tracer: _Tracer, node: fx.Node, m: nn.Linear, inputs: list[_Tensor]) -> _Tensor:
    x = inputs[0]
    in_shape = _shape(node.args[0])
    if in_shape is None or x.dim != len(in_shape) - 1:
        raise TraceError(f"module '{node.target}' (Linear) is applied to a {len(in_shape or ())}-d tensor whose "
                         "last dimension is not the channels; only [N, features] or channels-last inputs are supported")
    tracer.check_channels(node, x, m.in_features)
    out = tracer.produce(node, m.out_features)
    # Channels last (ConvNeXt's MLP): the layer runs once per position.
    tracer.layers.append(Layer(node.target, "linear", tuple(x.layout), out, False, 1, x.spatial, 1,
                               math.prod(in_shape[1:-1]), m.bias is not None))
    return _Tensor([out], dim=x.dim)


def _norm(tracer: _Tracer, node: fx.Node, m: nn.Module, inputs: list[_Tensor]) -> _Tensor:
    x = inputs[0]
    if x.spatial != 1 or x.dim != 1:
        raise TraceError(f"module '{node.target}' ({type(m).__name__}) normalises a flattened or permuted tensor; "
                         "only per-channel norms are supported")
    tracer.check_channels(node, x, m.num_features)
    tracer.layers.append(Layer(node.target, "norm", tuple(x.layout), affine=m.affine, in_perm=x.perm))
    for g in x.layout:
        tracer.members[tracer.find(g)].append(node.target)
    return x


def _group_norm(tracer: _Tracer, node: fx.Node, m: nn.GroupNorm, inputs: list[_Tensor]) -> _Tensor:
    x = inputs[0]
    if x.spatial != 1 or len(x.layout) != 1:
        raise TraceError(f"module '{node.target}' (GroupNorm) normalises a flattened or concatenated tensor; "
                         "only a single channel group is supported")
    tracer.check_channels(node, x, m.num_channels)
    # Each norm group's statistics are over one block: pruning every block alike keeps num_groups.
    tracer.split_into_blocks(x.layout[0], m.num_groups)
    tracer.layers.append(Layer(node.target, "norm", tuple(x.layout), affine=m.affine))
    tracer.members[tracer.find(x.layout[0])].append(node.target)
    return x


def _layer_norm(tracer: _Tracer, node: fx.Node, m: nn.LayerNorm, inputs: list[_Tensor]) -> _Tensor:
    x = inputs[0]
    ndim = len(_shape(node) or ())
    # A LayerNorm over the channels: channels last (nn.LayerNorm after a permute, or on
    # [N, features]), or a subclass that permutes inside (LayerNorm2d of torchvision and timm).
    over_channels = x.dim == ndim - 1 or (type(m) is not nn.LayerNorm and x.dim == 1)
    if len(m.normalized_shape) != 1 or x.spatial != 1 or not over_channels:
        raise TraceError(f"module '{node.target}' ({type(m).__name__}) normalises over {tuple(m.normalized_shape)}, "
                         "not over the channels alone")
    tracer.check_channels(node, x, m.normalized_shape[0])
    tracer.layers.append(Layer(node.target, "norm", tuple(x.layout), affine=m.elementwise_affine))
    for g in x.layout:
        tracer.members[tracer.find(g)].append(node.target)
    return x


def _permute(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Tensor:
    x = inputs[0]
    dims = node.args[1:] if len(node.args) > 2 else node.args[1] if len(node.args) > 1 else node.kwargs["dims"]
    ndim = len(dims)
    dims = [d % ndim for d in dims]
    if x.split:
        if dims != [0, 2, 1, *range(3, ndim)]:
            raise TraceError(f"node '{node.name}' ({_where(node)}) permutes channels split by a view; only "
                             "swapping the two halves (a channel shuffle) is supported")
        return dataclasses.replace(x, swapped=not x.swapped)
    x = _plain(tracer, node, x)
    if x.spatial != 1 or dims[0] != 0:
        raise TraceError(f"node '{node.name}' ({_where(node)}) permutes a flattened tensor or its batch")
    return _Tensor(x.layout, 1, dims.index(x.dim))


def _prelu(tracer: _Tracer, node: fx.Node, m: nn.PReLU, inputs: list[_Tensor]) -> _Tensor:
    if m.num_parameters != 1:
        raise TraceError(f"module '{node.target}' (PReLU with per-channel parameters) is not supported")
    return inputs[0]


def _same_channels(tracer: _Tracer, node: fx.Node, m: nn.Module, inputs: list[_Tensor]) -> _Tensor:
    # Built-in channel-wise modules are trusted by type, without passthrough's shape check.
    return inputs[0]


def _flatten(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Tensor:
    x = inputs[0]
    src, dst = _shape(_first_tensor_arg(node)), _shape(node)
    if (src is None or dst is None or len(dst) != 2 or src[0] != dst[0] or math.prod(src[1:]) != dst[1]
            or x.dim != 1):
        raise TraceError(f"node '{node.name}' ({_where(node)}) reshapes channels {src} -> {dst}; only "
                         "flattening [N, C, ...] to [N, features] is supported")
    return _Tensor(x.layout, x.spatial * math.prod(src[2:]))


def _elementwise(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Tensor:
    return tracer.merge_layouts(inputs, node)


def _concat(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Tensor:
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    shape = _shape(node)
    if dim < 0:
        dim += len(shape)
    if dim != 1:
        return tracer.merge_layouts(inputs, node)
    if any(t.spatial != 1 for t in inputs):
        raise TraceError(f"node '{node.name}' ({_where(node)}) concatenates flattened tensors")
    n_tensors = sum(len(a.meta["tensor_meta"]) if _shape(a) is None else 1 for a in _tuple_args(node.args[0]))
    if n_tensors != len(inputs):
        raise TraceError(f"node '{node.name}' ({_where(node)}) concatenates constants with channel tensors")
    layout = [g for t in inputs for g in t.layout]
    if all(t.perm is None for t in inputs):
        return _Tensor(_join_ranges(tracer, node, layout))
    perm: list[int] = []
    for t in inputs:
        perm += [len(perm) + p for p in _positions(tracer, t)]
    return _Tensor(layout, perm=tuple(perm))


def _getitem(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Tensor | _Parts | None:
    src, idx = node.args[0], node.args[1]
    if _shape(src) is not None:
        return _index(tracer, node, _plain(tracer, node, inputs[0]), idx)
    # An element of a tuple: of parts (chunk, split), or of a size, which carries no channels.
    meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
    if isinstance(meta, (list, tuple)) and len(inputs) == len(meta) and isinstance(idx, (int, slice)):
        return _Parts(inputs[idx]) if isinstance(idx, slice) else inputs[idx]
    if _shape(node) is not None:
        raise _unsupported_function(node)
    return None


def _index(tracer: _Tracer, node: fx.Node, x: _Tensor, idx) -> _Tensor:
    """``x[idx]`` with basic indexing: a slice on the channel dimension cuts the channels
    (see :func:`_cut_reordered`, or :func:`_slice_at` where other dimensions are sliced too);
    slices on other dimensions keep them."""
    ndim = len(_shape(node.args[0]))
    entries = list(idx) if isinstance(idx, tuple) else [idx]
    if x.dim < 0 or any(not isinstance(e, (int, slice)) and e is not None and e is not Ellipsis for e in entries):
        raise TraceError(f"node '{node.name}' ({_where(node)}) indexes a channel tensor with {idx!r}; only "
                         "basic slicing is supported")
    taken = sum(1 for e in entries if e is not None and e is not Ellipsis)
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        entries[at:at + 1] = [slice(None)] * (ndim - taken)
    entries += [slice(None)] * (ndim - sum(1 for e in entries if e is not None))
    in_dim = out_dim = 0
    channel = None
    for e in entries:
        if e is not None and in_dim == x.dim:
            channel = e
            break
        in_dim += e is not None
        out_dim += not isinstance(e, int)
    if not isinstance(channel, slice) or out_dim != x.dim:
        raise TraceError(f"node '{node.name}' ({_where(node)}) picks single channels or moves the channel "
                         f"dimension with {idx!r}; only slices of the channels are supported")
    if channel == slice(None):
        return x
    if x.spatial != 1:
        raise TraceError(f"node '{node.name}' ({_where(node)}) slices the features of a flattened tensor")
    start, stop, step = channel.start, channel.stop, channel.step
    if step in (None, 1) and all(b is None or type(b) is int and b >= 0 for b in (start, stop)):
        if x.dim == 1 and all(e == slice(None) for e in entries if e is not channel):
            total = len(_positions(tracer, x))
            (part,) = _cut_reordered(tracer, node, x, [(min(start or 0, total), min(total, stop or total))], "narrow")
            return part
        (layout,) = _slice_at(tracer, node, x.layout, [(start or 0, stop)])
        return _Tensor(layout, 1, x.dim)
    # Bounds computed at run time, from the end, or with a step: the channels keep their count.
    return _Tensor(_frozen(tracer, node, x.layout, [_shape(node)[x.dim]])[0], 1, x.dim)


def _chunk(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Parts:
    """``torch.chunk``: the pruned tensor is cut into equal parts again, so each part must
    lose as many channels (see :func:`_equal_runs`)."""
    x, sizes = _channel_parts(node, inputs[0])
    if sizes is None:
        return _Parts([x] * len(node.meta["tensor_meta"]))
    if x.perm is not None:
        return _Parts(_cut_reordered(tracer, node, x, _bounds(sizes)))
    runs = _equal_runs(tracer, node, x.layout, len(sizes)) if len(set(sizes)) == 1 else None
    if runs is not None:
        layouts = runs
    elif len(set(sizes)) == 1 and len(x.layout) == 1:
        n = len(sizes)
        layouts = [[tracer.new_group(sizes[0], follows=Follow("part", x.layout[0], j, n), hint=f"{node.name}.{j}")]
                   for j in range(n)]
    elif x.dim == 1:
        return _Parts(_cut_reordered(tracer, node, x, _bounds(sizes)))
    else:
        layouts = _frozen(tracer, node, x.layout, sizes)
    return _Parts(_Tensor(layout, 1, x.dim) for layout in layouts)


def _split(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Parts:
    """``torch.split``: parts at constant offsets. On channels in dimension 1 each part is a
    range of the groups it cuts (:func:`_cut_reordered`). Channels last: with an int size the
    last part takes what is left, so it may shrink; with a list of sizes, which must add up to
    the width, nothing may."""
    x, sizes = _channel_parts(node, inputs[0])
    if sizes is None:
        return _Parts([x] * len(node.meta["tensor_meta"]))
    bounds = _bounds(sizes)
    if x.perm is not None or x.dim == 1:
        return _Parts(_cut_reordered(tracer, node, x, bounds))
    sections = node.args[1] if len(node.args) > 1 else node.kwargs.get(
        "split_size_or_sections", node.kwargs.get("split_size"))
    if isinstance(sections, int):
        bounds[-1] = (bounds[-1][0], None)
    else:
        # A list of sizes must add up to the width: no group of the tensor may shrink.
        for g in x.layout:
            tracer.fixed[tracer.find(g)] = True
    return _Parts(_Tensor(layout, 1, x.dim) for layout in _slice_at(tracer, node, x.layout, bounds))


def _bounds(sizes: list[int]) -> list[tuple[int, int]]:
    """[start, stop) of consecutive parts of ``sizes`` channels."""
    starts = [sum(sizes[:j]) for j in range(len(sizes))]
    return [(a, a + n) for a, n in zip(starts, sizes)]


def _channel_parts(node: fx.Node, x: _Tensor) -> tuple[_Tensor, list[int] | None]:
    """The channel widths of the parts a chunk or split returns; None when it cuts another
    dimension, so that every part carries all of ``x``'s channels."""
    shape = _shape(node.args[0])
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0) % len(shape)
    if x.dim < 0 or (dim == x.dim and x.spatial != 1):
        raise TraceError(f"node '{node.name}' ({_where(node)}) cuts a flattened tensor or one whose channels "
                         "a view has split")
    if dim != x.dim:
        return x, None
    if x.perm is not None and x.spatial != 1:
        raise TraceError(f"node '{node.name}' ({_where(node)}) cuts a flattened shuffled tensor")
    return x, [m.shape[dim] for m in node.meta["tensor_meta"]]


def _entries(tracer: _Tracer, layout: list[int]) -> list[tuple[int, int, int]]:
    """(group id, first channel, end) of each entry of ``layout``."""
    out, start = [], 0
    for g in layout:
        end = start + tracer.width[tracer.find(g)]
        out.append((g, start, end))
        start = end
    return out


def _frozen(tracer: _Tracer, node: fx.Node, layout: list[int], widths: list[int]) -> list[list[int]]:
    """The simple, exact answer to a cut the groups cannot follow: every group of ``layout``
    keeps its width, and each piece is a new fixed group of its width."""
    for g in layout:
        tracer.fixed[tracer.find(g)] = True
    return [[tracer.new_group(w, fixed=True, hint=node.name)] for w in widths]


def _slice_at(tracer: _Tracer, node: fx.Node, layout: list[int],
              bounds: list[tuple[int, int | None]]) -> list[list[int]]:
    """Layouts of the slices [start, stop) of channels at constant offsets (stop None: to the
    end, whatever the pruned width). The forward code keeps its constants, so every channel
    before an offset keeps its width: those groups are fixed. A slice whose ends fall on group
    boundaries carries those groups (an open-ended one stays searchable); one that cuts inside
    a group freezes the groups it touches and is a new fixed group."""
    entries = _entries(tracer, layout)
    total = entries[-1][2] if entries else 0
    bounds = [(min(a, total), None if b is None or b >= total else max(b, a)) for a, b in bounds]
    held = max([a for a, _ in bounds] + [b for _, b in bounds if b is not None])
    for g, start, _ in entries:
        if start < held:
            tracer.fixed[tracer.find(g)] = True
    out = []
    for a, b in bounds:
        stop = total if b is None else b
        inside = [(g, s, e) for g, s, e in entries if s < stop and e > a]
        if all(a <= s and e <= stop for _, s, e in inside):
            out.append([g for g, _, _ in inside])
        else:
            out += _frozen(tracer, node, [g for g, _, _ in inside], [stop - a])
    return out


def _equal_runs(tracer: _Tracer, node: fx.Node, layout: list[int], n: int) -> list[list[int]] | None:
    """``layout`` cut into ``n`` runs of equal width at group boundaries, the runs' groups
    coupled position by position so that every run keeps the same channels; None where
    the cuts fall inside groups or the runs' groups differ in width."""
    entries = _entries(tracer, layout)
    total = entries[-1][2] if entries else 0
    if n < 1 or total % n:
        return None
    size = total // n
    runs = [[g for g, s, _ in entries if j * size <= s < (j + 1) * size] for j in range(n)]
    starts = {s for _, s, _ in entries}
    widths = [[tracer.width[tracer.find(g)] for g in run] for run in runs]
    if any(j * size not in starts for j in range(n)) or any(w != widths[0] for w in widths):
        return None
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            tracer.union(a, b, node)
    return runs


def _view(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Tensor:
    """view / reshape / flatten: a flatten to [N, features]; a reshape of the spatial
    dimensions; or a channel shuffle, [N, C, ...] -> [N, g, C/g, ...], transposed, and back."""
    x = inputs[0]
    src, dst = _shape(_first_tensor_arg(node)), _shape(node)
    if src is None or dst is None:
        return _flatten(tracer, node, target, [_plain(tracer, node, x)])
    if x.split:
        if len(dst) != len(src) - 1 or dst[:2] != (src[0], src[1] * src[2]) or dst[2:] != src[3:]:
            raise TraceError(f"node '{node.name}' ({_where(node)}) reshapes channels split by a view "
                             f"{src} -> {dst}; only joining them back is supported")
        return _shuffle(tracer, node, x) if x.swapped else _Tensor(x.layout, perm=x.perm)
    if x.dim == 1 and x.spatial == 1 and len(src) >= 3:
        if len(dst) == len(src) + 1 and dst[0] == src[0] and dst[1] * dst[2] == src[1] and dst[3:] == src[2:]:
            return _Tensor(x.layout, 1, -1, dst[1], perm=x.perm, origin=_first_tensor_arg(node).name)
        if len(dst) >= 3 and dst[:2] == src[:2] and math.prod(dst[2:]) == math.prod(src[2:]):
            return x  # the spatial dimensions reshaped, the channels untouched
    return _flatten(tracer, node, target, [_plain(tracer, node, x)])


def _transpose(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> _Tensor:
    x = inputs[0]
    ndim = len(_shape(node.args[0]))
    a, b = sorted(d % ndim for d in (*node.args[1:], *node.kwargs.values()))
    if x.split:
        if (a, b) != (1, 2):
            raise TraceError(f"node '{node.name}' ({_where(node)}) transposes channels split by a view; only "
                             "swapping the two halves (a channel shuffle) is supported")
        return dataclasses.replace(x, swapped=not x.swapped)
    x = _plain(tracer, node, x)
    if x.spatial != 1 or a == 0:
        raise TraceError(f"node '{node.name}' ({_where(node)}) transposes a flattened tensor or its batch")
    return _Tensor(x.layout, 1, b if x.dim == a else a if x.dim == b else x.dim)


def _shuffle(tracer: _Tracer, node: fx.Node, x: _Tensor) -> _Tensor:
    """A channel shuffle of ``x.split`` runs: output channel ``i * g + k`` is channel ``i`` of
    run ``k``. Every group keeps its own width and choice of channels; the tensor records
    where each channel went (``perm``), and surgery gathers the kept channels in that order."""
    g = x.split
    run = len(_positions(tracer, x)) // g
    src = tuple((j % g) * run + j // g for j in range(g * run))
    dst = [0] * len(src)
    for j, q in enumerate(src):
        dst[q] = j
    tracer.rewrites.append(Rewrite(node.name, "gather", x.origin, tuple(x.layout), x.perm, src))
    return _Tensor(x.layout, perm=tuple(dst[q] for q in _positions(tracer, x)))


def _positions(tracer: _Tracer, x: _Tensor) -> tuple[int, ...]:
    """The position of each channel of ``x``'s layout in the tensor."""
    return x.perm if x.perm is not None else tuple(range(sum(tracer.width[tracer.find(g)] for g in x.layout)))


def _plain(tracer: _Tracer, node: fx.Node, x: _Tensor) -> _Tensor:
    """``x`` for an op that does not follow reordered channels: after a shuffle, every group
    of it keeps its width (the pruned tensor is then the original one) and the tensor is one
    new fixed group."""
    if x.perm is None:
        return x
    (layout,) = _frozen(tracer, node, x.layout, [len(x.perm)])
    return _Tensor(layout, x.spatial, x.dim)


def _cut_reordered(tracer: _Tracer, node: fx.Node, x: _Tensor, bounds: list[tuple[int, int]],
                   kind: str = "split") -> list[_Tensor]:
    """Cuts [start, stop) at constant positions of ``x`` (shuffled or not) that the forward code
    would get wrong on the pruned tensor. Each group's channels inside a cut are a run of it,
    which becomes a group that follows it as a ``range``; surgery cuts the pruned tensor at the
    kept counts (``kind``: ``split`` for chunk and split, ``narrow`` for a slice). Where a run
    is not whole (or its group cannot be ranged), every group keeps its width."""
    pos = _positions(tracer, x)
    if bounds == [(0, len(pos))] and kind == "narrow":
        return [x]  # the whole tensor: nothing to cut
    entries = _entries(tracer, x.layout)
    parts = []
    for a, b in bounds:
        layout, perm = [], []
        for g, s, e in entries:
            inside = [i for i in range(e - s) if a <= pos[s + i] < b]
            if not inside:
                continue
            lo, hi = inside[0], inside[-1] + 1
            sub = _range_of(tracer, node, g, lo, hi) if hi - lo == len(inside) else None
            if sub is None:
                return [_Tensor(layout) for layout in _frozen(tracer, node, x.layout, [b - a for a, b in bounds])]
            layout.append(sub)
            perm += [pos[s + i] - a for i in inside]
        parts.append(_Tensor(layout, perm=None if perm == sorted(perm) else tuple(perm)))
    source = _first_tensor_arg(node).name
    tracer.rewrites.append(Rewrite(node.name, kind, source, tuple(x.layout), x.perm, tuple(bounds)))
    return parts


def _join_ranges(tracer: _Tracer, node: fx.Node, layout: list[int]) -> list[int]:
    """``layout`` with adjacent ranges of one group joined (the parts of a split concatenated
    again, as MixNet's mixed convs do): the group itself where they cover it."""
    out: list[int] = []
    for g in layout:
        f = tracer.follows[tracer.find(g)]
        prev = tracer.follows[tracer.find(out[-1])] if out else None
        if (f is not None and prev is not None and f.kind == prev.kind == "range"
                and tracer.find(f.parent) == tracer.find(prev.parent) and prev.count == f.index):
            joined = _range_of(tracer, node, tracer.find(f.parent), prev.index, f.count)
            if joined is None:  # the parent follows another group some other way
                out.append(g)
            else:
                out[-1] = joined
        else:
            out.append(g)
    return out


def _range_of(tracer: _Tracer, node: fx.Node, g: int, lo: int, hi: int) -> int | None:
    """A group for channels ``lo`` to ``hi`` of group ``g``: ``g`` itself when whole, else a
    ``range`` of its root (of the group ``g`` ranges over, if it is a range itself); None when
    ``g`` follows another group some other way."""
    r = tracer.find(g)
    if lo == 0 and hi == tracer.width[r]:
        return g
    f = tracer.follows[r]
    if f is not None and f.kind != "range":
        return None
    parent, offset = (r, 0) if f is None else (f.parent, f.index)
    return tracer.new_group(hi - lo, follows=Follow("range", parent, offset + lo, offset + hi), hint=node.name)


def _no_channels(tracer: _Tracer, node: fx.Node, target, inputs: list[_Tensor]) -> None:
    """x.size(), x.dim(), x.numel(): numbers, not channel tensors."""


def _unsupported_function(node: fx.Node) -> TraceError:
    return TraceError(f"node '{node.name}' ({_where(node)}): function {_fn_name(node.target)} on a channel "
                      f"tensor is not supported; {_HOW_TO_ADD}")


def _table(handler: _Handler, *keys) -> dict:
    return dict.fromkeys(keys, handler)


# Module rules match subclasses too (see _module_rule); these keys are unrelated classes except
# ReLU6 < Hardtanh, which share a handler.
_BUILTIN_RULES: dict[str, dict[Any, _Handler]] = {
    "module": {
        **_table(_conv, nn.Conv1d, nn.Conv2d, nn.Conv3d),
        nn.Linear: _linear,
        **_table(_norm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
        nn.GroupNorm: _group_norm,
        nn.LayerNorm: _layer_norm,
        nn.Flatten: _flatten,
        nn.PReLU: _prelu,
        # Modules that act on every channel independently (or not at all).
        **_table(_same_channels,
                 nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.SiLU, nn.GELU, nn.Mish,
                 nn.Hardswish, nn.Hardtanh, nn.Sigmoid, nn.Hardsigmoid, nn.Tanh, nn.Identity,
                 nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                 nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                 nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                 nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample),
    },
    "function": {
        torch.permute: _permute,
        # Binary element-wise ops: two channel tensors meeting here must share their channels.
        **_table(_elementwise, operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                 operator.imul, operator.truediv, torch.add, torch.sub, torch.mul),
        torch.cat: _concat,
        torch.concat: _concat,
        **_table(_view, torch.flatten, torch.reshape),
        **_table(_transpose, torch.transpose, torch.swapaxes),
        torch.chunk: _chunk,
        torch.split: _split,
        **_table(spatial_reduce, torch.mean, torch.sum, torch.amax),
        **_table(passthrough,
                 F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.silu, F.gelu, F.mish, F.hardswish, F.hardtanh,
                 F.hardsigmoid, F.sigmoid, F.tanh, torch.relu, torch.sigmoid, torch.tanh,
                 F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
                 F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                 F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                 F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
                 operator.neg, torch.neg),
        operator.getitem: _getitem,
    },
    "method": {
        "permute": _permute,
        **_table(_no_channels, "size", "dim", "numel"),
        **_table(_elementwise, "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"),
        **_table(_view, "flatten", "view", "reshape"),
        **_table(_transpose, "transpose", "swapaxes"),
        "chunk": _chunk,
        "split": _split,
        **_table(spatial_reduce, "mean", "sum", "amax"),
        **_table(passthrough, "relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach", "float", "to",
                 "type_as", "clamp", "clamp_", "neg"),
    },
}

# The rules that follow a shuffled tensor's channel positions (`_Tensor.perm`); any other
# rule, a user's included, gets the tensor with its groups fixed (see `_plain`).
_KEEP_PERM = frozenset({
    _conv, _norm, _same_channels, _prelu, passthrough, spatial_reduce, _elementwise, _concat, _view, _transpose,
    _permute, _chunk, _split, _getitem, _no_channels,
})

# Modules of packages the tracer does not import (torchvision.ops, timm), matched by class name
# anywhere in the module's MRO, after any rule keyed by class.
_BUILTIN_BY_CLASS_NAME: dict[str, _Handler] = {
    # Drop a whole sample's residual branch (or nothing, in eval): identity on channels.
    "StochasticDepth": _same_channels,
    "DropPath": _same_channels,
}


# -- small helpers on fx nodes -------------------------------------------------------------

def _shape(node) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _tuple_args(arg) -> list[fx.Node]:
    """Nodes in ``arg`` that hold a tensor or a tuple of tensors."""
    if isinstance(arg, fx.Node):
        meta = arg.meta.get("tensor_meta")
        return [arg] if _shape(arg) is not None or isinstance(meta, (list, tuple)) and meta else []
    if isinstance(arg, (list, tuple)):
        return [n for a in arg for n in _tuple_args(a)]
    return []


def _tensor_args(arg) -> list[fx.Node]:
    if isinstance(arg, fx.Node):
        return [arg] if _shape(arg) is not None else []
    if isinstance(arg, (list, tuple)):
        return [n for a in arg for n in _tensor_args(a)]
    return []


def _parameter_behind(arg) -> tuple[str, int] | None:
    """(target, size) of a parameter with more than one value that ``arg`` reads, directly
    or through reshapes; None for anything else."""
    while isinstance(arg, fx.Node) and arg.op == "call_method" and arg.target in ("reshape", "view"):
        arg = arg.args[0]
    if not isinstance(arg, fx.Node) or arg.op != "get_attr":
        return None
    shape = _shape(arg)
    size = math.prod(shape) if shape is not None else 1
    return (arg.target, size) if size > 1 else None


def _first_tensor_arg(node: fx.Node) -> fx.Node | None:
    found = _tensor_args(node.args)
    return found[0] if found else None


def _flat_values(args, values: dict) -> list[_Tensor]:
    out: list[_Tensor] = []
    for a in args:
        if isinstance(a, fx.Node):
            v = values.get(a)
            if isinstance(v, _Parts):
                out += v
            elif v is not None:
                out.append(v)
        elif isinstance(a, (list, tuple)):
            out += _flat_values(a, values)
        elif isinstance(a, dict):
            out += _flat_values(tuple(a.values()), values)
    return out


def _is_namedtuple_class(target) -> bool:
    return isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields")


def _same_kind(seq, items: list):
    """``items`` in a sequence of the type of ``seq``: list, tuple or namedtuple."""
    if _is_namedtuple_class(type(seq)):
        return type(seq)(*items)
    return list(items) if isinstance(seq, list) else tuple(items)


# Layers whose MACs are counted (the cost model's convention), inside a frozen leaf.
_MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
               nn.Linear)


def _fn_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = getattr(cls, "__name__", str(cls))
        return f"in module '{path}' ({cls_name})"
    return "at top level"
