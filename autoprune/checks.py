"""One-line checks shared by every floor: a count must be a positive integer; a plug-in class
registered by name must be of its kind, named, and not take another class's name."""

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


def register_named(table: dict, cls, base: type, *, error: type[AutopruneError], kind: str):
    """Put plug-in class ``cls`` in ``table`` under ``cls.name``; returns ``cls``. ``error`` in
    one line when it is not a ``base`` subclass, has no name, or its name is another class's
    (a class defined again under the same qualified name, as a reloaded module does, replaces it)."""
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise error(f"registering a {kind} expects a {base.__name__} subclass, got {cls!r}")
    if not cls.name or not isinstance(cls.name, str):
        raise error(f"{kind} class {cls.__name__} has no name: set the class attribute name = '...'")
    known = table.get(cls.name)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise error(f"{kind} '{cls.name}' is already registered by {known.__module__}.{known.__qualname__}")
    table[cls.name] = cls
    return cls
