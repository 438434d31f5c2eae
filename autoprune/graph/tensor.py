"""What the tracer knows of a node's value: a :class:`ChannelTensor`, or :class:`Parts` of several.

A rule receives the channel tensors among a node's arguments and returns what the node's
output carries: one of them for an op that keeps the channels, a new one for an op that makes
channels (a conv's output is ``ChannelTensor([group])``), :class:`Parts` for an op that returns
several tensors, or None for an output without channels.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ChannelTensor:
    """A tensor's channels: their ``layout`` (group ids of the :class:`~autoprune.graph.GroupTable`,
    in order), after a flatten how many features each channel spans (``spatial``), and which
    dimension holds the channels (``dim``: 1, or the last one after a channels-last permute).

    While a view splits the channels into ``split`` runs over dimensions 1 and 2 (a channel
    shuffle), ``dim`` is -1 and ``swapped`` says whether those two dimensions have been
    transposed; ``origin`` names the node whose channels the view splits. After a shuffle,
    ``perm`` gives the position of each channel of the layout (None: in layout order). Only the
    built-in rules that follow reordered channels see such a tensor; any other rule, a user's
    included, gets it with its groups fixed and ``perm`` None.
    """

    layout: list[int]
    spatial: int = 1
    dim: int = 1
    split: int = 0
    swapped: bool = False
    perm: tuple[int, ...] | None = None
    origin: str | None = None


class Parts(list):
    """The channel tensors of a node that returns several (``chunk``, ``split``), in order."""
