"""Rules for ops that cut or join the channels: ``torch.cat``, ``chunk``, ``split``, and
indexing (``x[:, a:b]``, an element of a tuple of parts).

A concatenation is a layout: the ordered groups of its parts. ``chunk`` cuts a group into
parts that follow it (:class:`~autoprune.graph.Follow` ``part``). A cut at constant positions
takes a range of each group it reaches (:func:`~autoprune.graph.rewrites.cut_reordered`);
where neither can hold, the groups keep their width (:func:`slice_at`).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from autoprune.errors import TraceError
from autoprune.graph.follow import join_ranges
from autoprune.graph.nodes import shape_of, tuple_args, unsupported_function, where
from autoprune.graph.result import Follow
from autoprune.graph.rewrites import cut_reordered, fixed_pieces, plain, positions
from autoprune.graph.rules.pointwise import merge
from autoprune.graph.table import GroupTable
from autoprune.graph.tensor import ChannelTensor, Parts


def concat(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor:
    """``torch.cat`` on the channels: the parts' layouts one after the other (ranges of one
    group that meet again joined). On another dimension, the parts share their channels."""
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    shape = shape_of(node)
    if dim < 0:
        dim += len(shape)
    if dim != 1:
        return merge(table, node, inputs)
    if any(t.spatial != 1 for t in inputs):
        raise TraceError(f"node '{node.name}' ({where(node)}) concatenates flattened tensors")
    n_tensors = sum(len(a.meta["tensor_meta"]) if shape_of(a) is None else 1 for a in tuple_args(node.args[0]))
    if n_tensors != len(inputs):
        raise TraceError(f"node '{node.name}' ({where(node)}) concatenates constants with channel tensors")
    layout = [g for t in inputs for g in t.layout]
    if all(t.perm is None for t in inputs):
        return ChannelTensor(join_ranges(table, node, layout))
    perm: list[int] = []
    for t in inputs:
        perm += [len(perm) + p for p in positions(table, t)]
    return ChannelTensor(layout, perm=tuple(perm))


def getitem(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> ChannelTensor | Parts | None:
    """``x[idx]`` on a channel tensor (see :func:`index`), or an element of a node's parts."""
    src, idx = node.args[0], node.args[1]
    if shape_of(src) is not None:
        return index(table, node, plain(table, node, inputs[0]), idx)
    # An element of a tuple: of parts (chunk, split), or of a size, which carries no channels.
    meta = src.meta.get("tensor_meta") if isinstance(src, fx.Node) else None
    if isinstance(meta, (list, tuple)) and len(inputs) == len(meta) and isinstance(idx, (int, slice)):
        return Parts(inputs[idx]) if isinstance(idx, slice) else inputs[idx]
    if shape_of(node) is not None:
        raise unsupported_function(node)
    return None


def index(table: GroupTable, node: fx.Node, x: ChannelTensor, idx) -> ChannelTensor:
    """``x[idx]`` with basic indexing: a slice on the channel dimension cuts the channels
    (see :func:`~autoprune.graph.rewrites.cut_reordered`, or :func:`slice_at` where other
    dimensions are sliced too); slices on other dimensions keep them."""
    ndim = len(shape_of(node.args[0]))
    entries = list(idx) if isinstance(idx, tuple) else [idx]
    if x.dim < 0 or any(not isinstance(e, (int, slice)) and e is not None and e is not Ellipsis for e in entries):
        raise TraceError(f"node '{node.name}' ({where(node)}) indexes a channel tensor with {idx!r}; only "
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
        raise TraceError(f"node '{node.name}' ({where(node)}) picks single channels or moves the channel "
                         f"dimension with {idx!r}; only slices of the channels are supported")
    if channel == slice(None):
        return x
    if x.spatial != 1:
        raise TraceError(f"node '{node.name}' ({where(node)}) slices the features of a flattened tensor")
    start, stop, step = channel.start, channel.stop, channel.step
    if step in (None, 1) and all(b is None or type(b) is int and b >= 0 for b in (start, stop)):
        if x.dim == 1 and all(e == slice(None) for e in entries if e is not channel):
            total = len(positions(table, x))
            (part,) = cut_reordered(table, node, x, [(min(start or 0, total), min(total, stop or total))], "narrow")
            return part
        (layout,) = slice_at(table, node, x.layout, [(start or 0, stop)])
        return ChannelTensor(layout, 1, x.dim)
    # Bounds computed at run time, from the end, or with a step: the channels keep their count.
    return ChannelTensor(fixed_pieces(table, node, x.layout, [shape_of(node)[x.dim]])[0], 1, x.dim)


def chunk(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> Parts:
    """``torch.chunk``: the pruned tensor is cut into equal parts again, so each part must
    lose as many channels (see :func:`equal_runs`)."""
    x, sizes = channel_parts(node, inputs[0])
    if sizes is None:
        return Parts([x] * len(node.meta["tensor_meta"]))
    if x.perm is not None:
        return Parts(cut_reordered(table, node, x, bounds_of(sizes)))
    runs = equal_runs(table, node, x.layout, len(sizes)) if len(set(sizes)) == 1 else None
    if runs is not None:
        layouts = runs
    elif len(set(sizes)) == 1 and len(x.layout) == 1:
        n = len(sizes)
        layouts = [[table.new_group(sizes[0], follows=Follow("part", x.layout[0], j, n), hint=f"{node.name}.{j}")]
                   for j in range(n)]
    elif x.dim == 1:
        return Parts(cut_reordered(table, node, x, bounds_of(sizes)))
    else:
        layouts = fixed_pieces(table, node, x.layout, sizes)
    return Parts(ChannelTensor(layout, 1, x.dim) for layout in layouts)


def split(table: GroupTable, node: fx.Node, target, inputs: list[ChannelTensor]) -> Parts:
    """``torch.split``: parts at constant offsets. On channels in dimension 1 each part is a
    range of the groups it cuts (:func:`~autoprune.graph.rewrites.cut_reordered`). Channels
    last: with an int size the last part takes what is left, so it may shrink; with a list of
    sizes, which must add up to the width, nothing may."""
    x, sizes = channel_parts(node, inputs[0])
    if sizes is None:
        return Parts([x] * len(node.meta["tensor_meta"]))
    bounds = bounds_of(sizes)
    if x.perm is not None or x.dim == 1:
        return Parts(cut_reordered(table, node, x, bounds))
    sections = node.args[1] if len(node.args) > 1 else node.kwargs.get(
        "split_size_or_sections", node.kwargs.get("split_size"))
    if isinstance(sections, int):
        bounds[-1] = (bounds[-1][0], None)
    else:
        # A list of sizes must add up to the width: no group of the tensor may shrink.
        table.fix(*x.layout)
    return Parts(ChannelTensor(layout, 1, x.dim) for layout in slice_at(table, node, x.layout, bounds))


def bounds_of(sizes: list[int]) -> list[tuple[int, int]]:
    """[start, stop) of consecutive parts of ``sizes`` channels."""
    starts = [sum(sizes[:j]) for j in range(len(sizes))]
    return [(a, a + n) for a, n in zip(starts, sizes)]


def channel_parts(node: fx.Node, x: ChannelTensor) -> tuple[ChannelTensor, list[int] | None]:
    """The channel widths of the parts a chunk or split returns; None when it cuts another
    dimension, so that every part carries all of ``x``'s channels."""
    shape = shape_of(node.args[0])
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0) % len(shape)
    if x.dim < 0 or (dim == x.dim and x.spatial != 1):
        raise TraceError(f"node '{node.name}' ({where(node)}) cuts a flattened tensor or one whose channels "
                         "a view has split")
    if dim != x.dim:
        return x, None
    if x.perm is not None and x.spatial != 1:
        raise TraceError(f"node '{node.name}' ({where(node)}) cuts a flattened shuffled tensor")
    return x, [m.shape[dim] for m in node.meta["tensor_meta"]]


def slice_at(table: GroupTable, node: fx.Node, layout: list[int],
             bounds: list[tuple[int, int | None]]) -> list[list[int]]:
    """Layouts of the slices [start, stop) of channels at constant offsets (stop None: to the
    end, whatever the pruned width). The forward code keeps its constants, so every channel
    before an offset keeps its width: those groups are fixed. A slice whose ends fall on group
    boundaries carries those groups (an open-ended one stays searchable); one that cuts inside
    a group freezes the groups it touches and is a new fixed group."""
    entries = table.entries(layout)
    total = entries[-1][2] if entries else 0
    bounds = [(min(a, total), None if b is None or b >= total else max(b, a)) for a, b in bounds]
    held = max([a for a, _ in bounds] + [b for _, b in bounds if b is not None])
    for g, start, _ in entries:
        if start < held:
            table.fix(g)
    out = []
    for a, b in bounds:
        stop = total if b is None else b
        inside = [(g, s, e) for g, s, e in entries if s < stop and e > a]
        if all(a <= s and e <= stop for _, s, e in inside):
            out.append([g for g, _, _ in inside])
        else:
            out += fixed_pieces(table, node, [g for g, _, _ in inside], [stop - a])
    return out


def equal_runs(table: GroupTable, node: fx.Node, layout: list[int], n: int) -> list[list[int]] | None:
    """``layout`` cut into ``n`` runs of equal width at group boundaries, the runs' groups
    coupled position by position so that every run keeps the same channels; None where
    the cuts fall inside groups or the runs' groups differ in width."""
    entries = table.entries(layout)
    total = entries[-1][2] if entries else 0
    if n < 1 or total % n:
        return None
    size = total // n
    runs = [[g for g, s, _ in entries if j * size <= s < (j + 1) * size] for j in range(n)]
    starts = {s for _, s, _ in entries}
    widths = [table.widths(run) for run in runs]
    if any(j * size not in starts for j in range(n)) or any(w != widths[0] for w in widths):
        return None
    for run in runs[1:]:
        for a, b in zip(runs[0], run):
            table.union(a, b, node)
    return runs


MODULES: dict = {}
FUNCTIONS = {
    torch.cat: concat,
    torch.concat: concat,
    torch.chunk: chunk,
    torch.split: split,
    operator.getitem: getitem,
}
METHODS = {"chunk": chunk, "split": split}
# Rules that follow a shuffled tensor's channel positions (see ChannelTensor.perm).
KEEP_ORDER = frozenset({concat, chunk, split, getitem})
