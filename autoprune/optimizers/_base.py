"""The one interface every optimizer implements, and the registry of optimizers by name.

An optimizer proposes width vectors; it never scores anything itself. Its whole state is a
function of the results it has been told (plus what :meth:`Optimizer.prepare` derived from
the trained base), so a process that opens a stored study rebuilds it by replaying the
stored trials, and several processes sharing one study each rebuild the same colony / model
from the same trials.
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from autoprune import cost
from autoprune.budget import Limits, repair, uniform_at_budget
from autoprune.checks import register_named
from autoprune.errors import SearchError
from autoprune.keep import ScoreCache
from autoprune.space import Widths


@dataclass(frozen=True)
class Context:
    """What the search hands :meth:`Optimizer.prepare`: the trained base, the data, where to
    put files of its own (a checkpoint to resume from), whether to show progress, and where
    the base's data-driven keep rules keep what they measured (:mod:`autoprune.keep`).

    ``base`` is None unless the optimizer declares ``needs_base``; ``data`` is None unless
    it declares ``needs_data``.
    """

    base: torch.nn.Module | None = None
    data: Any = None
    device: torch.device = torch.device("cpu")
    out_dir: Path | None = None
    progress: bool = False
    cache: ScoreCache | None = None


class Optimizer:
    """Proposes width vectors within the search's limits, learning from the scores it is told.

    Lifecycle, as the search driver (:func:`autoprune.driver.run_search`) uses it:

    * ``__init__(space, limits, *, seed=0, **options)`` — once per process, before any
      data is loaded, so that a bad option fails fast. Options are keyword-only. ``limits``
      (:class:`~autoprune.budget.Limits`: the MACs limit, and a predicted-latency limit when
      the search has one) never changes; it reaches every proposal through :meth:`repair`
      (and :meth:`uniform_feasible`, :meth:`fits`), so an optimizer that maps its proposals
      through those honours both limits with no code of its own.
    * ``prepare(context)`` — once per process, before the first ``ask`` (and not at all when
      the study already holds every trial it needs). One-shot producers read the trained
      base here (``needs_base``); DMCP trains its supernet on ``context.data`` here
      (``needs_data``).
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
    * ``report()`` — after the search, a dict recorded in the architecture JSON.

    The driver refuses any proposal above the budget (SearchError) before it is claimed:
    the budget is a hard constraint, and an optimizer bug must not leak past it.

    Subclasses set ``name`` and ``summary``, implement :meth:`propose` and, to learn,
    :meth:`observe`; the base class keeps the record of seen widths and scores and holds
    every proposal to the budget. Register a subclass with :func:`register_optimizer`.

    Example (a synthetic score; the driver adds storage, claims and an evaluator):

    >>> import numpy as np
    >>> from autoprune.models import create_model
    >>> from autoprune.space import SearchSpace
    >>> from autoprune.budget import Limits
    >>> space = SearchSpace.from_model(create_model("resnet20"))
    >>> opt = get_optimizer("random")(space, Limits.of(space, 0.5), seed=0)
    >>> for step in range(3):
    ...     widths, role = opt.ask(np.random.default_rng([0, step]))
    ...     opt.tell(widths, float(sum(widths)), role)
    >>> opt.best[1] > 0
    True
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # Reads the trained base's weights in prepare (a base checkpoint is required).
    needs_base: ClassVar[bool] = False
    # Trains on the data stream in prepare (data are loaded even for a synthetic objective).
    needs_data: ClassVar[bool] = False
    # Proposes a single candidate; the driver runs one trial for it.
    one_shot: ClassVar[bool] = False
    # "channel": proposes width vectors. "stripe": prepare() leaves a stripe-pruned model in
    # ``self.result`` (masks, model, score, info); its one candidate is scored by that score.
    granularity: ClassVar[str] = "channel"

    def __init__(self, space, limits: Limits, *, seed: int = 0):
        if not isinstance(limits, Limits):
            raise SearchError(f"an optimizer takes its limits as autoprune.budget.Limits, got {type(limits).__name__}")
        self.space = space
        self.limits = limits
        self.seed = int(seed)
        self.seen: dict[Widths, float | None] = {}
        self.n_told = 0
        self.best: tuple[Widths | None, float] = (None, float("-inf"))

    # -- the interface ---------------------------------------------------------------------
    def prepare(self, context: Context) -> None:
        """Derive whatever proposing needs from the base or the data (default: nothing)."""

    def ask(self, rng: np.random.Generator, pending: Sequence[tuple[Widths, str]] = ()) -> tuple[Widths, str] | None:
        out = self.propose(rng, tuple((tuple(int(x) for x in w), str(r)) for w, r in pending))
        if out is None:
            return None
        widths, role = out
        return tuple(int(w) for w in widths), role

    def tell(self, widths: Sequence[int], score: float | None, role: str) -> None:
        widths = tuple(int(w) for w in widths)
        self.seen[widths] = score
        self.n_told += 1
        if score is not None and score > self.best[1]:
            self.best = (widths, score)
        self.observe(widths, score, role)

    def report(self) -> dict:
        """What the architecture JSON records about this run (default: nothing)."""
        return {}

    # -- for subclasses ----------------------------------------------------------------------
    def propose(self, rng: np.random.Generator, pending: tuple[tuple[Widths, str], ...]) -> tuple[Widths, str] | None:
        """A new candidate (widths in budget, role), or None when there is nothing to propose."""
        raise NotImplementedError

    def observe(self, widths: Widths, score: float | None, role: str) -> None:
        """Learn from one result (after the base class has recorded it)."""

    def repair(self, widths: Sequence[int], rng: np.random.Generator, hold: Sequence[int] = (),
               limits: Limits | None = None) -> Widths:
        """``widths`` mapped onto ``limits`` (default: the search's) by :func:`autoprune.budget.repair`."""
        return repair(self.space, widths, limits or self.limits, rng=rng, hold=hold)

    def hold(self, widths: Sequence[int], rng: np.random.Generator, limits: Limits) -> Widths:
        """The candidate for ``limits``, the search's limits with the latency limit tightened
        after the winner ``widths`` measured over the latency budget (see
        :func:`autoprune.driver.hold_latency`): ``widths`` repaired onto them. A method whose
        result is a rule (one multiplier, a global threshold) gives its rule's vector under
        ``limits`` instead."""
        return self.repair(widths, rng, limits=limits)

    def cost(self, widths: Sequence[int]) -> tuple[int, int]:
        """(MACs, params) of the candidate ``widths``, as the driver holds it to the MACs limit and
        the study records it: the width vector's (a stripe method's candidate is its stripe model)."""
        return cost.macs(self.space, widths), cost.params(self.space, widths)

    def fits(self, widths: Sequence[int]) -> bool:
        """True when ``widths`` meets every limit of the search (MACs, and latency if set)."""
        return self.limits.allows(self.space, widths)

    def random_feasible(self, rng: np.random.Generator) -> Widths:
        """A uniformly drawn grid point, repaired onto the budget boundary."""
        return self.repair(self.space.sample(rng), rng)

    def taken(self, pending) -> Set:
        """Widths already scored or being scored: proposing them again wastes a trial. A view
        of the scored ones, not a copy (a long search holds thousands)."""
        return _Taken(self.seen, pending)

    def random_unseen(self, rng: np.random.Generator, pending, tries: int = 50) -> Widths:
        taken = self.taken(pending)
        for _ in range(tries):
            widths = self.random_feasible(rng)
            if widths not in taken:
                break
        return widths

    def uniform_feasible(self, limits: Limits | None = None) -> Widths:
        """The widest single-multiplier vector (every group at about the same ratio) within
        ``limits`` (default: the search's)."""
        return uniform_at_budget(self.space, limits or self.limits)

    def propose_once(self, widths: Widths, role: str, pending) -> tuple[Widths, str] | None:
        """The one candidate of a one-shot method, unless it was told or is being scored."""
        if self.n_told or widths in self.taken(pending):
            return None
        return widths, role


class _Taken(Set):
    """The scored widths (the optimizer's record, as it is) and the pending ones, as one set."""

    def __init__(self, seen: dict, pending):
        self.seen, self.pending = seen, {w for w, _ in pending}

    def __contains__(self, widths) -> bool:
        return widths in self.seen or widths in self.pending

    def __iter__(self):
        yield from self.seen
        yield from (w for w in self.pending if w not in self.seen)

    def __len__(self) -> int:
        return len(self.seen) + sum(1 for w in self.pending if w not in self.seen)

    @classmethod
    def _from_iterable(cls, it) -> set:
        return set(it)


# --------------------------------------------------------------------------------------------
# The registry.
# --------------------------------------------------------------------------------------------

_METHODS: dict[str, type[Optimizer]] = {}


def register_optimizer(cls: type[Optimizer]) -> type[Optimizer]:
    """Make ``cls`` available as ``method=cls.name`` (API) and ``--method NAME`` (CLI).

    Usable as a class decorator. SearchError when ``cls`` is not an :class:`Optimizer`, has
    no ``name``, or its name is taken by another class.
    """
    return register_named(_METHODS, cls, Optimizer, error=SearchError, kind="method")


def unregister_optimizer(name: str) -> None:
    """Forget the optimizer registered as ``name`` (for plug-ins that are unloaded, and tests)."""
    _METHODS.pop(name, None)


def get_optimizer(name: str) -> type[Optimizer]:
    """The optimizer class registered as ``name``; SearchError naming the known ones."""
    if name not in _METHODS:
        raise SearchError(f"unknown search method '{name}'; expected one of {', '.join(_METHODS)}")
    return _METHODS[name]


def list_methods() -> list[str]:
    """Every registered method name, built-ins first, in registration order."""
    return list(_METHODS)


def method_table() -> list[dict]:
    """One row per method: name, what it does, how many candidates it scores, what it needs."""
    rows = []
    for name, cls in _METHODS.items():
        needs = [what for what, flag in (("base weights", cls.needs_base), ("training data", cls.needs_data))
                 if flag]
        rows.append({"method": name, "summary": cls.summary, "candidates": "1" if cls.one_shot else "--trials",
                     "needs": ", ".join(needs) or "-"})
    return rows
