"""Search for per-group widths under a MACs budget.

Optimizers (one file each, one interface in :mod:`autoprune.search.base`):

=========== ============================================== ========== ============ =========
name        what it does                                   learns     multi-worker reads base
=========== ============================================== ========== ============ =========
abc         artificial bee colony (ABCPruner), async       yes        yes          no
tpe         Optuna TPE over the encoded widths             yes        yes          no
random      uniform grid draws, repaired onto the budget   no         yes          no
uniform     one width multiplier for every group           one shot   yes          no
slimming    global threshold on BatchNorm |γ|              one shot   yes          yes
l1-global   global threshold on normalised filter L1 norms one shot   yes          yes
=========== ============================================== ========== ============ =========

Every candidate of every optimizer is repaired into the budget before it is scored, and
every one is scored from the same trained base; "reads base" marks the optimizers that also
rank the base's channels to propose.
"""

from autoprune.search.base import Optimizer, get_optimizer, list_optimizers
from autoprune.search.budget import Budget, parse_budget, repair, utilisation

__all__ = ["Budget", "Optimizer", "get_optimizer", "list_optimizers", "parse_budget", "repair", "utilisation"]
