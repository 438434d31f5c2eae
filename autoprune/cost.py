"""Analytic cost of a width vector: MACs and parameters, with no forward pass.

MACs are the multiply-accumulates of Conv and Linear layers, the convention thop uses for
those layers (bias additions not counted). FLOPs, where printed, are 2 × MACs.

Both functions are pure: they read the traced layer list of the space and the widths (plus
the constant MACs and parameters of what no width affects, such as frozen leaves). The
widths may be ints, or differentiable scalars (DMCP's expected widths), in which case the
result is a differentiable scalar of the same kind.
"""

from __future__ import annotations

from typing import Sequence

import torch

from autoprune.errors import WidthError
from autoprune.space import SearchSpace


def _in_width(layer, full):
    total = 0
    for g in layer.in_layout:
        total = total + full[g]
    return total


def _per_group(cin, groups: int):
    # Widths of a grouped conv's input are multiples of its groups, so integer widths divide
    # exactly; differentiable widths (DMCP) divide as reals to keep their gradient.
    return cin // groups if isinstance(cin, int) else cin / groups


def layer_macs(layer, full):
    """MACs of one traced layer, given the width of every group by id."""
    if layer.kind in ("norm", "scale"):
        return 0
    cin = _in_width(layer, full)
    if layer.kind == "linear":  # out_positions > 1 for a channels-last linear
        return layer.out_positions * cin * layer.spatial * full[layer.out_group]
    if layer.depthwise:  # one input channel per filter; with a multiplier, out_group's filters
        return layer.out_positions * layer.kernel * (cin if layer.out_group is None else full[layer.out_group])
    if layer.groups > 1:
        return layer.out_positions * layer.kernel * _per_group(cin, layer.groups) * full[layer.out_group]
    return layer.out_positions * layer.kernel * cin * full[layer.out_group]


def layer_params(layer, full):
    """Parameters (weights, biases, norm affine) of one traced layer."""
    cin = _in_width(layer, full)
    if layer.kind == "scale":
        return cin
    if layer.kind == "norm":
        return 2 * cin if layer.affine else 0
    if layer.kind == "linear":
        cout = full[layer.out_group]
        return cin * layer.spatial * cout + (cout if layer.bias else 0)
    if layer.depthwise:
        cout = cin if layer.out_group is None else full[layer.out_group]
        return layer.kernel * cout + (cout if layer.bias else 0)
    cout = full[layer.out_group]
    per_out = _per_group(cin, layer.groups)
    return layer.kernel * per_out * cout + (cout if layer.bias else 0)


def macs(space: SearchSpace, widths: Sequence):
    """Conv/Linear MACs of the model pruned to ``widths`` (one input, batch 1).

    Integer widths must be allowed ones (WidthError otherwise); tensors (DMCP's expected
    widths) are taken as they are, so that the cost stays differentiable.
    """
    full = space.full_widths(_checked(space, widths))
    total = space.graph.other_macs  # frozen leaves: fixed channels, constant MACs
    for layer in space.graph.layers:
        total = total + layer_macs(layer, full)
    return total


def params(space: SearchSpace, widths: Sequence):
    """Parameter count of the model pruned to ``widths`` (checked as in :func:`macs`)."""
    full = space.full_widths(_checked(space, widths))
    total = space.graph.other_params
    for layer in space.graph.layers:
        total = total + layer_params(layer, full)
    return total


def _checked(space: SearchSpace, widths: Sequence):
    if any(isinstance(w, torch.Tensor) for w in widths):
        if len(widths) != len(space.free):
            raise WidthError(f"width vector has {len(widths)} entries; this space has {len(space.free)} free groups")
        return widths
    return space.validate(widths)


def base_macs(space: SearchSpace) -> int:
    return macs(space, space.max_widths())


def parse_count(text: str) -> float:
    """``'120M'`` → 1.2e8, ``'1.2G'`` → 1.2e9, ``'3e8'`` → 3e8; ValueError otherwise."""
    s = str(text).strip().upper()
    scale = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}.get(s[-1:], None)
    if scale is not None:
        s = s[:-1]
    value = float(s)  # raises ValueError on junk
    return value * (scale or 1.0)


def human(n: float) -> str:
    """1234567 → '1.23M'."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"
