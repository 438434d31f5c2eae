"""The built-in rules, by family: how channels flow through each op the tracer knows.

- :mod:`~autoprune.graph.rules.layers`: conv, linear, norms, per-channel scale parameters;
- :mod:`~autoprune.graph.rules.pointwise`: activations, pooling, dropout, spatial reductions,
  element-wise ops of several tensors (and the ready-made ``passthrough``, ``spatial_reduce``);
- :mod:`~autoprune.graph.rules.reshapes`: flatten, view, permute, transpose, channel shuffles;
- :mod:`~autoprune.graph.rules.cuts`: cat, chunk, split, slices and elements of parts.

A family is a module with four tables: ``MODULES`` (an ``nn.Module`` class, matched by its
subclasses too), ``FUNCTIONS`` (a function such as ``torch.cat``), ``METHODS`` (a tensor-method
name) mapping to a handler, and ``KEEP_ORDER``, the handlers that follow a shuffled tensor's
channel positions (any other handler gets the tensor with its groups fixed). A family may add
``BY_CLASS_NAME``: modules of packages the tracer does not import, matched by class name. A new
family is a module here and one entry in :data:`FAMILIES`; no target may have two rules.
"""

from __future__ import annotations

from autoprune.graph.rules import cuts, layers, pointwise, reshapes

FAMILIES = (layers, pointwise, reshapes, cuts)


def _merged(table: str) -> dict:
    out: dict = {}
    for family in FAMILIES:
        for key, handler in getattr(family, table, {}).items():
            if key in out and out[key] is not handler:
                raise RuntimeError(f"two built-in rules for {key!r} in {table}")  # a bug in a family, not bad input
            out[key] = handler
    return out


MODULES = _merged("MODULES")
FUNCTIONS = _merged("FUNCTIONS")
METHODS = _merged("METHODS")
BY_CLASS_NAME = _merged("BY_CLASS_NAME")
KEEP_ORDER = frozenset().union(*(family.KEEP_ORDER for family in FAMILIES))
