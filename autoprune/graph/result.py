"""What a trace returns: a :class:`ChannelGraph` of channel groups and the layers that depend on them.

A :class:`ChannelGroup` is one channel dimension that can be pruned as a unit: the output of a
conv or linear layer together with everything that must match it (its BatchNorm, activations,
pooling, every branch that meets it at a residual add, the input and output of a depthwise
conv). Concatenation (DenseNet) is kept as a *layout*: the ordered list of groups that make up
a tensor's channels, so that a consumer slices its input with the right offsets.

These are plain frozen dataclasses: the cost model, the search space and surgery read them and
never see the tracer.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Follow:
    """How a group's channels derive from another group's, its ``parent``.

    ``part``: run ``index`` of ``count`` equal runs of the parent (a ``chunk``); the parent is
    cut into blocks so that every run keeps as many channels. ``tile``: ``count`` copies of
    the parent one after the other (a single group added to a concatenation of copies of one
    group, as in GhostNet). ``repeat``: each channel of the parent ``count`` times in a row
    (the output of a depthwise conv with a channel multiplier). ``range``: the parent's
    channels ``index`` to ``count`` (exclusive), cut out of a reordered tensor (see
    :class:`Rewrite`); the parent keeps ``w * x // n`` of its first ``x`` channels at width
    ``w`` of ``n`` (:func:`~autoprune.graph.range_kept`), so every range keeps a number of
    channels that its parent's width decides.
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
    parent's, as :func:`~autoprune.graph.follow_widths` and
    :func:`~autoprune.graph.follow_indices` derive them. A group that ranges follow is
    ``cuts`` into segments at their ends; each segment keeps the number of channels
    :func:`~autoprune.graph.range_kept` gives it.
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
    for norms and depthwise convs, whose output layout equals their input layout; a depthwise
    conv with a channel multiplier has an ``out_group`` that ``repeat`` s its input). For a
    linear layer after a flatten, every input channel spans ``spatial`` features.
    ``out_positions`` is the number of output positions (H×W for a 2-d conv; for a
    ``transposed`` conv, which scatters every input position, its input positions), ``kernel``
    the kernel volume, ``groups`` the groups of a grouped (not depthwise) conv, which pruning keeps.
    A transposed conv's weight holds its input channels first.
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
    transposed: bool = False


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
    count and MACs that no width affects (``other_macs``: those of the ``frozen`` leaves), and
    the ``mode`` (``eval`` or ``train``) whose forward was traced."""

    groups: tuple[ChannelGroup, ...]
    layers: tuple[Layer, ...]
    input_shape: tuple[int, ...]
    other_params: int
    other_macs: int = 0
    frozen: tuple[FrozenLeaf, ...] = ()
    rewrites: tuple[Rewrite, ...] = ()
    mode: str = field(default="eval", compare=False)  # the mode traced in, not part of the structure
