"""A model whose own ``forward`` cannot be traced, searched through the parts that can.

A whole detector's forward iterates its list of images, samples boxes and runs
non-maximum suppression: fx follows none of that, yet its backbone, feature pyramid and box
head are plain layers. :func:`trace_parts` runs the model once on an example input, noting
which submodules are called and with what, then traces, from the top down, every submodule
called with one tensor as a model of its own (a part), and looks inside those it
cannot trace. The parts' graphs are joined into one :class:`~autoprune.graph.ChannelGraph`
whose layer and group names are paths in the whole model, so surgery slices the model's own
modules and it keeps its class, its forward and what it returns.

Where the parts meet, through the untraceable code, channels are fixed: every part's inputs
and outputs keep their width. Layers outside every part keep theirs too; their MACs on the
example are a constant.
A part called more than once (a head shared by all pyramid levels) is traced once, its
channels alike in every call; MACs are counted for every call the example made, so a box
head's are those of the example's proposals, which depend on the data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable

import torch
import torch.nn as nn

from autoprune.errors import TraceError, one_line
from autoprune.graph.fxtrace import MAC_LAYERS, mac_count
from autoprune.graph.result import ChannelGraph, ChannelGroup, FrozenLeaf, Layer


@dataclasses.dataclass
class _Calls:
    """What one forward of the model did with a submodule: how often it ran, the shapes of
    its one tensor input (None once a call takes anything else), the Conv/Linear MACs inside
    it and, for a Conv/Linear layer, its output positions (all calls together)."""

    count: int = 0
    shapes: list[tuple[int, ...]] | None = dataclasses.field(default_factory=list)
    macs: int = 0
    positions: int = 0

    def one_input(self) -> tuple[int, ...] | None:
        """The shape of its input without the rows, where every call took one tensor with the
        same number of channels (pyramid levels differ in size only); else None."""
        if not self.shapes or any(len(s) != len(self.shapes[0]) or s[1] != self.shapes[0][1] for s in self.shapes):
            return None
        return self.shapes[0][1:]


def trace_parts(model: nn.Module, input_shape: tuple[int, ...], why: TraceError,
                trace_part: Callable[[nn.Module, tuple[int, ...]], ChannelGraph]) -> ChannelGraph:
    """The graph of ``model``, whose forward failed to trace with ``why``, joined from the
    graphs ``trace_part(submodule, shape)`` returns for its traceable parts (see the module
    docs). ``why`` itself if no part has a channel group left to search."""
    calls = _record_calls(model, input_shape, why)
    parts: list[tuple[str, ChannelGraph]] = []
    left: list[str] = []  # untraced submodules with MACs of their own, by path

    def visit(path: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            p = f"{path}.{name}" if path else name
            c = calls.get(p)
            if c is None or not c.macs:
                continue  # no Conv/Linear inside it ran: nothing to search or count
            if c.one_input() is not None:
                with contextlib.suppress(TraceError):
                    parts.append((p, trace_part(child, c.one_input())))
                    continue
            if isinstance(child, MAC_LAYERS) or not any(True for _ in child.children()):
                left.append(p)
            else:
                visit(p, child)

    visit("", model)
    if not any(not g.fixed for _, g in parts for g in g.groups):
        raise why
    return _joined(model, input_shape, parts, left, calls, why)


def _record_calls(model: nn.Module, input_shape: tuple[int, ...], why: TraceError) -> dict[str, _Calls]:
    """One forward of ``model`` on a zero batch of one, recording every submodule's calls; its
    buffers (running statistics) are left as they were."""
    calls: dict[str, _Calls] = {}
    paths = {m: p for p, m in model.named_modules() if p}
    macs: dict[str, int] = {}

    def hook(m, args, kwargs, out):
        c = calls.setdefault(paths[m], _Calls())
        c.count += 1
        x = args[0] if len(args) == 1 and not kwargs else None
        if c.shapes is not None:
            c.shapes = c.shapes + [tuple(x.shape)] if isinstance(x, torch.Tensor) and x.dim() >= 2 else None
        if isinstance(m, MAC_LAYERS):
            macs[paths[m]] = macs.get(paths[m], 0) + mac_count(m, out)
            c.positions += out.numel() // out.shape[-1 if isinstance(m, nn.Linear) else 1]

    hooks = [m.register_forward_hook(hook, with_kwargs=True) for m in paths]
    param = next(model.parameters(), None)
    buffers = {k: b.clone() for k, b in model.named_buffers()}  # a training forward updates running statistics
    try:
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            model(torch.zeros(1, *input_shape, device=param.device if param is not None else "cpu"))
    except Exception as exc:  # noqa: BLE001 — the model cannot run on the example: the trace error stands
        raise TraceError(f"{one_line(why)}; nor does a forward pass on a zero input of shape {input_shape} "
                         f"run: {one_line(exc)[:200]}") from None
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for k, b in model.named_buffers():
                b.copy_(buffers[k])
    for path, n in macs.items():  # a module's MACs are those of the Conv/Linear layers inside it
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            calls.setdefault(".".join(parts[:i]), _Calls()).macs += n
    return calls


def _as_called(graph: ChannelGraph, path: str, calls: dict[str, _Calls]) -> ChannelGraph:
    """``graph`` of the part at ``path``, traced on one example row, with the MACs of every
    call the model made: each Conv/Linear layer's output positions and each frozen leaf's
    MACs as recorded (pyramid levels of a shared head, proposals of a box head)."""
    def recorded(name: str) -> _Calls | None:
        return calls.get(f"{path}.{name}")

    layers = tuple(l if l.kind not in ("conv", "linear") or recorded(l.name) is None
                   else dataclasses.replace(l, out_positions=recorded(l.name).positions) for l in graph.layers)
    frozen = tuple(f if recorded(f.path) is None else dataclasses.replace(f, macs=recorded(f.path).macs)
                   for f in graph.frozen)
    return dataclasses.replace(graph, layers=layers, frozen=frozen, other_macs=sum(f.macs for f in frozen))


def _joined(model: nn.Module, input_shape: tuple[int, ...], parts: list[tuple[str, ChannelGraph]],
            left: list[str], calls: dict[str, _Calls], why: TraceError) -> ChannelGraph:
    """One ChannelGraph of the ``parts`` (path, graph), with names as paths in ``model``."""
    groups: list[ChannelGroup] = []
    layers: list[Layer] = []
    frozen: list[FrozenLeaf] = []
    for path, graph in parts:
        graph = _as_called(graph, path, calls)
        offset = len(groups)
        # Surgery of a part's shuffles and constant cuts re-traces the part's forward, which
        # the whole model's cannot host: their channels keep their width.
        kept_whole = {g for r in graph.rewrites for g in r.layout}
        for g in graph.groups:
            follows = None if g.follows is None else dataclasses.replace(g.follows, parent=g.follows.parent + offset)
            groups.append(dataclasses.replace(
                g, id=g.id + offset, name=f"{path}.{g.name}", fixed=g.fixed or g.id in kept_whole,
                members=tuple(f"{path}.{m}" for m in g.members), producers=tuple(f"{path}.{m}" for m in g.producers),
                follows=follows if g.id not in kept_whole else None, cuts=() if g.id in kept_whole else g.cuts))
        layers += [dataclasses.replace(l, name=f"{path}.{l.name}", in_layout=tuple(g + offset for g in l.in_layout),
                                       out_group=None if l.out_group is None else l.out_group + offset)
                   for l in graph.layers]
        frozen += [dataclasses.replace(f, path=f"{path}.{f.path}") for f in graph.frozen]
    groups = _fixed_followers(groups)
    rest = sum(calls[p].macs for p in left)
    traced = ", ".join(p for p, _ in parts)
    frozen.append(FrozenLeaf("", type(model).__name__, f"{one_line(why)[:300]}; traced in parts: {traced}", rest))
    covered = set()
    for layer in layers:
        owner = model.get_parameter(layer.name) if layer.kind == "scale" else None
        covered |= {id(owner)} if owner is not None else {
            id(p) for p in model.get_submodule(layer.name).parameters(recurse=False)}
    other = sum(p.numel() for p in model.parameters() if id(p) not in covered)
    return ChannelGraph(tuple(groups), tuple(layers), tuple(input_shape), other,
                        sum(f.macs for f in frozen), tuple(frozen))


def _fixed_followers(groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """A group that follows a fixed one is fixed too (its parent keeps every channel)."""
    out = list(groups)
    changed = True
    while changed:
        changed = False
        for i, g in enumerate(out):
            if g.follows is not None and out[g.follows.parent].fixed:
                out[i] = dataclasses.replace(g, fixed=True, follows=None)
                changed = True
    return out
