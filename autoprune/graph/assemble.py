"""From the group table the rules built to the canonical :class:`~autoprune.graph.ChannelGraph`:
follow rules settled, only the groups some layer depends on kept, ids renumbered in graph
order, every group named after its first producer (unique names), parameters and MACs that
no width affects counted."""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from autoprune.graph.follow import settle_follows, with_parents
from autoprune.graph.result import ChannelGraph, ChannelGroup, Follow, FrozenLeaf
from autoprune.graph.table import GroupTable


def assemble(table: GroupTable, model: nn.Module, input_shape: tuple[int, ...], modules: dict[str, nn.Module],
             leaves: dict[str, str], leaf_macs: dict[str, int], leaf_rank: dict[str, float],
             ends: list | None = None):
    """The result of a trace of ``model`` whose rules filled ``table``. ``modules`` are the
    traced module's submodules by path, ``leaves`` the frozen paths and why, ``leaf_macs``
    the MACs of those the graph calls, ``leaf_rank`` where each sits among the layers.
    Given ``ends`` (table group ids, or None), also their ids in the result (None where a
    group was dropped): (graph, ids)."""
    settle_follows(table)
    records = table.records()
    roots = sorted({table.find(g) for g in range(len(table))}, key=lambda g: records[g].first_seen)
    # Keep only groups some layer depends on (the input group always counts), and their parents.
    used = {table.find(g) for layer in table.layers for g in layer.in_layout}
    used |= {table.find(g) for r in table.rewrites for g in r.layout}
    used |= {table.find(layer.out_group) for layer in table.layers if layer.out_group is not None}
    used |= {table.find(g) for g in ends or () if g is not None}  # a part's ends, which other parts may read
    used = with_parents(table, used)
    roots = [r for r in roots if r in used]
    new_id = {r: i for i, r in enumerate(roots)}
    groups = final_groups(table, roots, new_id, leaf_rank)
    remap = lambda g: new_id[table.find(g)]  # noqa: E731
    layers = tuple(
        dataclasses.replace(l, in_layout=tuple(remap(g) for g in l.in_layout),
                            out_group=None if l.out_group is None else remap(l.out_group))
        for l in table.layers
    )
    # A rewrite over groups that all keep their width changes nothing: the forward stays as it is.
    rewrites = tuple(dataclasses.replace(r, layout=tuple(remap(g) for g in r.layout)) for r in table.rewrites
                     if not all(groups[remap(g)].fixed for g in r.layout))
    covered = set()
    for layer in layers:
        if layer.kind == "scale":
            covered.add(id(model.get_parameter(layer.name)))
        else:
            covered |= {id(p) for p in modules[layer.name].parameters(recurse=False)}
    other = sum(p.numel() for p in model.parameters() if id(p) not in covered)
    frozen = tuple(FrozenLeaf(path, type(modules[path]).__name__, leaves[path], macs)
                   for path, macs in leaf_macs.items())
    graph = ChannelGraph(tuple(groups), layers, input_shape, other, sum(f.macs for f in frozen), frozen, rewrites)
    if ends is None:
        return graph
    return graph, [None if g is None else new_id.get(table.find(g)) for g in ends]


def final_groups(table: GroupTable, roots: list[int], new_id: dict[int, int],
                 leaf_rank: dict[str, float]) -> list[ChannelGroup]:
    """One ChannelGroup per union-find root, named after its first producer."""
    records = table.records()
    members: dict[int, list[str]] = {r: [] for r in roots}
    producers: dict[int, list[str]] = {r: [] for r in roots}
    for g, record in enumerate(records):
        r = table.find(g)
        if r in members:
            members[r] += record.members
            producers[r] += record.producers
    order = {**leaf_rank, **{layer.name: i for i, layer in enumerate(table.layers)}}
    cuts: dict[int, set[int]] = {}
    for r in roots:
        f = records[r].follows
        if f is not None and f.kind == "range" and not records[r].fixed:
            cuts.setdefault(table.find(f.parent), set()).update((f.index, f.count))
    groups = []
    for r in roots:
        rec = records[r]
        mem = tuple(sorted(set(members[r]), key=order.get))
        prod = tuple(sorted(set(producers[r]), key=order.get))
        name = prod[0] if prod else (mem[0] if mem else rec.hint or "input")
        f = rec.follows
        # Blocks from grouped convs of different group counts may not tile the width.
        fixed = rec.fixed or (not prod and f is None) or rec.width % rec.blocks != 0
        f = None if f is None or fixed else Follow(f.kind, new_id[table.find(f.parent)], f.index, f.count)
        inner = tuple(sorted(cuts.get(r, set()) - {0, rec.width})) if not fixed else ()
        groups.append(ChannelGroup(new_id[r], name, rec.width, fixed, mem, prod, rec.blocks, f, inner))
    # Group names must be unique; two groups can only share a name if neither has producers.
    seen: dict[str, int] = {}
    for i, g in enumerate(groups):
        if g.name in seen:
            seen[g.name] += 1
            groups[i] = dataclasses.replace(g, name=f"{g.name}#{seen[g.name]}")
        else:
            seen[g.name] = 0
    return groups
