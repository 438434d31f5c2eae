"""A model whose own ``forward`` cannot be traced, searched through the parts that can.

A whole detector's forward iterates its list of images, samples boxes and runs
non-maximum suppression: fx follows none of that, yet its backbone, feature pyramid and heads
are plain layers. :func:`trace_parts` runs the model once on an example input, noting which
submodules are called and with what, then traces, from the top down, every submodule called
with one tensor as a model of its own (a part), and looks inside those it cannot trace. The
parts' graphs are joined into one :class:`~autoprune.graph.ChannelGraph` whose layer and group
names are paths in the whole model, so surgery slices the model's own modules and it keeps its
class, its forward and what it returns.

Where the parts meet, a second run of the example, watched op by op (a torch function mode),
decides. A part whose input *is* a tensor another part returned (a pyramid level handed to a
head as it is) shares that tensor's channel group, as does one fed what the code between made
from such tensors channel for channel: a cast, RoI pooling, rows written into a fresh tensor
(the pyramid's levels pooled per box into a box head). Where the input came so, a third run of
the example with those outputs about half as wide checks that the code between follows
their width rather than writing one in. A part's output that the code between the parts
computes with in any other way (reading its shape aside), or that the model returns, keeps its
width, as does a part's input that no part made. Layers outside every part keep theirs too;
their MACs on the example are a constant. A part called more than once (a head shared by all
pyramid levels) is traced once, its channels alike in every call; MACs are counted for every
call the example made, so a box head's are those of the example's proposals, which depend on
the data.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import io
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from autoprune.errors import TraceError, one_line
from autoprune.graph.fxtrace import MAC_LAYERS, mac_count, scattered_positions
from autoprune.graph.nodes import flat_leaves
from autoprune.graph.registry import module_rule
from autoprune.graph.result import ChannelGraph, ChannelGroup, FrozenLeaf


@dataclasses.dataclass
class _Calls:
    """What one forward of the model did with a submodule: how often it ran, the shapes of
    its one tensor input (None once a call takes anything else), the Conv/Linear MACs inside
    it, for a Conv/Linear layer its output positions (all calls together), and whether code
    outside it called one of its submodules."""

    count: int = 0
    shapes: list[tuple[int, ...]] | None = dataclasses.field(default_factory=list)
    macs: int = 0
    positions: int = 0
    entered: bool = False  # a module inside it ran outside its own calls

    def one_input(self) -> tuple[int, ...] | None:
        """The shape of its input without the rows, where every call took one tensor with the
        same number of channels (pyramid levels differ in size only); else None."""
        if not self.shapes or any(len(s) != len(self.shapes[0]) or s[1] != self.shapes[0][1] for s in self.shapes):
            return None
        return self.shapes[0][1:]


def trace_parts(model: nn.Module, input_shape: tuple[int, ...], why: TraceError, trace_part: Callable) -> ChannelGraph:
    """The graph of ``model``, whose forward failed to trace with ``why``, joined from what
    ``trace_part(submodule, shape)`` returns for its traceable parts, (graph, end ids) as
    :class:`~autoprune.graph.tracer.Tracer` with ``ends`` does (see the module docs).
    ``why`` itself if no part has a channel group left to search."""
    calls = _record_calls(model, input_shape, why)
    parts: list[_Part] = []
    left: list[str] = []  # untraced submodules with MACs of their own, by path
    seen = collections.Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    shared = {i for i, n in seen.items() if n > 1}  # one module at several paths: surgery would slice it twice

    def visit(path: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            p = f"{path}.{name}" if path else name
            c = calls.get(p)
            if c is None or not c.macs:
                continue  # no Conv/Linear inside it ran: nothing to search or count
            # A part runs its submodules itself alone, and shares none of them.
            if c.one_input() is not None and not c.entered and not any(id(m) in shared for m in child.modules()):
                # A lone layer is traced as the one step of a Sequential, named "0" there.
                alone = module_rule(type(child)) is not None
                with contextlib.suppress(Exception):  # whatever fails in a part leaves it out, not the model
                    graph, ends = trace_part(nn.Sequential(child) if alone else child, c.one_input())
                    parts.append(_Part(p, _as_called(graph, p, alone, calls), ends, alone,
                                       max(shape[0] for shape in c.shapes)))
                    continue
            if isinstance(child, MAC_LAYERS) or not any(True for _ in child.children()):
                left.append(p)
            else:
                visit(p, child)

    visit("", model)
    try:
        flows = _record_flows(model, input_shape, [part.path for part in parts])
    except TraceError:  # not followed op by op (a forward of its own tensor subclasses): no part is joined
        flows = _Flows({p.path: [None] * calls[p.path].count for p in parts},
                       {(p.path, i) for p in parts for i in range(len(p.ends) - 1)})
    graph = _joined(model, input_shape, parts, flows, sum(calls[p].macs for p in left), why)
    if all(g.fixed for g in graph.groups):
        raise why
    return graph


# How the model's frozen record names the parts whose MACs depend on the example's data.
ROWS_NOTE = "MACs counted for the rows the example made, which other inputs change: "


@dataclasses.dataclass
class _Part:
    """A traced part: its path, its graph (names relative to it, MACs of every call), its end
    groups (input, then each output leaf; None for one that is not a single group), and
    whether it is a lone layer (traced as the step "0" of a Sequential)."""

    path: str
    graph: ChannelGraph
    ends: list
    alone: bool
    rows: int = 1  # the most rows one call took (a box head: the example's proposals)

    def name(self, name: str) -> str:
        """A name in the part as a path in the whole model."""
        if self.alone:
            return self.path + name[1:] if name == "0" or name.startswith("0.") else f"{self.path}.{name}"
        return f"{self.path}.{name}" if name else self.path


@dataclasses.dataclass
class _Flows:
    """Where the parts' tensors went in one run: per part path, each call's input as the set
    of (part path, output leaf) whose channels it carries, or None; which of those inputs came
    through code between the parts (RoI pooling) rather than as they were made, each input's
    width; the outputs the code between the parts computed with or the model returned."""

    inputs: dict[str, list]
    outside: set
    leaves: dict[str, int] = dataclasses.field(default_factory=dict)  # output leaves per part, as run
    carried: set = dataclasses.field(default_factory=set)  # (part path, call) fed through code between
    widths: dict[str, list] = dataclasses.field(default_factory=dict)


# Reading these tells nothing of a tensor's channels that the pruned model would not read anew.
_METADATA = [torch.Tensor.shape.__get__, torch.Tensor.size, torch.Tensor.dim, torch.Tensor.ndim.__get__,
             torch.Tensor.dtype.__get__, torch.Tensor.device.__get__, torch.Tensor.is_cuda.__get__,
             torch.Tensor.__len__]
# A tensor these make holds no channels yet: what is written into it along the rows gives it theirs.
_FACTORIES = {torch.zeros, torch.empty, torch.ones, torch.full, torch.zeros_like, torch.empty_like,
              torch.Tensor.new_zeros, torch.Tensor.new_empty, torch.Tensor.new_ones, torch.Tensor.new_full}


def _channel_wise() -> set:
    """Ops whose output has their first argument's channels, channel for channel (a cast, and
    torchvision's RoI pooling of one feature map's channels per box)."""
    ops = {torch.Tensor.to, torch.Tensor.contiguous, torch.Tensor.clone, torch.Tensor.detach, torch.Tensor.float}
    for name in ("roi_align", "roi_pool"):
        with contextlib.suppress(AttributeError, RuntimeError):  # torchvision's ops are not loaded
            op = getattr(torch.ops.torchvision, name)
            ops |= {op, op.default}
    return ops


def _run_example(model: nn.Module, input_shape: tuple[int, ...], why: TraceError, hooks: list, watch=None):
    """Run ``model`` once on a zero batch of one with ``hooks`` (handles, removed after) and
    inside the torch function mode ``watch``; its buffers (running statistics) are left as
    they were; TraceError (``why``, and what failed) if it cannot run."""
    param = next(model.parameters(), None)
    buffers = {k: b.clone() for k, b in model.named_buffers()}  # a training forward updates running statistics
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()), watch or contextlib.nullcontext():
            return model(torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu"))
    except Exception as exc:  # noqa: BLE001 — the model cannot run on the example: the trace error stands
        raise TraceError(f"{one_line(why)}; nor does a forward pass on a zero input of shape {input_shape} "
                         f"run: {one_line(exc)[:200]}") from None
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])


def _record_calls(model: nn.Module, input_shape: tuple[int, ...], why: TraceError) -> dict[str, _Calls]:
    """One run of the example, recording every submodule's calls."""
    calls: dict[str, _Calls] = {}
    paths = {m: p for p, m in model.named_modules() if p}
    macs: dict[str, int] = {}
    running: list[str] = []

    def enter(m, args, kwargs):
        path = paths[m]
        steps = path.split(".")
        for i in range(1, len(steps)):  # each enclosing module not running now was entered from outside
            if ".".join(steps[:i]) not in running:
                calls.setdefault(".".join(steps[:i]), _Calls()).entered = True
        running.append(path)

    def hook(m, args, kwargs, out):
        running.pop()
        c = calls.setdefault(paths[m], _Calls())
        c.count += 1
        x = args[0] if len(args) == 1 and not kwargs else None
        if c.shapes is not None:
            c.shapes = c.shapes + [tuple(x.shape)] if isinstance(x, torch.Tensor) and x.dim() >= 2 else None
        if isinstance(m, MAC_LAYERS):
            macs[paths[m]] = macs.get(paths[m], 0) + mac_count(m, out)
            if isinstance(m, nn.modules.conv._ConvTransposeNd):  # it runs at its input's positions: see Layer
                c.positions += scattered_positions(m, out)
            else:
                c.positions += out.numel() // out.shape[-1 if isinstance(m, nn.Linear) else 1]

    _run_example(model, input_shape, why, [h for m in paths for h in (m.register_forward_pre_hook(enter, with_kwargs=True),
                                                                       m.register_forward_hook(hook, with_kwargs=True))])
    for path, n in macs.items():  # a module's MACs are those of the Conv/Linear layers inside it
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            calls.setdefault(".".join(parts[:i]), _Calls()).macs += n
    return calls


def _record_flows(model: nn.Module, input_shape: tuple[int, ...], paths: list[str]) -> _Flows:
    """A second run of the example, following the tensors the parts at ``paths`` return, as
    they are and through ops that carry their channels on (:func:`_channel_wise`, and a write
    along the rows into a fresh tensor); checked by :func:`_narrowed` where any input came so."""
    of = {model.get_submodule(p): p for p in paths}
    made: dict[int, tuple] = {}  # id -> (tensor, its origins); the tensor keeps the id unique
    carried: dict[int, tuple] = {}  # the same for tensors made between the parts (empty: fresh)
    flows = _Flows({p: [] for p in paths}, set(), widths={p: [] for p in paths})
    inside = [0]
    channel_wise = _channel_wise()

    def origins(t, where: dict = None) -> frozenset | None:
        tables = (made, carried) if where is None else (where,)
        for table in tables:
            hit = table.get(id(t)) if isinstance(t, torch.Tensor) else None
            if hit is not None and hit[0] is t:
                return hit[1]
        return None

    def used(values) -> None:
        for t in flat_leaves(values):
            flows.outside.update(origins(t) or ())
            if origins(t, carried) is not None:  # a view or a change of it would go unseen: it carries no more
                del carried[id(t)]

    def pre(m, args, kwargs):
        x = args[0] if args else None
        came = origins(x) or None
        flows.inputs[of[m]].append(came)
        flows.widths[of[m]].append(x.shape[1] if isinstance(x, torch.Tensor) and x.dim() >= 2 else None)
        if came is not None and origins(x, made) is None:
            flows.carried.add((of[m], len(flows.inputs[of[m]]) - 1))
        inside[0] += 1

    def post(m, args, kwargs, out):
        inside[0] -= 1
        leaves = flat_leaves(out, torch.Size)  # a shape is one value, as the trace sees it
        flows.leaves[of[m]] = len(leaves)
        for i, t in enumerate(leaves):
            if isinstance(t, torch.Tensor):
                made[id(t)] = (t, frozenset({(of[m], i)}))

    def rows_into(target, key, value) -> bool:
        """Whether ``target[key] = value`` writes ``value``'s channels into a tensor made
        between the parts, whole, along the rows."""
        if origins(target, carried) is None or origins(target, made) is not None or not origins(value):
            return False
        if isinstance(key, tuple) and len(key) > 1 and key[1] != slice(None):
            return False
        return target.dim() == value.dim() >= 2 and target.shape[1] == value.shape[1]

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if inside[0] or func in _METADATA or getattr(func, "__name__", "") == "__get__" and not isinstance(
                    out, torch.Tensor):  # an attribute that is no tensor: requires_grad, layout, ...
                return out
            if func in _FACTORIES and isinstance(out, torch.Tensor):
                carried[id(out)] = (out, frozenset())
            elif func in channel_wise and args and origins(args[0]) and isinstance(out, torch.Tensor):
                used([args[1:], kwargs or {}])
                carried[id(out)] = (out, origins(args[0]))
            elif func is torch.Tensor.__setitem__ and rows_into(*args):
                carried[id(args[0])] = (args[0], origins(args[0]) | origins(args[2]))
            else:
                used([args, kwargs or {}])
            return out

    hooks = [h for m in of for h in (m.register_forward_pre_hook(pre, with_kwargs=True),
                                      m.register_forward_hook(post, with_kwargs=True))]
    out = _run_example(model, input_shape, TraceError("the example ran once but not twice"), hooks, Watch())
    used(_returned(out))
    if flows.carried and not _narrowed(model, input_shape, flows, of):
        for path, call in flows.carried:  # what the code between does with them is not known: fixed
            flows.outside |= flows.inputs[path][call]
            flows.inputs[path][call] = None
    return flows


def _narrowed(model: nn.Module, input_shape: tuple[int, ...], flows: _Flows, of: dict) -> bool:
    """Whether the code between the parts carries channels as :func:`_record_flows` saw: a third
    run of the example in which every part output that reached a part's input through that
    code is about half as wide, as a pruned model's would be, and every part so fed must get
    the narrower width (and is handed the width it was traced with, zeros added). Outputs
    that meet in no input are narrowed by different amounts, so a tensor sized by one and
    filled from another does not pass; every part must run as often as before."""
    narrow = {o for path, call in flows.carried for o in flows.inputs[path][call]} - flows.outside
    # Outputs that feed one input become one group: components of "in the same input".
    component = {o: o for o in narrow}

    def find(o):
        while component[o] != o:
            o = component[o]
        return o

    for came in (c for inputs in flows.inputs.values() for c in inputs):
        met = [find(o) for o in came or () if o in narrow]
        for o in met[1:]:
            component[o] = met[0]
    order = {c: k for k, c in enumerate(sorted({find(o) for o in narrow}))}
    cut_by = {o: order[find(o)] for o in narrow}  # besides half the width, below
    calls = collections.Counter()
    wrong: list[str] = []

    def cut(m, args, kwargs, out):
        path = of[m]

        def one(i, t):
            if (path, i) not in narrow:
                return t
            if not isinstance(t, torch.Tensor) or t.dim() < 2 or t.shape[1] // 2 + cut_by[path, i] >= t.shape[1]:
                wrong.append(path)
                return t
            return t[:, :t.shape[1] - t.shape[1] // 2 - cut_by[path, i]]
        return _map_leaves(out, one, torch.Size)

    def check(m, args, kwargs):
        path = of[m]
        k = calls[path]
        calls[path] += 1
        came = flows.inputs[path][k] if k < len(flows.inputs[path]) else None
        if not came or not came & narrow:
            return None
        x, width = args[0], flows.widths[path][k]
        if width is None or came <= narrow and x.shape[1] != width - width // 2 - cut_by[next(iter(came))]:
            wrong.append(path)
            return None
        pad = x.new_zeros(x.shape[0], width - x.shape[1], *x.shape[2:])
        return (torch.cat([x, pad], 1), *args[1:]), kwargs

    cutting = {path for path, _ in narrow}
    hooks = [m.register_forward_pre_hook(check, with_kwargs=True) for m in of]
    hooks += [m.register_forward_hook(cut, with_kwargs=True) for m, path in of.items() if path in cutting]
    try:
        _run_example(model, input_shape, TraceError("the example ran twice but not with narrower parts"), hooks)
    except TraceError:
        return False
    return not wrong and all(calls[path] == len(flows.inputs[path]) for path in flows.inputs)


def _map_leaves(value, fn: Callable, leaf: type | tuple = ()):
    """``value`` with each leaf, in :func:`~autoprune.graph.nodes.flat_leaves`' order, replaced
    by ``fn(index, leaf)``; containers are copied, never changed."""
    count = iter(range(1 << 30))

    def walk(v):
        if isinstance(v, leaf):
            return fn(next(count), v)
        if isinstance(v, dict):
            new = copy.copy(v)
            for k, x in v.items():
                new[k] = walk(x)
            return new
        if isinstance(v, (list, tuple)):
            items = [walk(x) for x in v]
            return type(v)(*items) if hasattr(v, "_fields") else type(v)(items)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            new = copy.copy(v)
            for f in dataclasses.fields(v):
                object.__setattr__(new, f.name, walk(getattr(v, f.name)))  # a frozen one too
            return new
        return fn(next(count), v)
    return walk(value)


def _returned(out, depth: int = 4) -> list:
    """The tensors in what a model returned, inside containers and plain objects (an ImageList)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if depth == 0:
        return []
    if isinstance(out, dict):
        items = list(out.values())
    elif isinstance(out, (list, tuple)):
        items = list(out)
    else:
        items = list(getattr(out, "__dict__", {}).values())
    return [t for x in items for t in _returned(x, depth - 1)]


def _as_called(graph: ChannelGraph, path: str, alone: bool, calls: dict[str, _Calls]) -> ChannelGraph:
    """``graph`` of the part at ``path``, traced on one example row, with the MACs of every
    call the model made: each Conv/Linear layer's output positions and each frozen leaf's
    MACs as recorded (pyramid levels of a shared head, proposals of a box head)."""
    name = _Part(path, graph, [], alone).name

    def recorded(n: str) -> _Calls | None:
        return calls.get(name(n))

    layers = tuple(l if l.kind not in ("conv", "linear") or recorded(l.name) is None
                   else dataclasses.replace(l, out_positions=recorded(l.name).positions) for l in graph.layers)
    frozen = tuple(f if recorded(f.path) is None else dataclasses.replace(f, macs=recorded(f.path).macs)
                   for f in graph.frozen)
    return dataclasses.replace(graph, layers=layers, frozen=frozen, other_macs=sum(f.macs for f in frozen))


def _joined(model: nn.Module, input_shape: tuple[int, ...], parts: list[_Part], flows: _Flows, rest: int,
            why: TraceError) -> ChannelGraph:
    """One ChannelGraph of the ``parts``, names as paths in ``model``, groups joined where
    ``flows`` says a part's input is another's output; ``rest``: the MACs outside the parts."""
    groups: list[ChannelGroup] = []
    offset: dict[str, int] = {}
    fixed: set[int] = set()  # by the joins: ends that meet the untraced code
    for part in parts:
        offset[part.path] = base = len(groups)
        # Surgery of a part's shuffles and constant cuts re-traces the part's forward, which
        # the whole model's cannot host: their channels keep their width.
        fixed |= {g + base for r in part.graph.rewrites for g in r.layout}
        for g in part.graph.groups:
            follows = None if g.follows is None else dataclasses.replace(g.follows, parent=g.follows.parent + base)
            producers = tuple(part.name(m) if m else "" for m in g.producers)  # "": the code before the part
            name = next((p for p in producers if p), part.name(g.name) if g.name else f"{part.path}.input")
            groups.append(dataclasses.replace(g, id=g.id + base, name=name, members=tuple(map(part.name, g.members)),
                                              follows=follows, producers=producers))
    parent = list(range(len(groups)))

    def find(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    ends = {p.path: [None if e is None else e + offset[p.path] for e in p.ends] for p in parts}
    # A part whose run returned other leaves than its trace (a value the trace took for one)
    # cannot be matched leaf by leaf: every output of it keeps its width.
    unmatched = {p.path for p in parts if flows.leaves.get(p.path, len(p.ends) - 1) != len(p.ends) - 1}
    for part in parts:
        own = ends[part.path][0]
        for came in flows.inputs[part.path]:
            theirs = [None if path in unmatched else ends[path][1 + leaf] for path, leaf in came or ()]
            if own is not None and theirs and all(t is not None and groups[t].width == groups[own].width
                                                  for t in theirs):
                for t in theirs:
                    parent[find(t)] = find(own)
            else:  # every side keeps its width where the channels are not known to match
                fixed |= {g for g in (own, *theirs) if g is not None}
        fixed |= {e for i, e in enumerate(ends[part.path][1:]) if e is not None
                  and ((part.path, i) in flows.outside or part.path in unmatched)}
    groups, remap = _merged(groups, find, fixed)
    layers = [dataclasses.replace(l, name=p.name(l.name), in_layout=tuple(remap[g + offset[p.path]] for g in l.in_layout),
                                  out_group=None if l.out_group is None else remap[l.out_group + offset[p.path]])
              for p in parts for l in p.graph.layers]
    frozen = [dataclasses.replace(f, path=p.name(f.path)) for p in parts for f in p.graph.frozen]
    traced = ", ".join(p.path for p in parts)
    rows = ", ".join(f"{p.path} ({p.rows} rows)" for p in parts if p.rows != 1)  # the example is one image
    rows = f"; {ROWS_NOTE}{rows}" if rows else ""
    frozen.append(FrozenLeaf("", type(model).__name__, f"{one_line(why)[:300]}; traced in parts: {traced}{rows}", rest))
    covered = set()
    for layer in layers:
        owner = model.get_parameter(layer.name) if layer.kind == "scale" else None
        covered |= {id(owner)} if owner is not None else {
            id(p) for p in model.get_submodule(layer.name).parameters(recurse=False)}
    other = sum(p.numel() for p in model.parameters() if id(p) not in covered)
    return ChannelGraph(tuple(groups), tuple(layers), tuple(input_shape), other,
                        sum(f.macs for f in frozen), tuple(frozen))


def _merged(groups: list[ChannelGroup], find, fixed: set[int]) -> tuple[list[ChannelGroup], dict[int, int]]:
    """One group per set ``find`` joins, in order of first appearance, and the new id of every
    old one. A set is fixed if any of its groups is, or is in ``fixed``, or has no producer but
    the untraced code ``""``, or joins several groups one of which follows, is cut or is cut
    into other blocks; a group that follows another is fixed with it, both ways (a chunk's
    part and the tensor it is cut from keep their widths together)."""
    sets: dict[int, list[ChannelGroup]] = {}
    for g in groups:
        sets.setdefault(find(g.id), []).append(g)
    remap = {g.id: i for i, same in enumerate(sets.values()) for g in same}
    same_sets = list(sets.values())
    lock, parent = [], []
    for same in same_sets:
        first = same[0]
        plain = len(same) == 1 or all(g.follows is None and not g.cuts and g.blocks == first.blocks for g in same)
        lock.append(not plain or not any(p for g in same for p in g.producers)
                    or any(g.fixed or g.id in fixed for g in same))
        parent.append(remap[first.follows.parent] if first.follows is not None and len(same) == 1 else None)
    changed = True
    while changed:
        changed = False
        for i, j in enumerate(parent):
            if j is not None and lock[i] != lock[j]:
                lock[i] = lock[j] = changed = True
    out = []
    for i, same in enumerate(same_sets):
        first = same[0]
        producers = tuple(p for g in same for p in g.producers if p)
        members = tuple(dict.fromkeys(m for g in same for m in g.members))
        follows = None if lock[i] or parent[i] is None else dataclasses.replace(first.follows, parent=parent[i])
        out.append(dataclasses.replace(first, id=i, name=producers[0] if producers else members[0] if members else
                                       first.name, fixed=lock[i], members=members, producers=producers,
                                       follows=follows, cuts=() if lock[i] else first.cuts))
    return _unique_names(out), remap


def _unique_names(groups: list[ChannelGroup]) -> list[ChannelGroup]:
    seen: dict[str, int] = {}
    out = []
    for g in groups:
        seen[g.name] = seen.get(g.name, -1) + 1
        out.append(g if not seen[g.name] else dataclasses.replace(g, name=f"{g.name}#{seen[g.name]}"))
    return out
