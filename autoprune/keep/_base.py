"""The keep rule interface, its registry, and what the rules share.

A keep rule gives every channel of every group a score; a group at width ``k`` keeps its
``k`` highest. :class:`KeepRule` is the whole interface; :class:`DataRule` adds the seeded
sample of training images, and the cache of what was measured on it, for the rules that
score feature maps rather than weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Sequence

import torch
import torch.nn as nn

from autoprune.checks import register_named
from autoprune.errors import KeepRuleError
from autoprune.files import torch_save
from autoprune.graph import ChannelGraph, follow_indices, range_kept

SCORES_FORMAT = "autoprune.scores/1"


class KeepRule:
    """Which channels of each group survive pruning: a score per channel, the highest kept.

    A rule is resolved once from its name (:func:`get_keep_rule`) and handed around as this
    object. Surgery (:func:`autoprune.surgery.materialise`) calls :meth:`keep_indices` for
    every candidate, then :meth:`refit` on the sliced copy. The evaluator and the one-shot
    producers call :meth:`fit` once per trained base first: a rule that reads the weights
    returns itself, a rule scored on training data (:class:`DataRule`) measures its sample.

    Subclasses set ``name`` and ``summary`` and implement :meth:`scores`. Register one with
    :func:`register_keep_rule`, and it is ``--keep NAME`` on the command line and
    ``EvalConfig(keep="NAME")`` in Python:

    >>> import torch
    >>> from autoprune.graph import trace
    >>> from autoprune.models import create_model
    >>> class Last(KeepRule):
    ...     name, summary = "last", "the last channels of every group"
    ...     def scores(self, model, graph, *, seed=0):
    ...         return {g.id: torch.arange(g.width, dtype=torch.float64) for g in graph.groups}
    >>> model = create_model("resnet20")
    >>> graph = trace(model, (3, 32, 32))
    >>> full = [g.width for g in graph.groups]
    >>> full[1] = 4
    >>> Last().keep_indices(model, graph, full)[1].tolist()
    [12, 13, 14, 15]
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Scored on feature maps of training images: fit() needs the data.
    needs_data: ClassVar[bool] = False

    def fit(self, model: nn.Module, graph: ChannelGraph, data=None, *, seed: int = 0, device="cpu",
            cache: ScoreCache | None = None) -> KeepRule:
        """This rule ready to score ``model``, once per trained base before any :meth:`scores`.
        A rule that reads the weights alone needs nothing and returns itself."""
        return self

    def scores(self, model: nn.Module, graph: ChannelGraph, *, seed: int = 0) -> dict[int, torch.Tensor]:
        """A float64 score per channel for every group id of ``graph``; higher is kept first.

        Averaged, not summed, over a group's layers, so that scores compare across groups (a
        residual stage with four producers must not outrank every single conv in a global
        ranking).
        """
        raise NotImplementedError

    def keep_indices(self, model: nn.Module, graph: ChannelGraph, full_widths: Sequence[int], *,
                     seed: int = 0) -> dict[int, torch.Tensor]:
        """Sorted indices of the channels each group keeps, the top ``full_widths[g]`` by score;
        a group that follows another keeps what its parent's choice implies."""
        scores = self.scores(model, graph, seed=seed)
        out = {}
        for g in graph.groups:
            if g.follows is not None:
                continue
            k = int(full_widths[g.id])
            if k >= g.width:
                out[g.id] = torch.arange(g.width)
            elif g.cuts:
                out[g.id] = _top_in_segments(scores[g.id], k, g.cuts)
            else:
                out[g.id] = _top(scores[g.id], k, g.blocks)
        return follow_indices(graph, out)

    def refit(self, pruned: nn.Module, model: nn.Module, graph: ChannelGraph, kept: dict[int, torch.Tensor]) -> None:
        """Adjust the weights of ``pruned``, ``model`` sliced to ``kept``, in place; called by
        surgery right after slicing. Most rules leave the inherited weights as they are."""

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"<keep rule '{self.name}'>"


@dataclass(frozen=True, eq=False)
class Sampled:
    """What a :class:`DataRule` measured on its sample of one base: a score per channel for
    every group id and, for ``reconstruct``, the second moment ``E[x xᵀ]`` of each consuming
    layer's input patches by layer name (from which surgery refits the kept weights)."""

    by_group: dict[int, torch.Tensor]
    moments: dict[str, torch.Tensor] = field(default_factory=dict)


class DataRule(KeepRule):
    """A keep rule scored on ``images`` seeded, un-augmented training images.

    :meth:`fit` measures the sample once per base (:meth:`sample`, which subclasses
    implement) and returns a copy of the rule that holds it; :meth:`scores` reads it from
    there. ``data`` is anything with the ``batches`` of :class:`autoprune.data.Dataset`.
    """

    needs_data = True

    def __init__(self, *, images: int = 256, batch_size: int = 64):
        self.images = int(images)
        self.batch_size = int(batch_size)
        self.sampled: Sampled | None = None

    def sample(self, model: nn.Module, graph: ChannelGraph, data, *, seed: int, device) -> Sampled:
        """Measure ``model`` on the seeded sample of ``data`` (:func:`sample_batches`)."""
        raise NotImplementedError

    def fit(self, model, graph, data=None, *, seed=0, device="cpu", cache=None) -> DataRule:
        """A copy of this rule holding what it measured on ``model``. With a ``cache``, that is
        read from its file when it exists and written there otherwise (a folder that cannot be
        written only costs a recomputation)."""
        if data is None:
            raise KeepRuleError(f"keep rule '{self.name}' scores channels on training data, and none was given")
        file = cache.file(self.name, seed, self.images) if cache is not None else None
        sampled = _read_cached(file, self.name) if file is not None else None
        if sampled is None:
            sampled = self.sample(model, graph, data, seed=seed, device=device)
            if file is not None:
                _write_cached(file, self.name, sampled)
        fitted = copy.copy(self)
        fitted.sampled = sampled
        return fitted

    def scores(self, model, graph, *, seed=0):
        if self.sampled is None:
            raise KeepRuleError(f"keep rule '{self.name}' scores channels on training data: "
                                "fit it to the base first (rule.fit(model, graph, data))")
        if set(self.sampled.by_group) != {g.id for g in graph.groups}:
            raise KeepRuleError(f"keep rule '{self.name}' was fitted to a model with other channel groups")
        return self.sampled.by_group


@dataclass(frozen=True)
class ScoreCache:
    """Where a :class:`DataRule`'s measurements of one base checkpoint are kept: a folder
    beside it (``<checkpoint>.scores/``), and the checkpoint's hash. A file is keyed by the
    hash, the rule, the seed and the number of images."""

    folder: Path
    key: str

    @classmethod
    def beside(cls, checkpoint, sha1: str) -> ScoreCache:
        checkpoint = Path(checkpoint)
        return cls(checkpoint.parent / f"{checkpoint.name}.scores", str(sha1))

    def file(self, rule: str, seed: int, images: int) -> Path:
        return self.folder / f"{rule}-{self.key[:16]}-seed{seed}-n{images}.pt"


def _read_cached(file: Path, rule: str) -> Sampled | None:
    if not Path(file).is_file():
        return None
    stored = torch.load(file, map_location="cpu", weights_only=True)
    if stored.get("format") != SCORES_FORMAT or stored.get("rule") != rule:
        return None
    return Sampled(stored["by_group"], stored.get("moments", {}))


def _write_cached(file: Path, rule: str, sampled: Sampled) -> None:
    payload = {"format": SCORES_FORMAT, "rule": rule, "by_group": sampled.by_group,
               "moments": {k: v.float() for k, v in sampled.moments.items()}}
    try:
        torch_save(payload, file)
    except OSError:
        pass  # a read-only checkpoint directory: the scores are simply recomputed next time


# --------------------------------------------------------------------------------------------
# The registry.
# --------------------------------------------------------------------------------------------

_RULES: dict[str, type[KeepRule]] = {}


def register_keep_rule(cls: type[KeepRule]) -> type[KeepRule]:
    """Make ``cls`` available by its ``name`` (``--keep NAME``, ``EvalConfig(keep="NAME")``).

    Usable as a class decorator; the class is built with no arguments when its name is
    resolved. KeepRuleError when ``cls`` is not a :class:`KeepRule`, has no ``name``, or its
    name is taken by another class.
    """
    return register_named(_RULES, cls, KeepRule, error=KeepRuleError, kind="keep rule")


def unregister_keep_rule(name: str) -> None:
    """Forget the keep rule registered as ``name`` (for plug-ins that are unloaded, and tests)."""
    _RULES.pop(name, None)


def get_keep_rule(keep: str | KeepRule) -> KeepRule:
    """The keep rule named ``keep``, built; a :class:`KeepRule` passes through as it is.

    KeepRuleError naming the known rules when no rule has that name.
    """
    if isinstance(keep, KeepRule):
        return keep
    if isinstance(keep, str) and keep in _RULES:
        return _RULES[keep]()
    raise KeepRuleError(f"unknown keep rule {keep!r}; expected one of {', '.join(_RULES)}")


def list_keep_rules() -> list[str]:
    """Every registered keep rule name, built-ins first, in registration order."""
    return list(_RULES)


# --------------------------------------------------------------------------------------------
# What the rules share: the top channels, per-group pooling, the sample of training images.
# --------------------------------------------------------------------------------------------


def _top_in_segments(scores: torch.Tensor, k: int, cuts: tuple[int, ...]) -> torch.Tensor:
    """Sorted indices of the best channels of each segment between ``cuts``, as many in each
    as :func:`~autoprune.graph.range_kept` gives it at width ``k``."""
    n = len(scores)
    ends = [0, *cuts, n]
    out = []
    for a, b in zip(ends, ends[1:]):
        take = range_kept(k, n, b) - range_kept(k, n, a)
        out.append(a + torch.sort(-scores[a:b], stable=True).indices[:take])
    return torch.sort(torch.cat(out)).values


def _top(scores: torch.Tensor, k: int, blocks: int) -> torch.Tensor:
    """Sorted indices of the ``k`` best channels, ``k / blocks`` from each equal block."""
    per = scores.reshape(blocks, -1)
    # Stable sort so that ties (e.g. all-equal fresh weights) keep the first channels.
    order = torch.sort(-per, dim=1, stable=True).indices[:, :k // blocks]
    order = order + torch.arange(blocks)[:, None] * per.shape[1]
    return torch.sort(order.flatten()).values


def layout_indices(graph: ChannelGraph, layout: Sequence[int], keep: dict[int, torch.Tensor],
                   spatial: int = 1, perm: Sequence[int] | None = None) -> torch.Tensor:
    """Indices into a tensor whose channels are the concatenation of ``layout``'s groups, or,
    with ``perm``, those channels at the positions ``perm`` gives them (in position order)."""
    parts, offset = [], 0
    for gid in layout:
        parts.append(keep[gid] + offset)
        offset += graph.groups[gid].width
    idx = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
    if perm is not None:
        idx = torch.sort(torch.as_tensor(perm, dtype=torch.long, device=idx.device)[idx]).values
    if spatial > 1:  # a flattened channel spans `spatial` consecutive features
        idx = (idx[:, None] * spatial + torch.arange(spatial)[None, :]).flatten()
    return idx


def pool_layer_scores(graph: ChannelGraph, per_layer: dict[str, torch.Tensor],
                      layouts: dict[str, tuple[int, ...]]) -> dict[int, torch.Tensor]:
    """Per-group scores from per-layer channel scores laid out as ``layouts[name]``.

    Each layer's slice for a group is divided by its mean, so that the layers of a residual
    group weigh alike, and the slices are averaged over the group's layers (as ``l1`` does).
    A group that no layer scored keeps zeros (every channel ties).
    """
    scores = {g.id: torch.zeros(g.width, dtype=torch.float64) for g in graph.groups}
    counts = {g.id: 0 for g in graph.groups}
    # A layer's input after a shuffle holds its layout's channels at the positions in_perm gives.
    permuted = {layer.name: layer for layer in graph.layers if layer.in_perm is not None}
    for name, values in per_layer.items():
        if name in permuted and tuple(layouts[name]) == permuted[name].in_layout:
            values = values[list(permuted[name].in_perm)]
        offset = 0
        for gid in layouts[name]:
            n = graph.groups[gid].width
            part = values[offset:offset + n].double()
            scores[gid] += part / part.mean().clamp_min(1e-12)
            counts[gid] += 1
            offset += n
    return {gid: s / max(counts[gid], 1) for gid, s in scores.items()}


def sample_batches(data, *, seed: int, images: int, batch_size: int):
    """The fixed sample: un-augmented training batches in a seeded order, ``images`` in all.
    ``data``: a dataset, or a :class:`~autoprune.task.Task` (the model inputs of its batches)."""
    if hasattr(data, "inputs"):  # a task
        steps = -(-images // batch_size)
        batches = (data.inputs(b) for b in data.batches(batch_size=batch_size, seed=seed, steps=steps, device="cpu",
                                                        augment=False))
    else:
        gen = torch.Generator().manual_seed(seed)
        batches = (xb for xb, _ in data.batches("train", batch_size=batch_size, train=True, generator=gen,
                                                augment=False))
    seen = 0
    for xb in batches:
        xb = xb[:images - seen]
        yield xb
        seen += len(xb)
        if seen >= images:
            return


def run_hooked(model: nn.Module, names, hook, batches, *, device, pre: bool) -> None:
    """Run ``model`` (eval mode, no gradient) on ``batches`` with ``hook(name, module, tensor)``
    on the layers ``names``: their input (``pre``) or their output."""
    handles = []
    for name in names:
        m = model.get_submodule(name)
        if pre:
            handles.append(m.register_forward_pre_hook(lambda mod, args, n=name: hook(n, mod, args[0])))
        else:
            handles.append(m.register_forward_hook(lambda mod, args, out, n=name: hook(n, mod, out)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for xb in batches:
                model(xb.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
