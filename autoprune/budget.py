"""The limits of a search: budgets as the user writes them, and mapping any width vector onto them.

A :class:`Budget` is what the user asked for: a ratio of the base model's cost, or an
absolute amount (MACs, or milliseconds of latency). :class:`Limits` is what a search holds
every candidate to: the MACs limit and, optionally, a latency limit predicted from a measured
table. It is built once, checked once against the space (:meth:`Limits.of`), handed to the
optimizer, and never changed; the latency hold asks for a :meth:`~Limits.tightened` copy.

Limits are hard: no candidate above them is trained or reported. Optimizers propose freely
and :func:`repair` maps each proposal into the feasible set, then grows it back so that the
budget is used (a candidate at 60 % of the allowed MACs wastes capacity that any sensible
allocation would spend).

>>> b = parse_budget("0.4")
>>> b.max_macs(1_000_000)
400000
>>> parse_budget("120M").max_macs(10**9)
120000000
>>> parse_latency_budget("3.2ms").max_ms(10.0)
3.2
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from autoprune import cost
from autoprune.errors import BudgetError
from autoprune.latency import LatencyTable, check_table, predict

_HINT = "use a ratio in (0, 1] such as 0.4, a percentage such as 40%, or MACs such as 120M, 1.2G, 3e8"
_LATENCY_HINT = "use a ratio of the base model's measured latency in (0, 1] such as 0.5 or 50%, or a time such as 3.2ms"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


@dataclass(frozen=True)
class Budget:
    """A budget as written: a ratio of the base model's cost (``kind`` "ratio"), or an absolute
    number of MACs ("macs") or milliseconds ("ms")."""

    value: float
    kind: str  # "ratio" | "macs" | "ms"
    text: str

    def max_macs(self, base_macs: int) -> int:
        """The largest MACs a candidate may use for a base model of ``base_macs``."""
        if self.kind == "ratio":
            # The small epsilon keeps 0.4 * 1000 == 400 despite binary floating point.
            return int(math.floor(self.value * base_macs + 1e-6))
        return int(self.value)

    def max_ms(self, base_ms: float) -> float:
        """The largest latency a candidate may take for a base model measured at ``base_ms``."""
        return self.value * base_ms if self.kind == "ratio" else self.value

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


def parse_latency_budget(value) -> Budget:
    """``0.5``, ``"50%"`` → ratio of the base latency; ``"3.2ms"``, ``"800us"``, ``"0.01s"`` → ms.

    >>> parse_latency_budget("0.5").max_ms(10.0)
    5.0
    """
    if isinstance(value, Budget):
        return value
    text = str(value).strip()
    m = re.fullmatch(r"([0-9.eE+-]+)\s*(%|us|ms|s)?", text)
    try:
        number = float(m.group(1)) if m and not isinstance(value, bool) else float("nan")
    except ValueError:
        number = float("nan")
    unit = m.group(2) if m else None
    if not math.isfinite(number):
        raise BudgetError(f"invalid latency budget '{text}'; {_LATENCY_HINT}")
    if unit in _UNITS:
        if number <= 0:
            raise BudgetError(f"latency budget '{text}' must be positive; {_LATENCY_HINT}")
        return Budget(number * _UNITS[unit], "ms", text)
    ratio = number / 100.0 if unit == "%" else number
    if not 0 < ratio <= 1:
        raise BudgetError(f"latency budget '{text}' is not a ratio in (0, 1] nor a time; {_LATENCY_HINT}")
    return Budget(ratio, "ratio", text)


@dataclass(frozen=True)
class Limits:
    """What a search holds every candidate to: at most ``max_macs`` MACs and, with a latency
    ``table``, a predicted latency of at most ``max_ms``.

    ``budget`` and ``latency_budget`` are the budgets as the user wrote them (None where a
    limit was given as a number), ``base_macs`` the base model's MACs. Build one with
    :meth:`of`, which also checks that the space holds a network within it;
    ``Limits(max_macs)`` is a bare MACs limit (checked when a :func:`repair` first needs it).
    Both costs only grow with any width, which :func:`repair` and :func:`uniform_at_budget`
    rely on.

    >>> Limits(400).to_dict()["max_macs"]
    400
    """

    max_macs: int
    budget: Budget | None = None
    base_macs: int | None = None
    table: LatencyTable | None = None
    max_ms: float | None = None
    latency_budget: Budget | None = None

    @classmethod
    def of(cls, space, budget=1.0, latency=None, table: LatencyTable | None = None) -> "Limits":
        """The limits of ``budget`` (and ``latency``, priced by ``table``) for ``space``;
        BudgetError when a budget is malformed or below the smallest network of the space."""
        budget = parse_budget(budget)
        base = cost.base_macs(space)
        limits = cls(budget.max_macs(base), budget, base)
        if latency is not None:
            if table is None:
                raise BudgetError("a latency budget needs a latency table to predict latencies with")
            check_table(table, space)
            latency = parse_latency_budget(latency)
            limits = dataclasses.replace(limits, table=table, max_ms=float(latency.max_ms(table.model_ms)),
                                         latency_budget=latency)
        limits.check_reachable(space)
        return limits

    def allows(self, space, widths: Sequence[int]) -> bool:
        """True when ``widths`` meets the MACs limit and, with a table, the latency limit."""
        return cost.macs(space, widths) <= self.max_macs and (self.table is None or self.predicted_ms(space, widths)
                                                              <= self.max_ms)

    def predicted_ms(self, space, widths: Sequence[int]) -> float:
        """The table's predicted latency of ``widths`` (the limits must have a table)."""
        return float(predict(self.table, space, widths))

    def check_reachable(self, space) -> None:
        """BudgetError, naming the smallest reachable ratio, when even the narrowest network in
        ``space`` is above the MACs limit or (with a table) its predicted latency above the latency limit."""
        base = cost.macs(space, space.max_widths())
        smallest = cost.macs(space, space.min_widths())
        if smallest > self.max_macs:
            raise BudgetError(
                f"budget {self.budget or self.max_macs} ({cost.human(self.max_macs)} MACs) is below the smallest "
                f"network in the search space ({cost.human(smallest)} MACs, ratio {smallest / base:.3f}); "
                f"use a budget of at least {math.ceil(smallest / base * 1000) / 1000:.3f} or a lower min_ratio")
        if self.table is not None:
            fastest = self.predicted_ms(space, space.min_widths())
            if fastest > self.max_ms:
                base_ms = self.table.model_ms
                raise BudgetError(
                    f"latency budget {self.latency_budget or ''} ({self.max_ms:.3f} ms) is below the predicted "
                    f"latency of the smallest network in the search space ({fastest:.3f} ms, ratio "
                    f"{fastest / base_ms:.3f} of {base_ms:.3f} ms); use a latency budget of at least "
                    f"{math.ceil(fastest / base_ms * 1000) / 1000:.3f} or a lower min_ratio")

    def tightened(self, max_ms: float) -> "Limits":
        """These limits with the latency limit lowered to ``max_ms`` (never raised): what the
        latency hold asks for after a winner measured over the budget."""
        if self.table is None:
            raise BudgetError("only a search with a latency budget can tighten its latency limit")
        return dataclasses.replace(self, max_ms=min(float(max_ms), self.max_ms))

    def to_dict(self) -> dict:
        """What ``arch.json`` records as ``budget``: the MACs budget as written, ``max_macs`` and
        its ``ratio`` of the base, and with a table ``latency`` (budget, ``max_ms``, the base's
        measured ``base_ms``, the table's key and id)."""
        out = {**(self.budget.to_dict() if self.budget else {}), "max_macs": int(self.max_macs),
               "ratio": self.max_macs / self.base_macs if self.base_macs else None}
        if self.table is not None:
            out["latency"] = {"budget": self.latency_budget.to_dict() if self.latency_budget else None,
                              "max_ms": self.max_ms, "base_ms": self.table.model_ms, "table": self.table.key,
                              "table_id": self.table.id}
        return out


def utilisation(space, widths: Sequence[int], limits: Limits) -> float:
    """Fraction of the MACs limit a candidate uses (1.0 = exactly at the limit)."""
    return cost.macs(space, widths) / limits.max_macs


def floor_index(choices: Sequence[int], target: float) -> int:
    """Position of the largest allowed width ≤ target (at least the smallest)."""
    lo = 0
    for i, w in enumerate(choices):
        if w <= target + 1e-9:
            lo = i
        else:
            break
    return lo


def repair(space, widths: Sequence[int], limits: Limits, *, rng: np.random.Generator | None = None,
           grow: bool = True, hold: Sequence[int] = ()) -> tuple[int, ...]:
    """Map ``widths`` into ``limits``, then grow it back until nothing more fits.

    Shrinking steps a randomly chosen group down one allowed width at a time until the vector
    fits; growing then steps randomly chosen groups up while they still fit, so the result
    sits on the budget boundary. Both move as few groups as they must, which keeps a
    repaired vector close to the proposal: an optimizer's local move (one layer wider)
    becomes a trade (that layer wider, a few others a step narrower) instead of being
    washed out by a global rescale. Groups in ``hold`` (the ones an optimizer just moved)
    are left alone while other groups can absorb the change. The random order (``rng``)
    avoids a systematic bias toward early or late layers. The result is always within
    ``limits`` (MACs and, with a table, predicted latency); BudgetError if even the narrowest
    network is not. Both costs only grow with any width, so one repair serves both.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    idx = [c.index(int(w)) for c, w in zip(space.choices, widths)]
    hold = {int(g) for g in hold}

    def fits() -> bool:
        return limits.allows(space, [c[i] for c, i in zip(space.choices, idx)])

    if not fits():
        limits.check_reachable(space)
        while not fits():
            movable = [g for g in range(len(idx)) if idx[g] > 0 and g not in hold]
            movable = movable or [g for g in range(len(idx)) if idx[g] > 0]
            idx[movable[int(rng.integers(len(movable)))]] -= 1
    if grow:
        idx = _grow(space, idx, limits, rng, hold)
    return tuple(c[i] for c, i in zip(space.choices, idx))


def _grow(space, idx: list[int], limits: Limits, rng: np.random.Generator, hold=()) -> list[int]:
    idx = list(idx)
    open_ = [g for g in range(len(idx)) if idx[g] < len(space.choices[g]) - 1 and g not in hold]
    while open_:
        still = []
        for g in rng.permutation(open_):
            g = int(g)
            idx[g] += 1
            if limits.allows(space, [c[i] for c, i in zip(space.choices, idx)]):
                if idx[g] < len(space.choices[g]) - 1:
                    still.append(g)
            else:
                idx[g] -= 1  # does not fit now, and never will: other groups only grow
        open_ = still
    return idx


def uniform_at_budget(space, limits: Limits) -> tuple[int, ...]:
    """The widest single-multiplier vector within ``limits``: largest ratio r whose
    ``space.uniform(r)`` fits, by bisection (both costs grow with r)."""
    lo, hi = 0.0, 1.0
    if limits.allows(space, space.uniform(1.0)):
        return space.uniform(1.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        if limits.allows(space, space.uniform(mid)):
            lo = mid
        else:
            hi = mid
    widths = space.uniform(lo)
    if not limits.allows(space, widths):  # rounding near r≈0 can exceed a tiny budget
        widths = space.min_widths()
    return widths
