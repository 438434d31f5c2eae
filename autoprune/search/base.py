"""The one interface every optimizer implements, and the registry of optimizers by name.

An optimizer proposes width vectors; it never touches a model (except the one-shot
``slimming`` / ``l1-global`` producers, which read the base weights they are given) and never
scores anything itself. Its whole state is a function of the results it has been told, so a
process that opens a stored study rebuilds it by replaying the stored trials, and several
processes sharing one study each rebuild the same colony / model from the same trials.
"""

from __future__ import annotations

import importlib
from typing import ClassVar, Sequence

import numpy as np

from autoprune import cost
from autoprune.errors import SearchError
from autoprune.search.budget import check_reachable, repair

Widths = tuple[int, ...]

# name -> "module:Class"; modules are imported on first use, so listing names has no cost.
_REGISTRY = {
    "abc": "autoprune.search.abc:ABCOptimizer",
    "tpe": "autoprune.search.tpe:TPEOptimizer",
    "random": "autoprune.search.random:RandomOptimizer",
    "uniform": "autoprune.search.uniform:UniformOptimizer",
    "uniform-fill": "autoprune.search.uniform:UniformFillOptimizer",
    "slimming": "autoprune.search.classic:SlimmingOptimizer",
    "l1-global": "autoprune.search.classic:L1GlobalOptimizer",
}
# Methods that are not ask/tell optimizers but whole search procedures of their own.
EXTERNAL = ("dmcp",)


def list_optimizers() -> list[str]:
    return list(_REGISTRY)


def get_optimizer(name: str) -> type["Optimizer"]:
    """The optimizer class registered as ``name``; SearchError naming the known ones."""
    if name not in _REGISTRY:
        known = ", ".join(list(_REGISTRY) + list(EXTERNAL))
        raise SearchError(f"unknown search method '{name}'; expected one of {known}")
    module, _, cls = _REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)


class Optimizer:
    """Proposes width vectors within a MACs budget, learning from the scores it is told.

    Lifecycle, as the search driver (:func:`autoprune.search.run.run_search`) uses it:

    * ``__init__(space, max_macs, *, seed=0, model=None, **options)`` — once per process.
      Options are keyword-only. ``model`` is the trained base, given to every optimizer but
      only read by those that rank channels (``needs_model = True``).
    * ``tell(widths, score, role)`` — once for every finished trial, in the order trials
      were created: the ones stored before this process started (resume, or another
      worker's), and each one this process evaluates, right after it is scored. ``score`` is
      ``None`` for a failed evaluation. ``role`` is the string ``ask`` returned with it.
    * ``ask(rng, pending=())`` — whenever the driver wants a new candidate. ``rng`` is a
      fresh generator seeded from (seed, number of results told, retry count), so a resumed
      search asks exactly what an uninterrupted one would have. ``pending`` holds the
      (widths, role) of candidates being evaluated right now (by any worker); an optimizer
      should avoid proposing those again. Returns ``(widths, role)`` — ``widths`` within the
      budget, ``role`` a short string recorded with the trial (e.g. ``"employed:3"``) — or
      ``None`` when it has nothing left to propose (one-shot methods). The driver may discard
      an answer (another worker claimed it first) and ask again with a new ``rng``.

    Subclasses implement :meth:`propose` and, to learn, :meth:`observe`; the base class keeps
    the record of seen widths and scores.

    Example (a synthetic score; the driver adds storage, claims and an evaluator):

    >>> import numpy as np
    >>> from autoprune.models import create_model
    >>> from autoprune.space import SearchSpace
    >>> from autoprune.cost import base_macs
    >>> from autoprune.search import get_optimizer
    >>> space = SearchSpace.from_model(create_model("resnet20"))
    >>> max_macs = int(0.5 * base_macs(space))
    >>> opt = get_optimizer("random")(space, max_macs, seed=0)
    >>> for step in range(3):
    ...     widths, role = opt.ask(np.random.default_rng([0, step]))
    ...     opt.tell(widths, float(sum(widths)), role)
    >>> opt.best[1] > 0
    True
    """

    name: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False
    # One-shot optimizers propose a single candidate; the driver runs one trial for them.
    one_shot: ClassVar[bool] = False

    def __init__(self, space, max_macs: int, *, seed: int = 0, model=None):
        check_reachable(space, max_macs)
        self.space = space
        self.max_macs = int(max_macs)
        self.seed = int(seed)
        self.model = model
        self.seen: dict[Widths, float | None] = {}
        self.n_told = 0
        self.best: tuple[Widths | None, float] = (None, float("-inf"))

    # -- the interface ---------------------------------------------------------------------
    def ask(self, rng: np.random.Generator, pending: Sequence[tuple[Widths, str]] = ()) -> tuple[Widths, str] | None:
        out = self.propose(rng, tuple((tuple(int(x) for x in w), str(r)) for w, r in pending))
        if out is None:
            return None
        widths, role = out
        widths = tuple(int(w) for w in widths)
        # The budget is a hard constraint; an optimizer bug must not leak past it.
        macs = cost.macs(self.space, widths)
        if macs > self.max_macs:
            raise SearchError(f"method '{self.name or type(self).__name__}' proposed {list(widths)} with {macs} MACs, "
                              f"above the budget of {self.max_macs}")
        return widths, role

    def tell(self, widths: Sequence[int], score: float | None, role: str) -> None:
        widths = tuple(int(w) for w in widths)
        self.seen[widths] = score
        self.n_told += 1
        if score is not None and score > self.best[1]:
            self.best = (widths, score)
        self.observe(widths, score, role)

    # -- for subclasses ----------------------------------------------------------------------
    def propose(self, rng: np.random.Generator, pending: tuple[tuple[Widths, str], ...]) -> tuple[Widths, str] | None:
        """A new candidate (widths in budget, role), or None when there is nothing to propose."""
        raise NotImplementedError

    def observe(self, widths: Widths, score: float | None, role: str) -> None:
        """Learn from one result (after the base class has recorded it)."""

    def repair(self, widths: Sequence[int], rng: np.random.Generator, hold: Sequence[int] = ()) -> Widths:
        return repair(self.space, widths, self.max_macs, rng=rng, hold=hold)

    def random_feasible(self, rng: np.random.Generator) -> Widths:
        """A uniformly drawn grid point, repaired onto the budget boundary."""
        return self.repair(self.space.sample(rng), rng)

    def taken(self, pending) -> set:
        """Widths already scored or being scored: proposing them again wastes a trial."""
        return set(self.seen) | {w for w, _ in pending}

    def random_unseen(self, rng: np.random.Generator, pending, tries: int = 50) -> Widths:
        taken = self.taken(pending)
        for _ in range(tries):
            widths = self.random_feasible(rng)
            if widths not in taken:
                break
        return widths

    def uniform_feasible(self) -> Widths:
        """The widest single-multiplier vector (every group at about the same ratio) in budget."""
        return uniform_at_budget(self.space, self.max_macs)


def uniform_at_budget(space, max_macs: int) -> Widths:
    """Largest ratio r whose ``space.uniform(r)`` fits, by bisection (MACs grow with r)."""
    lo, hi = 0.0, 1.0
    if cost.macs(space, space.uniform(1.0)) <= max_macs:
        return space.uniform(1.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost.macs(space, space.uniform(mid)) <= max_macs:
            lo = mid
        else:
            hi = mid
    widths = space.uniform(lo)
    if cost.macs(space, widths) > max_macs:  # rounding near r≈0 can exceed a tiny budget
        widths = space.min_widths()
    return widths
