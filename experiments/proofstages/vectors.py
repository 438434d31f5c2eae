"""Width vectors on a budget that differ on purpose: lopsided allocations for the v2 tau test.

A profile gives every free group a weight, in network order (the space's order); the vector is
each group at the largest allowed width not above ``scale × weight × its original width``, with
the largest scale that meets the budget. A uniform multiplier is the flat profile.
"""

from __future__ import annotations

import numpy as np

from autoprune.budget import Limits, floor_index, repair


def profile(shape: str, strength: float, groups: int) -> list[float]:
    """Weights of ``groups`` groups: ``early-heavy`` falls from ``strength`` to 1 along the network,
    ``late-heavy`` rises from 1 to ``strength``, ``bottleneck`` keeps the middle third at ``strength``
    (below 1: a narrow waist) and the rest at 1."""
    x = np.linspace(0.0, 1.0, groups) if groups > 1 else np.zeros(1)
    if shape == "early-heavy":
        return list(strength ** (1.0 - x))
    if shape == "late-heavy":
        return list(strength ** x)
    if shape == "bottleneck":
        return [strength if 1 / 3 <= v <= 2 / 3 else 1.0 for v in x]
    raise ValueError(f"unknown profile '{shape}' (early-heavy, late-heavy, bottleneck)")


def shaped(space, weights, max_macs: int) -> tuple[int, ...]:
    """The widest vector of the profile ``weights`` within ``max_macs`` (bisection on the scale:
    MACs only grow with it); the narrowest network when even the smallest scale does not fit."""
    top = space.max_widths()
    peak = max(weights)

    def at(scale: float) -> tuple[int, ...]:
        return tuple(c[floor_index(c, min(1.0, scale * w / peak) * t)] for c, w, t in zip(space.choices, weights, top))

    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if Limits(max_macs).allows(space, at(mid)) else (lo, mid)
    return at(lo)


def lopsided(space, max_macs: int, shapes: dict) -> list[tuple[str, tuple[int, ...]]]:
    """(label, widths) for every shape and strength of ``shapes`` ({"early-heavy": [2.0, 4.0], ...})."""
    return [(f"{shape} {s:g}", shaped(space, profile(shape, s, len(space.choices)), max_macs))
            for shape, strengths in shapes.items() for s in strengths]


def tau_set(space, max_macs: int, winners: list[tuple[str, tuple[int, ...]]], shapes: dict, total: int,
            seed: int = 1) -> list[tuple[str, tuple[int, ...]]]:
    """The v2 tau vectors, distinct: the winners, then the lopsided allocations, then seeded random
    grid points repaired onto the budget until there are ``total`` (none when already as many)."""
    out, seen = [], set()
    for label, w in [*winners, *lopsided(space, max_macs, shapes)]:
        if tuple(w) not in seen:
            seen.add(tuple(w))
            out.append((label, tuple(w)))
    rng = np.random.default_rng(seed)
    for _ in range(1000 * total):
        if len(out) >= total:
            break
        w = repair(space, space.sample(rng), Limits(max_macs), rng=rng)
        if w not in seen:
            seen.add(w)
            out.append(("random", w))
    return out
