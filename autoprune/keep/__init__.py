"""Keep rules: which channels of a group survive pruning. One score per channel, the highest kept.

A keep rule is one object (:class:`KeepRule`), resolved once from its name by
:func:`get_keep_rule` (an object passes through) and registered by name with
:func:`register_keep_rule`. Each rule is one unit with its sampling and scoring together:

* ``l1`` — L1 norm of each producer's output filter, divided by that producer's mean so that
  the branches of a residual group weigh alike, averaged over producers (Li et al., 2017);
* ``bn_gamma`` — |γ| of the BatchNorms over the group, averaged (Liu et al., 2017);
* ``random`` — a seeded random score;
* ``first`` — the first k channels (what rebuilding an architecture from scratch keeps);

and, scored on feature maps of a seeded sample of training images (:class:`DataRule`):

* ``hrank`` — mean matrix rank of each channel's feature maps (HRank, Lin et al., 2020);
* ``activation`` — mean post-activation value (DropNet, Min et al., 2020);
* ``apoz`` — one minus the average percentage of zeros after the activation (Hu et al., 2016);
* ``reconstruct`` — the input channels a LASSO regression keeps longest when it reconstructs
  each consuming layer's output (channel pruning, He et al., 2017); surgery then refits the
  consumer's kept weights by least squares.

A data rule measures its sample once per trained base (:meth:`KeepRule.fit`), and with a
:class:`ScoreCache` keeps the result beside the base checkpoint (``<checkpoint>.scores/``).
Scores depend on the model's weights, the traced graph and (for data rules) the sample only,
never on an optimizer.
"""

from autoprune.keep._base import (
    DataRule,
    KeepRule,
    Sampled,
    ScoreCache,
    get_keep_rule,
    layout_indices,
    list_keep_rules,
    pool_layer_scores,
    register_keep_rule,
    sample_batches,
    unregister_keep_rule,
)

# The built-in rules: importing a module registers its rules, in the order of these lines.
# isort: off
from autoprune.keep._weights import L1, BnGamma, Random, First  # noqa: E402
from autoprune.keep._maps import FeatureMapRule, HRank, Activation, APoZ  # noqa: E402
from autoprune.keep._reconstruct import Reconstruct  # noqa: E402
# isort: on

__all__ = [
    "APoZ",
    "Activation",
    "BnGamma",
    "DataRule",
    "FeatureMapRule",
    "First",
    "HRank",
    "KeepRule",
    "L1",
    "Random",
    "Reconstruct",
    "Sampled",
    "ScoreCache",
    "get_keep_rule",
    "layout_indices",
    "list_keep_rules",
    "pool_layer_scores",
    "register_keep_rule",
    "sample_batches",
    "unregister_keep_rule",
]
