"""One-line checks of settings, shared by every floor: a count must be a positive integer."""

from __future__ import annotations

import numbers

from autoprune.errors import AutopruneError


def check_count(value, name: str, *, error: type[AutopruneError] = AutopruneError, minimum: int = 1):
    """``value`` when it is an integer (a bool is not) of at least ``minimum``, or None; else
    ``error`` in one line: "NAME must be a positive integer, got VALUE"."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
        raise error(f"{name} must be {what}, got {value!r}")
    return value


def check_counts(*, error: type[AutopruneError] = AutopruneError, minimum: int = 1, **values) -> None:
    """:func:`check_count` of every keyword, named as on the command line (``pretrain_epochs``
    → ``pretrain-epochs``), the first bad one raised."""
    for name, value in values.items():
        check_count(value, name.replace("_", "-"), error=error, minimum=minimum)
