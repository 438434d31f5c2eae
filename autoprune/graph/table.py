"""The group table: what rules build while the tracer walks the graph.

Every channel dimension the tracer meets gets a group id. Rules join ids whose channels must
agree (:meth:`GroupTable.union`, a union-find), fix the ones that must keep their width,
record the layers whose parameters depend on them and the fx nodes surgery must rewrite.
Each id has one :class:`GroupRecord`; ids that a union joined share the record of their root,
which every method reads and writes (pass any id of a group; the table finds its root).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch.fx as fx

from autoprune.errors import TraceError
from autoprune.graph.nodes import where
from autoprune.graph.result import Follow, Layer, Rewrite
from autoprune.graph.tensor import ChannelTensor, Parts


@dataclass
class GroupRecord:
    """The state of one group id. ``parent`` is the id it was joined to (itself for a root);
    ``first_seen`` the position of the node that made it, which names and orders groups;
    ``blocks`` the equal runs it must be pruned alike in (grouped convs, group norms);
    ``members`` and ``producers`` the layers that normalise or make its channels; ``follows``
    how its channels derive from another group's (see :class:`~autoprune.graph.Follow`);
    ``hint`` a name for a group with no layer of its own."""

    parent: int
    width: int
    fixed: bool
    first_seen: int
    blocks: int = 1
    members: list[str] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    follows: Follow | None = None  # parent ids as created, resolved with find
    hint: str | None = None


class GroupTable:
    """Channel groups as a union-find, grown by the rules, plus the layers and rewrites they
    record. The walk advances :attr:`position` once per fx node.

    >>> table = GroupTable()
    >>> conv, skip = table.new_group(16), table.new_group(16)
    >>> table.union(conv, skip, node=None)  # a residual add: the same channels
    >>> table.find(skip) == table.find(conv), table.width(skip)
    (True, 16)
    >>> table.fix(skip)  # e.g. the network's output
    >>> table.is_fixed(conv)
    True
    """

    def __init__(self) -> None:
        self._records: list[GroupRecord] = []
        self._layers: list[Layer] = []
        self._rewrites: list[Rewrite] = []
        self.position = 0

    def __len__(self) -> int:
        """The number of group ids made so far (joined ones included)."""
        return len(self._records)

    # -- making and joining groups ---------------------------------------------------------
    def new_group(self, width: int, fixed: bool = False, follows: Follow | None = None,
                  hint: str | None = None) -> int:
        """A new group of ``width`` channels; its id."""
        gid = len(self._records)
        self._records.append(GroupRecord(gid, int(width), fixed, self.position, follows=follows, hint=hint))
        return gid

    def produce(self, node: fx.Node, width: int, fixed: bool = False) -> int:
        """A new group whose first producer and member is the module at ``node``."""
        out = self.new_group(width, fixed)
        self.add_producer(out, node.target)
        self.add_member(out, node.target)
        return out

    def find(self, g: int) -> int:
        """The root id of ``g``'s group."""
        records = self._records
        while records[g].parent != g:
            records[g].parent = records[records[g].parent].parent
            g = records[g].parent
        return g

    def union(self, a: int, b: int, node: fx.Node) -> None:
        """The channels of ``a`` and ``b`` are the same channels (``node`` joins them).
        TraceError if their widths differ."""
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        ra, rb = self._records[a], self._records[b]
        if ra.width != rb.width:
            raise TraceError(f"node '{node.name}' ({where(node)}) joins {ra.width} and "
                             f"{rb.width} channels; cannot couple them")
        keep, drop = (a, b) if ra.first_seen <= rb.first_seen else (b, a)
        rk, rd = self._records[keep], self._records[drop]
        rd.parent = keep
        rk.fixed = rk.fixed or rd.fixed
        rk.blocks = math.lcm(rk.blocks, rd.blocks)
        if rd.follows is not None:
            self.add_follow(keep, rd.follows)

    def add_follow(self, g: int, f: Follow) -> None:
        """``g``'s group follows ``f``. Two different rules for the same channels cannot both
        hold: then every group involved keeps its full width."""
        r = self.record(g)
        a = r.follows
        if a is None:
            r.follows = f
        elif (a.kind, a.index, a.count) != (f.kind, f.index, f.count) or self.find(a.parent) != self.find(f.parent):
            self.fix(g, a.parent, f.parent)

    # -- what rules say about a group ------------------------------------------------------
    def fix(self, *groups: int) -> None:
        """Each of ``groups`` keeps its full width."""
        for g in groups:
            self._records[self.find(g)].fixed = True

    def split_into_blocks(self, g: int, blocks: int) -> None:
        """Group ``g`` must keep the same number of channels in each of ``blocks`` equal runs."""
        r = self.record(g)
        r.blocks = math.lcm(r.blocks, blocks)

    def add_member(self, g: int, name: str) -> None:
        """The layer ``name`` (a norm, a depthwise conv) acts on ``g``'s channels."""
        self.record(g).members.append(name)

    def add_producer(self, g: int, name: str) -> None:
        """The layer ``name`` makes ``g``'s channels; the group is named after its first."""
        self.record(g).producers.append(name)

    def add_layer(self, layer: Layer) -> None:
        """A layer whose parameters depend on the widths of the groups it names."""
        self._layers.append(layer)

    def add_rewrite(self, rewrite: Rewrite) -> None:
        """An fx node whose channel arithmetic surgery must replace."""
        self._rewrites.append(rewrite)

    # -- reading ---------------------------------------------------------------------------
    def record(self, g: int) -> GroupRecord:
        """The record of ``g``'s group (its root's)."""
        return self._records[self.find(g)]

    def records(self) -> list[GroupRecord]:
        """Every id's own record, by id (a joined id's record is stale but for ``parent``)."""
        return list(self._records)

    def width(self, g: int) -> int:
        return self._records[self.find(g)].width

    def widths(self, layout: list[int]) -> list[int]:
        """The width of each group of ``layout``."""
        return [self._records[self.find(g)].width for g in layout]

    def is_fixed(self, g: int) -> bool:
        return self._records[self.find(g)].fixed

    def follows(self, g: int) -> Follow | None:
        """How ``g``'s group derives from another; its parent is an id as created (use find)."""
        return self._records[self.find(g)].follows

    def entries(self, layout: list[int]) -> list[tuple[int, int, int]]:
        """(group id, first channel, end) of each entry of ``layout``."""
        out, start = [], 0
        for g in layout:
            end = start + self._records[self.find(g)].width
            out.append((g, start, end))
            start = end
        return out

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(self._layers)

    @property
    def rewrites(self) -> tuple[Rewrite, ...]:
        return tuple(self._rewrites)

    @property
    def layer_count(self) -> int:
        return len(self._layers)


# A rule's handler: ``handler(table, node, target, inputs)`` gets the group table, the fx node,
# the rule's target (the module instance for a module rule, the function or the method name
# otherwise) and the channel tensors among the node's arguments; it returns what the node's
# output carries, or None when it carries no channels.
Handler = Callable[[GroupTable, fx.Node, Any, list[ChannelTensor]], ChannelTensor | Parts | None]
