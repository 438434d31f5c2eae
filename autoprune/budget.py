"""The MACs budget: parsing it, and mapping any width vector onto it.

A budget is a hard constraint: no candidate above it is trained or reported. Optimizers
propose freely and :func:`repair` maps each proposal into the feasible set, then grows it back
so that the budget is used (a candidate at 60 % of the allowed MACs wastes capacity that any
sensible allocation would spend).

>>> b = parse_budget("0.4")
>>> b.max_macs(1_000_000)
400000
>>> parse_budget("120M").max_macs(10**9)
120000000
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autoprune import cost
from autoprune.errors import BudgetError
from autoprune.latency import LatencyLimit, predict

_HINT = "use a ratio in (0, 1] such as 0.4, a percentage such as 40%, or MACs such as 120M, 1.2G, 3e8"


@dataclass(frozen=True)
class Budget:
    """A MACs budget, either a ratio of the base model's MACs or an absolute count."""

    value: float
    kind: str  # "ratio" | "macs"
    text: str

    def max_macs(self, base_macs: int) -> int:
        """The largest MACs a candidate may use for a base model of ``base_macs``."""
        if self.kind == "ratio":
            # The small epsilon keeps 0.4 * 1000 == 400 despite binary floating point.
            return int(math.floor(self.value * base_macs + 1e-6))
        return int(self.value)

    def ratio(self, base_macs: int) -> float:
        return self.max_macs(base_macs) / base_macs

    def to_dict(self) -> dict:
        return {"value": self.value, "kind": self.kind, "text": self.text}

    def __str__(self) -> str:
        return self.text


def parse_budget(value) -> Budget:
    """``0.4``, ``"0.4"``, ``"40%"`` → ratio; ``"120M"``, ``"1.2G"``, ``"3e8"`` → MACs.

    A plain number above 1 is read as MACs only when it is at least 1000, so that ``1.5``
    (a ratio typo) is rejected rather than read as 1.5 MACs.
    """
    if isinstance(value, Budget):
        return value
    if isinstance(value, bool):
        raise BudgetError(f"invalid budget {value!r}; {_HINT}")
    text = str(value).strip()
    try:
        if text.endswith("%"):
            ratio = float(text[:-1]) / 100.0
            return _ratio(ratio, text)
        has_unit = text[-1:].upper() in ("K", "M", "G", "T")
        number = cost.parse_count(text)
    except (ValueError, IndexError):
        raise BudgetError(f"invalid budget '{text}'; {_HINT}") from None
    if not math.isfinite(number):
        raise BudgetError(f"invalid budget '{text}'; {_HINT}")
    if has_unit or number >= 1000:
        if number < 1:
            raise BudgetError(f"budget '{text}' is below one MAC; {_HINT}")
        return Budget(float(number), "macs", text)
    return _ratio(number, text)


def _ratio(ratio: float, text: str) -> Budget:
    if not (0 < ratio <= 1):
        raise BudgetError(f"budget '{text}' is not a ratio in (0, 1] nor a MACs count; {_HINT}")
    return Budget(float(ratio), "ratio", text)


def check_reachable(space, max_macs: int, budget: Budget | str | None = None, *,
                    latency: LatencyLimit | None = None) -> None:
    """BudgetError when even the narrowest network in ``space`` exceeds ``max_macs`` (or the
    predicted latency of ``latency``)."""
    base = cost.macs(space, space.max_widths())
    smallest = cost.macs(space, space.min_widths())
    if smallest > max_macs:
        raise BudgetError(
            f"budget {budget or max_macs} ({cost.human(max_macs)} MACs) is below the smallest network in "
            f"the search space ({cost.human(smallest)} MACs, ratio {smallest / base:.3f}); "
            f"use a budget of at least {math.ceil(smallest / base * 1000) / 1000:.3f} or a lower min_ratio")
    if latency is not None:
        fastest = predict(latency.table, space, space.min_widths())
        if fastest > latency.max_ms:
            base_ms = latency.table.model_ms
            raise BudgetError(
                f"latency budget {latency.budget.text if latency.budget else ''} ({latency.max_ms:.3f} ms) is below "
                f"the predicted latency of the smallest network in the search space ({fastest:.3f} ms, ratio "
                f"{fastest / base_ms:.3f} of {base_ms:.3f} ms); use a latency budget of at least "
                f"{math.ceil(fastest / base_ms * 1000) / 1000:.3f} or a lower min_ratio")


def within(space, widths: Sequence[int], max_macs: int, latency: LatencyLimit | None = None) -> bool:
    """True when ``widths`` meets the MACs budget and, with ``latency``, the latency budget."""
    return cost.macs(space, widths) <= max_macs and (latency is None or latency.allows(space, widths))


def utilisation(space, widths: Sequence[int], max_macs: int) -> float:
    """Fraction of the budget a candidate uses (1.0 = exactly at the budget)."""
    return cost.macs(space, widths) / max_macs


def floor_index(choices: Sequence[int], target: float) -> int:
    """Position of the largest allowed width ≤ target (at least the smallest)."""
    lo = 0
    for i, w in enumerate(choices):
        if w <= target + 1e-9:
            lo = i
        else:
            break
    return lo


def repair(space, widths: Sequence[int], max_macs: int, *, rng: np.random.Generator | None = None,
           grow: bool = True, hold: Sequence[int] = (), latency: LatencyLimit | None = None) -> tuple[int, ...]:
    """Map ``widths`` into the budget, then grow it back until nothing more fits.

    Shrinking steps a randomly chosen group down one allowed width at a time until the vector
    fits; growing then steps randomly chosen groups up while they still fit, so the result
    sits on the budget boundary. Both move as few groups as they must, which keeps a
    repaired vector close to the proposal: an optimizer's local move (one layer wider)
    becomes a trade (that layer wider, a few others a step narrower) instead of being
    washed out by a global rescale. Groups in ``hold`` (the ones an optimizer just moved)
    are left alone while other groups can absorb the change. The random order (``rng``)
    avoids a systematic bias toward early or late layers. The result never exceeds
    ``max_macs`` (nor, with ``latency``, its predicted latency limit); BudgetError if even the
    narrowest network does. Both costs only grow with any width, so one repair serves both.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    idx = [c.index(int(w)) for c, w in zip(space.choices, widths)]
    hold = {int(g) for g in hold}

    def fits() -> bool:
        return within(space, [c[i] for c, i in zip(space.choices, idx)], max_macs, latency)

    if not fits():
        check_reachable(space, max_macs, latency=latency)
        while not fits():
            movable = [g for g in range(len(idx)) if idx[g] > 0 and g not in hold]
            movable = movable or [g for g in range(len(idx)) if idx[g] > 0]
            idx[movable[int(rng.integers(len(movable)))]] -= 1
    if grow:
        idx = _grow(space, idx, max_macs, rng, hold, latency)
    return tuple(c[i] for c, i in zip(space.choices, idx))


def _grow(space, idx: list[int], max_macs: int, rng: np.random.Generator, hold=(), latency=None) -> list[int]:
    idx = list(idx)
    open_ = [g for g in range(len(idx)) if idx[g] < len(space.choices[g]) - 1 and g not in hold]
    while open_:
        still = []
        for g in rng.permutation(open_):
            g = int(g)
            idx[g] += 1
            if within(space, [c[i] for c, i in zip(space.choices, idx)], max_macs, latency):
                if idx[g] < len(space.choices[g]) - 1:
                    still.append(g)
            else:
                idx[g] -= 1  # does not fit now, and never will: other groups only grow
        open_ = still
    return idx


def uniform_at_budget(space, max_macs: int, latency: LatencyLimit | None = None) -> tuple[int, ...]:
    """The widest single-multiplier vector that fits: largest ratio r whose
    ``space.uniform(r)`` is within ``max_macs`` (and ``latency``), by bisection (both grow with r)."""
    lo, hi = 0.0, 1.0
    if within(space, space.uniform(1.0), max_macs, latency):
        return space.uniform(1.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        if within(space, space.uniform(mid), max_macs, latency):
            lo = mid
        else:
            hi = mid
    widths = space.uniform(lo)
    if not within(space, widths, max_macs, latency):  # rounding near r≈0 can exceed a tiny budget
        widths = space.min_widths()
    return widths
