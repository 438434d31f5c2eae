"""Optimizers: what proposes the width vectors a search scores.

Every optimizer is one private module behind one interface (:class:`Optimizer`), registered
by name with :func:`register_optimizer`. Each declares what it needs, which decides what the
search prepares for it:

=========== ================================================ ========== ============ ============
name        what it does                                     candidates trained base  training data
=========== ================================================ ========== ============ ============
abc         artificial bee colony (ABCPruner), asynchronous  --trials   no           no
tpe         Optuna TPE over the encoded widths               --trials   no           no
random      uniform grid draws, repaired onto the budget     --trials   no           no
uniform     one width multiplier for every group             1          no           no
uniform-fill uniform, then grown one grid step at a time      1          no           no
slimming    global threshold on BatchNorm |γ|                1          yes          no
l1-global   global threshold on normalised filter L1 norms   1          yes          no
hrank       global threshold on feature-map rank (HRank)     1          yes          yes
activation  global threshold on mean post-activation         1          yes          yes
ssl         group-lasso training, strength by bisection      1          yes          yes
dmcp        differentiable Markov channel pruning            1          yes          yes
=========== ================================================ ========== ============ ============

Every candidate of every optimizer is within the budget (:meth:`Optimizer.ask` refuses any
other), and every one is scored from the same trained base. ``autoprune methods`` prints
this table from the registry.
"""

# The built-in optimizers: importing each module registers it (one line per optimizer).
from autoprune.optimizers import _abc, _classic, _random, _ssl, _tpe, _uniform, dmcp  # noqa: E402,F401
from autoprune.optimizers._base import (
                                        Context,
                                        Optimizer,
                                        get_optimizer,
                                        list_methods,
                                        method_table,
                                        register_optimizer,
                                        unregister_optimizer,
)

__all__ = ["Context", "Optimizer", "get_optimizer", "list_methods", "method_table", "register_optimizer",
           "unregister_optimizer"]
