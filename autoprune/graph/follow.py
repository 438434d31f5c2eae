"""Groups that follow another: the parts of a ``chunk``, copies (``tile``), each channel
repeated (``repeat``, a depthwise conv's channel multiplier), and ``range``s cut at
constant positions (see :class:`~autoprune.graph.Follow`).

Ops that cut channels at run time keep working on the pruned model because the forward code
recomputes their sizes: ``chunk`` cuts a group into parts that follow their parent (the
parent is pruned alike in every part). A cut at constant positions (``x[:, a:b]``, ``split``
by sizes) takes a ``range`` of each group it reaches: the parent keeps ``w * x // n`` of its
first ``x`` channels at width ``w`` of ``n``, so every range's width follows from the group's.

Two halves: on a finished :class:`~autoprune.graph.ChannelGraph`, the width and kept channels
of every follower from its parent's (:func:`follow_widths`, :func:`follow_indices`); while
tracing, on a :class:`~autoprune.graph.GroupTable`, making ranges (:func:`range_of`,
:func:`join_ranges`) and settling the follow rules once every union is known
(:func:`settle_follows`).
"""

from __future__ import annotations

import math

import torch
import torch.fx as fx

from autoprune.graph.result import ChannelGraph, ChannelGroup, Follow
from autoprune.graph.table import GroupTable

# -- on the result ---------------------------------------------------------------------------


def follow_widths(graph: ChannelGraph, full: list) -> list:
    """Set, in ``full`` (a width per group id), the width of every group that follows
    another from its parent's; returns ``full``. Widths may be differentiable scalars."""
    for g in follow_order(graph):
        f, w = g.follows, full[g.follows.parent]
        if f.kind in ("tile", "repeat"):
            full[g.id] = w * f.count
        elif f.kind == "range":
            n = graph.groups[f.parent].width
            full[g.id] = w * (f.count - f.index) / n if isinstance(w, torch.Tensor) else (
                range_kept(int(w), n, f.count) - range_kept(int(w), n, f.index))
        else:
            full[g.id] = w / f.count if isinstance(w, torch.Tensor) else int(w) // f.count
    return full


def range_kept(width: int, full: int, x: int) -> int:
    """How many of a group's first ``x`` channels (of ``full``) it keeps at ``width``, when a
    range of it follows the group: ``width * x // full``, so a segment's count depends on
    its ends alone and segments add up."""
    return width * x // full


def follow_indices(graph: ChannelGraph, kept: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Set, in ``kept`` (sorted kept channel indices per group id), those of every group that
    follows another from its parent's; returns ``kept``."""
    for g in follow_order(graph):
        f, k = g.follows, kept[g.follows.parent]
        if f.kind == "tile":
            kept[g.id] = (torch.arange(f.count)[:, None] * graph.groups[f.parent].width + k).flatten()
            continue
        if f.kind == "repeat":
            kept[g.id] = (k[:, None] * f.count + torch.arange(f.count, device=k.device)).flatten()
            continue
        if f.kind == "range":
            lo, hi = f.index, f.count
        else:
            run = graph.groups[f.parent].width // f.count
            lo, hi = f.index * run, (f.index + 1) * run
        kept[g.id] = k[(k >= lo) & (k < hi)] - lo
    return kept


def follow_order(graph: ChannelGraph) -> list[ChannelGroup]:
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


# -- while tracing ---------------------------------------------------------------------------


def range_of(table: GroupTable, node: fx.Node, g: int, lo: int, hi: int) -> int | None:
    """A group for channels ``lo`` to ``hi`` of group ``g``: ``g`` itself when whole, else a
    ``range`` of its root (of the group ``g`` ranges over, if it is a range itself); None when
    ``g`` follows another group some other way."""
    r = table.find(g)
    if lo == 0 and hi == table.width(r):
        return g
    f = table.follows(r)
    if f is not None and f.kind != "range":
        return None
    parent, offset = (r, 0) if f is None else (f.parent, f.index)
    return table.new_group(hi - lo, follows=Follow("range", parent, offset + lo, offset + hi), hint=node.name)


def join_ranges(table: GroupTable, node: fx.Node, layout: list[int]) -> list[int]:
    """``layout`` with adjacent ranges of one group joined (the parts of a split concatenated
    again, as MixNet's mixed convs do): the group itself where they cover it."""
    out: list[int] = []
    for g in layout:
        f = table.follows(g)
        prev = table.follows(out[-1]) if out else None
        if (f is not None and prev is not None and f.kind == prev.kind == "range"
                and table.find(f.parent) == table.find(prev.parent) and prev.count == f.index):
            joined = range_of(table, node, table.find(f.parent), prev.index, f.count)
            if joined is None:  # the parent follows another group some other way
                out.append(g)
            else:
                out[-1] = joined
        else:
            out.append(g)
    return out


def parent_blocks(f: Follow, blocks: int) -> int:
    """The blocks a parent needs so that its follower keeps as many channels in each of its ``blocks``."""
    if f.kind == "part":
        return f.count * blocks
    if f.kind == "range":
        return 1  # a range and its parent must both be whole (settle_follows checks it)
    if f.kind == "tile" and f.count % blocks == 0:
        return 1  # every block of the follower is whole copies of the parent
    if f.kind == "repeat":
        return blocks  # a block of the parent's channels repeated is a block of the follower
    return blocks


def settle_follows(table: GroupTable) -> None:
    """Once every union is known: cut each parent into the blocks its followers need, and
    keep a follower and its parent at full width together when either must be (a fixed
    group, blocks that do not tile the parent, a cycle). A follower at full width is an
    ordinary fixed group."""
    records = table.records()
    produced = {table.find(g) for g, r in enumerate(records) if r.producers}
    roots = [g for g in range(len(records)) if table.find(g) == g]
    for r in roots:
        if records[r].follows is None and r not in produced:
            records[r].fixed = True  # as the final groups decide, but early enough to reach followers
    kids = [r for r in roots if records[r].follows is not None]
    for g in kids:
        records[g].follows = range_root(table, g)
    changed = True
    while changed:
        changed = False
        for g in kids:
            rg = records[g]
            f = rg.follows
            p = table.find(f.parent)
            rp = records[p]
            blocks = math.lcm(rp.blocks, parent_blocks(f, rg.blocks))
            changed |= blocks != rp.blocks
            rp.blocks = blocks
            stuck = rg.fixed or rp.fixed or rp.width % blocks != 0 or in_cycle(table, g)
            # A range's count is its root parent's choice: no blocks on either side.
            stuck |= f.kind == "range" and (rg.blocks > 1 or rp.blocks > 1 or rp.follows is not None)
            if stuck and not (rg.fixed and rp.fixed):
                rg.fixed = rp.fixed = changed = True
    for g in kids:
        if records[g].fixed:
            records[g].follows = None


def range_root(table: GroupTable, g: int) -> Follow:
    """``g``'s follow rule, a range of a range re-expressed as a range of the group at the
    end of the chain (the counts agree: both are the root's, at the same positions)."""
    f = table.follows(g)
    for _ in range(len(table)):
        p = table.follows(f.parent) if f.kind == "range" else None
        if p is None or p.kind != "range" or table.find(p.parent) == table.find(g):
            return f
        f = Follow("range", p.parent, p.index + f.index, p.index + f.count)
    return f


def in_cycle(table: GroupTable, g: int) -> bool:
    """Whether following ``g``'s parents leads back to ``g`` (or does not end)."""
    p = g
    for _ in range(len(table)):
        f = table.follows(p)
        if f is None:
            return False
        p = table.find(f.parent)
        if p == g:
            return True
    return True


def with_parents(table: GroupTable, roots: set[int]) -> set[int]:
    """``roots`` and every group they follow, directly or not."""
    out, todo = set(roots), list(roots)
    while todo:
        f = table.follows(todo.pop())
        if f is not None and table.find(f.parent) not in out:
            out.add(table.find(f.parent))
            todo.append(table.find(f.parent))
    return out
