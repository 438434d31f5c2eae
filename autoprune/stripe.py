"""Stripe-wise pruning (Meng et al., "Pruning Filter in Filter", NeurIPS 2020).

A K×K filter is K·K *stripes*: 1×1 filters over all input channels, one per kernel position.
Stripe pruning removes stripes, so every filter keeps its own shape. A *stripe mask* is one
boolean tensor of shape (out_channels, K_h, K_w) per prunable conv, keyed by the layer's
traced name. Prunable means a 2-d conv with a kernel larger than 1×1, one group and zero
padding; every other layer (1×1, grouped and depthwise convs, linear layers) is left whole
and listed by :func:`stripe_layers` with the reason.

Structure, cost and export live here, as for channel widths:

* A filter that keeps no stripe is a pruned channel (:func:`kept_channels`): its output
  channel goes, with its BatchNorm channel and the consumers' input channels, as in channel
  pruning. The channel goes whole, shift included: the conv's bias and the BatchNorm's
  ``beta - mean·gamma/sqrt(var)`` are dropped, not folded into the consumers (a constant
  map fed to a zero-padded conv is not a constant at the borders, so no bias could carry it
  exactly); Meng et al.'s code zeroes the BatchNorm of such filters in the same way. In a
  group that several layers produce (a residual stage) a channel goes only when its filter
  is empty in every producer, and fixed groups keep every channel.
* :func:`stripe_macs` and :func:`stripe_params` are pure functions of the traced graph and
  the masks, removal included; the tests hold them equal to a hook count of the exported model.
* :func:`export_stripes` removes those channels (:func:`autoprune.surgery.slice_channels`),
  then turns each masked conv into a :class:`StripeConv2d`: the sum over kept positions
  (i, j) of a 1×1 conv over the input channels, for the filters that keep that stripe,
  applied to the input shifted by (i, j). A filter with no stripe that had to stay (its
  channel is produced elsewhere too) outputs its bias, zero without one.
* :func:`masked_copy` is the reference at full size: pruned stripes zeroed, removed
  channels zeroed through their whole group (:func:`autoprune.surgery.zero_channels`).
* :class:`FilterSkeleton` is the paper's learnable scalar per stripe, multiplied into the
  weights through ``torch.nn.utils.parametrize`` (the conv stays an ``nn.Conv2d``).
* :func:`budget_mask` keeps the stripes of largest |FS| so that the MACs meet a budget exactly:
  at most the budget, and the next stripe in that order would exceed it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from autoprune.cost import layer_macs, layer_params
from autoprune.errors import ArchError, BudgetError
from autoprune.graph import ChannelGraph
from autoprune.surgery import slice_channels, zero_channels

__all__ = [
    "FilterSkeleton", "StripeConv2d", "StripeLayers", "budget_mask", "decode_masks", "encode_masks", "export_stripes",
    "fold_skeleton", "full_masks", "insert_skeleton", "kept_channels", "masked_copy", "skeleton_penalty", "skeleton_values",
    "stripe_layers", "stripe_macs", "stripe_params",
]


@dataclass(frozen=True)
class StripeLayers:
    """Which traced layers stripes can be pruned in: ``shapes`` maps each prunable conv to its
    mask shape (out_channels, K_h, K_w); ``skipped`` maps every other conv to the reason."""

    shapes: dict[str, tuple[int, int, int]]
    skipped: dict[str, str]


def stripe_layers(model: nn.Module, graph: ChannelGraph) -> StripeLayers:
    """The convs of ``model`` whose stripes can be pruned, and why each other conv is not."""
    shapes, skipped = {}, {}
    for layer in graph.layers:
        if layer.kind != "conv":
            continue
        m = model.get_submodule(layer.name)
        reason = None
        if not isinstance(m, nn.Conv2d):
            reason = f"{type(m).__name__}, not Conv2d"
        elif layer.depthwise:
            reason = "depthwise conv"
        elif m.groups > 1:
            reason = f"grouped conv ({m.groups} groups)"
        elif m.kernel_size == (1, 1):
            reason = "1x1 conv: a single stripe"
        elif isinstance(m.padding, str) or m.padding_mode != "zeros":
            reason = f"padding {m.padding!r} ({m.padding_mode})"
        if reason is None:
            shapes[layer.name] = (m.out_channels, *m.kernel_size)
        else:
            skipped[layer.name] = reason
    return StripeLayers(shapes, skipped)


def full_masks(layers: StripeLayers) -> dict[str, torch.Tensor]:
    """Every stripe kept: the unpruned model."""
    return {name: torch.ones(shape, dtype=torch.bool) for name, shape in layers.shapes.items()}


# -- filters that keep no stripe --------------------------------------------------------------

def kept_channels(graph: ChannelGraph, masks: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Sorted indices of the channels each group keeps once filters with no stripe are removed.

    A channel goes only when nothing produces it: its group is free (not fixed, one block,
    no other group derived from it or it from another), every producer of the group is a
    masked conv, and each of their filters for that channel keeps no stripe. A group that
    would lose every channel keeps its first, so that the model stays a model (that channel
    then carries its BatchNorm's constant).
    """
    out = {}
    # A group another derives its channels from, or that derives its own from another (chunk
    # parts, shuffles, tiles), keeps them all: removing some would break the derivation.
    linked = {g.id for g in graph.groups if g.follows is not None}
    linked |= {g.follows.parent for g in graph.groups if g.follows is not None}
    for g in graph.groups:
        out[g.id] = torch.arange(g.width)
        if (g.fixed or g.blocks > 1 or g.id in linked or not g.producers
                or not all(p in masks for p in g.producers)):
            continue
        alive = torch.zeros(g.width, dtype=torch.bool)
        for p in g.producers:
            alive |= masks[p].detach().cpu().flatten(1).any(1)
        if not alive.any():
            alive[0] = True
        out[g.id] = alive.nonzero().flatten()
    return out


def _kept_widths(graph: ChannelGraph, masks: dict[str, torch.Tensor]) -> dict[int, int]:
    return {gid: len(idx) for gid, idx in kept_channels(graph, masks).items()}


# -- cost ----------------------------------------------------------------------------------

def _stripe_cost(layer, widths) -> int:
    """MACs of one kept stripe: one multiply-accumulate per input channel and output position."""
    return layer.out_positions * sum(widths[g] for g in layer.in_layout)


def stripe_macs(graph: ChannelGraph, masks: dict[str, torch.Tensor]) -> int:
    """Conv/Linear MACs of the model with the stripes of ``masks`` kept (batch 1), the
    channels of filters with no stripe removed (:func:`kept_channels`)."""
    widths = _kept_widths(graph, masks)
    total = graph.other_macs
    for layer in graph.layers:
        if layer.name in masks:
            total += _stripe_cost(layer, widths) * int(masks[layer.name].sum())
        else:
            total += int(layer_macs(layer, widths))
    return total


def stripe_params(graph: ChannelGraph, masks: dict[str, torch.Tensor], bias: dict[str, bool] | None = None) -> int:
    """Parameters of the stripe-pruned model: kept stripes (plus biases of kept filters) in
    masked convs, every other layer at the widths left by :func:`kept_channels`. ``bias``
    says which masked convs have a bias (default: the trace's)."""
    widths = _kept_widths(graph, masks)
    total = graph.other_params
    for layer in graph.layers:
        if layer.name in masks:
            has_bias = layer.bias if bias is None else bias[layer.name]
            total += (sum(widths[g] for g in layer.in_layout) * int(masks[layer.name].sum())
                      + (widths[layer.out_group] if has_bias else 0))
        else:
            total += int(layer_params(layer, widths))
    return total


# -- the exact budget ------------------------------------------------------------------------

def budget_mask(graph: ChannelGraph, scores: dict[str, torch.Tensor], max_macs: int,
                floor: float = 0.0) -> tuple[dict[str, torch.Tensor], dict]:
    """Keep the stripes of largest ``|scores|`` whose MACs fit ``max_macs``; (masks, info).

    Stripes are ranked by magnitude over all layers (ties by position, so the result is
    deterministic); the longest prefix of that order whose :func:`stripe_macs` fits the
    budget is found by bisection (MACs never fall as a stripe is added, removed channels
    included). The result is at most ``max_macs`` and the next stripe would exceed it, unless
    ``floor`` binds: stripes with magnitude ≤ ``floor`` (the paper's fixed threshold) are
    pruned whatever the budget. BudgetError when the unprunable layers alone exceed it.
    """
    layers = [layer for layer in graph.layers if layer.name in scores]
    shapes = [scores[layer.name].shape for layer in layers]
    values = torch.cat([scores[layer.name].detach().double().abs().flatten().cpu() for layer in layers])
    order = torch.sort(-values, stable=True).indices

    def prefix(k: int) -> dict[str, torch.Tensor]:
        keep = torch.zeros(len(values), dtype=torch.bool)
        keep[order[:k]] = True
        parts = torch.split(keep, [s.numel() for s in shapes])
        return {layer.name: part.view(shape).clone() for layer, part, shape in zip(layers, parts, shapes)}

    fixed = stripe_macs(graph, prefix(0))
    if fixed > max_macs:
        raise BudgetError(f"the layers stripes cannot be pruned in need {fixed} MACs, above the budget of "
                          f"{int(max_macs)}")
    fits = bisect.bisect_right(range(len(values) + 1), int(max_macs), key=lambda k: stripe_macs(graph, prefix(k))) - 1
    by_floor = int((values > floor).sum())
    kept_n = min(fits, by_floor)
    masks = prefix(kept_n)
    threshold = float(values[order[kept_n]]) if kept_n < len(values) else 0.0
    info = {"stripes": len(values), "kept": kept_n, "threshold": threshold, "floor": floor,
            "floor_bound": by_floor < fits, "macs": stripe_macs(graph, masks), "max_macs": int(max_macs),
            "removed_channels": sum(g.width - w for g, w in zip(graph.groups, _kept_widths(graph, masks).values()))}
    return masks, info


# -- the Filter Skeleton ---------------------------------------------------------------------

class FilterSkeleton(nn.Module):
    """One learnable scalar per stripe of a conv weight, multiplied into it (starts at 1)."""

    def __init__(self, out_channels: int, kh: int, kw: int):
        super().__init__()
        self.fs = nn.Parameter(torch.ones(out_channels, 1, kh, kw))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.fs


def insert_skeleton(model: nn.Module, layers: StripeLayers) -> nn.Module:
    """Put a :class:`FilterSkeleton` on the weight of every prunable conv of ``model``, in place."""
    for name, (out, kh, kw) in layers.shapes.items():
        m = model.get_submodule(name)
        fs = FilterSkeleton(out, kh, kw).to(m.weight.device)
        parametrize.register_parametrization(m, "weight", fs)
    return model


def _skeleton(m: nn.Module) -> FilterSkeleton | None:
    if not parametrize.is_parametrized(m, "weight"):
        return None
    return next((p for p in m.parametrizations.weight if isinstance(p, FilterSkeleton)), None)


def skeleton_values(model: nn.Module) -> dict[str, torch.Tensor]:
    """The FS of every conv that has one, as (out_channels, K_h, K_w) tensors."""
    out = {}
    for name, m in model.named_modules():
        fs = _skeleton(m)
        if fs is not None:
            out[name] = fs.fs.detach()[:, 0].clone()
    return out


def skeleton_penalty(model: nn.Module) -> torch.Tensor:
    """Σ|FS| over the model: the L1 term of the training loss."""
    terms = [fs.fs.abs().sum() for m in model.modules() if (fs := _skeleton(m)) is not None]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def fold_skeleton(model: nn.Module) -> nn.Module:
    """Multiply every FS into its weight for good and remove the parametrisation, in place."""
    for m in model.modules():
        if _skeleton(m) is not None:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model


def masked_copy(model: nn.Module, graph: ChannelGraph, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` at full size whose pruned stripes are zero and whose removed
    channels (:func:`kept_channels`) output zero: what :func:`export_stripes` computes."""
    out = zero_channels(model, graph, kept_channels(graph, masks))
    with torch.no_grad():
        for name, mask in masks.items():
            w = out.get_submodule(name).weight
            w.mul_(mask[:, None].to(w.dtype).to(w.device))
    return out


# -- the exported model ----------------------------------------------------------------------

class StripeConv2d(nn.Module):
    """A stripe-pruned Conv2d: Σ over kept positions (i, j) of a 1×1 conv, for the filters that
    keep stripe (i, j), of the zero-padded input shifted by (i, j) and strided like the conv.

    ``mask`` (out_channels, K_h, K_w) is kept as a buffer, so a state dict says what was pruned.
    Only kept stripes are parameters; a filter with none outputs its bias (zero without one):
    :func:`export_stripes` only leaves such a filter where another layer produces its channel.
    """

    def __init__(self, in_channels: int, mask: torch.Tensor, *, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                 bias: bool = False):
        super().__init__()
        mask = mask.to(torch.bool).cpu()
        self.in_channels, self.out_channels = in_channels, mask.shape[0]
        self.kernel_size = tuple(mask.shape[1:])
        self.stride, self.padding, self.dilation = tuple(stride), tuple(padding), tuple(dilation)
        self.register_buffer("mask", mask.clone())
        self.positions = [(i, j) for i in range(mask.shape[1]) for j in range(mask.shape[2]) if mask[:, i, j].any()]
        self.convs = nn.ModuleList(nn.Conv2d(in_channels, int(mask[:, i, j].sum()), 1, bias=False)
                                   for i, j in self.positions)
        for k, (i, j) in enumerate(self.positions):
            self.register_buffer(f"filters{k}", mask[:, i, j].nonzero().flatten(), persistent=False)
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if bias else None

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: torch.Tensor) -> "StripeConv2d":
        """The stripes of ``conv`` that ``mask`` keeps, with its weights."""
        out = cls(conv.in_channels, mask, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                  bias=conv.bias is not None).to(conv.weight.device, conv.weight.dtype)
        with torch.no_grad():
            for k, (i, j) in enumerate(out.positions):
                idx = getattr(out, f"filters{k}")
                out.convs[k].weight.copy_(conv.weight[idx, :, i, j][:, :, None, None])
            if conv.bias is not None:
                out.bias.copy_(conv.bias)
        return out

    def reset_parameters(self) -> None:
        for c in self.convs:  # the dense conv's init: fan-in is in_channels·K_h·K_w
            nn.init.kaiming_uniform_(c.weight, a=5 ** 0.5)
            c.weight.data.mul_((1.0 / (self.kernel_size[0] * self.kernel_size[1])) ** 0.5)
        if self.bias is not None:
            bound = 1 / (self.in_channels * self.kernel_size[0] * self.kernel_size[1]) ** 0.5
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (ph, pw), (sh, sw), (dh, dw) = self.padding, self.stride, self.dilation
        kh, kw = self.kernel_size
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        ho = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1
        wo = (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
        out = x.new_zeros(x.shape[0], self.out_channels, ho, wo)
        for k, (i, j) in enumerate(self.positions):
            shifted = x[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh, j * dw: j * dw + sw * (wo - 1) + 1: sw]
            # in place: an out-of-place index_add copies the whole output once per kernel position
            out.index_add_(1, getattr(self, f"filters{k}"), self.convs[k](shifted))
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1, 1)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stripes={int(self.mask.sum())}/{self.mask.numel()}, stride={self.stride}, padding={self.padding}")


def export_stripes(model: nn.Module, graph: ChannelGraph, masks: dict[str, torch.Tensor], *,
                   fresh: bool = False) -> nn.Module:
    """A copy of ``model`` (traced as ``graph``) without the channels of filters that keep no
    stripe (:func:`kept_channels`), and with every conv in ``masks`` replaced by its
    :class:`StripeConv2d` over the filters left.

    The copy computes what :func:`masked_copy` computes (weights inherited); with
    ``fresh=True`` the stripe convs are re-initialised, for training from scratch.
    """
    kept = kept_channels(graph, masks)
    out = slice_channels(model, graph, kept)
    out_group = {layer.name: layer.out_group for layer in graph.layers}
    for name, mask in masks.items():
        conv = out.get_submodule(name)
        stripe = StripeConv2d.from_conv(conv, mask[kept[out_group[name]].to(mask.device)])
        if fresh:
            stripe.reset_parameters()
        parent, _, attr = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, attr, stripe)
    return out


# -- the masks as data -----------------------------------------------------------------------

def encode_masks(masks: dict[str, torch.Tensor]) -> dict[str, dict]:
    """JSON form: per layer, the mask shape and its flattened bits as a hexadecimal string."""
    out = {}
    for name, mask in masks.items():
        bits = "".join("1" if b else "0" for b in mask.flatten().tolist())
        out[name] = {"shape": list(mask.shape), "kept": int(mask.sum()), "bits": format(int(bits or "0", 2), "x")}
    return out


def decode_masks(data, source: str = "stripes") -> dict[str, torch.Tensor]:
    """Masks from :func:`encode_masks`' form; ArchError naming the bad entry."""
    if not isinstance(data, dict):
        raise ArchError(f"{source}: expected an object of layer name -> mask")
    masks = {}
    for name, entry in data.items():
        try:
            shape = [int(s) for s in entry["shape"]]
            n = shape[0] * shape[1] * shape[2]
            bits = format(int(entry["bits"], 16), "b").zfill(n)
        except (KeyError, TypeError, ValueError, IndexError):
            raise ArchError(f"{source}['{name}']: needs 'shape' [out, kh, kw] and hexadecimal 'bits'") from None
        if len(bits) != n or len(shape) != 3:
            raise ArchError(f"{source}['{name}']: 'bits' do not fit shape {shape}")
        mask = torch.tensor([c == "1" for c in bits], dtype=torch.bool).view(shape)
        if "kept" in entry and entry["kept"] != int(mask.sum()):
            raise ArchError(f"{source}['{name}']: 'kept' is {entry['kept']} but 'bits' keep {int(mask.sum())}")
        masks[name] = mask
    return masks
