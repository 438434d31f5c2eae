"""Trace a model into channel groups: the sets of layers whose channel counts must be equal.

:func:`trace` returns a :class:`ChannelGraph`: the :class:`ChannelGroup` s, one per channel
dimension that can be pruned as a unit, and the :class:`Layer` s whose parameters depend on
them. Tracing uses :mod:`torch.fx`; one shape propagation gives every layer's spatial size,
which is all the cost model needs. Each fx node is handled by a *rule* looked up by module
type, function or tensor-method name; :func:`register_rule` adds rules for a model's own
modules and functions.

A submodule that fx cannot trace (control flow on a tensor's value), or in which the tracer
meets an op it has no rule for, becomes a :class:`FrozenLeaf`: it runs as one opaque step,
its input and output channels are fixed, its MACs are measured once and counted as a
constant, and the rest of the model is searched as usual. The smallest such submodule is
frozen. A model whose own ``forward`` cannot be traced (a whole detector, which iterates its
list of images and runs non-maximum suppression) is traced in parts: every submodule it calls
with one tensor, as a model of its own, joined into one graph with fixed channels where the
parts meet. What cannot be handled that way (an unsupported op in the model's own
``forward`` with no part to search, or a model with nothing left to search) raises
:class:`~autoprune.errors.TraceError` naming the node and module, rather than producing a
silently wrong model.

Where to look:

- :mod:`.result`: what a trace returns (ChannelGraph, ChannelGroup, Layer, Follow, Rewrite,
  FrozenLeaf);
- :mod:`.tracer`: :func:`trace` and the walk over the fx graph, which hands every node to a
  rule; :mod:`.parts`: a model whose own forward cannot be traced, searched through its parts;
  :mod:`.fxtrace`: the fx graph with shapes, frozen leaves; :mod:`.tracers`: the fx tracers that
  record it; :mod:`.assemble`: the finished table as a ChannelGraph;
- :mod:`.table`: the :class:`GroupTable` rules work through (new group, union, fix, members,
  producers, layers, rewrites, follows), one :class:`GroupRecord` per group;
  :mod:`.tensor`: the :class:`ChannelTensor` a rule receives and returns;
- :mod:`.registry`: :func:`register_rule`, :func:`unregister_rule` and the lookup;
- :mod:`.rules`: the built-in rules by family (layers, pointwise, reshapes, cuts);
- :mod:`.follow`: groups that follow another (chunk parts, tiles, ranges);
  :mod:`.rewrites`: shuffled channels and cuts at constant positions that surgery rewrites.
"""

from autoprune.graph.follow import follow_indices, follow_widths, range_kept
from autoprune.graph.fxtrace import fx_graph_module
from autoprune.graph.registry import register_rule, unregister_rule
from autoprune.graph.result import ChannelGraph, ChannelGroup, Follow, FrozenLeaf, Layer, Rewrite
from autoprune.graph.rewrites import in_positions
from autoprune.graph.rules.pointwise import passthrough, spatial_reduce
from autoprune.graph.table import GroupRecord, GroupTable, Handler
from autoprune.graph.tensor import ChannelTensor, Parts
from autoprune.graph.tracer import MAX_FROZEN_LEAVES, trace

__all__ = [
    "MAX_FROZEN_LEAVES", "ChannelGraph", "ChannelGroup", "ChannelTensor", "Follow", "FrozenLeaf", "GroupRecord",
    "GroupTable", "Handler", "Layer", "Parts", "Rewrite", "follow_indices", "follow_widths", "fx_graph_module",
    "in_positions", "passthrough", "range_kept", "register_rule", "spatial_reduce", "trace", "unregister_rule",
]
