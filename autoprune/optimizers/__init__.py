"""Optimizers: what proposes the width vectors a search scores.

Every optimizer is one private module behind one interface (:class:`Optimizer`), registered
by name with :func:`register_optimizer`. Each declares what it needs (``needs_base``,
``needs_data``, ``one_shot``), which decides what the search prepares for it; ``autoprune
methods`` prints the table of methods from the registry.

Every candidate of every optimizer is within the budget (the driver refuses any other), and
every one is scored from the same trained base.
"""

from autoprune.optimizers._base import (
    Context,
    Optimizer,
    get_optimizer,
    list_methods,
    method_table,
    register_optimizer,
    unregister_optimizer,
)

# The built-in optimizers, one line each: importing a module registers it, and the order of
# these lines is the order `autoprune methods` lists them in.
# isort: off
from autoprune.optimizers import _abc  # noqa: E402,F401
from autoprune.optimizers import _tpe  # noqa: E402,F401
from autoprune.optimizers import _random  # noqa: E402,F401
from autoprune.optimizers import _uniform  # noqa: E402,F401
from autoprune.optimizers import _classic  # noqa: E402,F401
from autoprune.optimizers import _ssl  # noqa: E402,F401
from autoprune.optimizers import dmcp  # noqa: E402,F401
from autoprune.optimizers import stripe  # noqa: E402,F401
# isort: on

__all__ = ["Context", "Optimizer", "get_optimizer", "list_methods", "method_table", "register_optimizer",
           "unregister_optimizer"]
