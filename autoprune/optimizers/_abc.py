"""Artificial bee colony over width vectors (ABCPruner: Lin et al., IJCAI 2020).

Food sources are width vectors, held as positions in each group's grid of allowed widths.
An *employed* bee visits its own source and perturbs a few dimensions toward or away from
another source, ``x_ij + R·(x_ij − x_kj)`` with ``R ~ U[−1, 1]``; an *onlooker* does the same
for a source chosen with probability proportional to its fitness; a source that has not
improved after ``limit`` visits is abandoned and a *scout* draws a new one at random. A
visit that scores better replaces the source.

Three departures from ABCPruner, each for a reason:

* every candidate is repaired onto the MACs budget (ABCPruner discards over-budget vectors
  and has no exact budget at all);
* the uniform-width vector is in the first population, so the colony starts no worse than
  the baseline it has to beat;
* the colony is asynchronous: there are no lock-step cycles, each ``ask`` picks the next
  bee from a schedule driven by the number of results told, and the whole state is rebuilt
  by replaying stored trials — so several workers can share one study.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autoprune.errors import SearchError
from autoprune.optimizers._base import Optimizer, register_optimizer
from autoprune.space import Widths


@dataclass
class _Source:
    widths: Widths
    score: float
    visits: int = 0  # visits since the last improvement


@register_optimizer
class ABCOptimizer(Optimizer):
    """Bee colony with ``sources`` food sources; ``limit`` failed visits before a scout;
    ``dims`` perturbed dimensions per visit."""

    name = "abc"
    summary = "artificial bee colony (ABCPruner), asynchronous; the uniform vector is in the first population"

    def __init__(self, space, limits, *, seed=0, sources: int = 4, limit: int = 6, dims: int = 3):
        super().__init__(space, limits, seed=seed)
        if sources < 2:
            raise SearchError(f"abc needs at least 2 food sources, got {sources}")
        self.sources: list[_Source | None] = [None] * int(sources)
        self.limit = int(limit)
        self.dims = max(1, min(int(dims), len(space.choices)))
        self.visits = 0  # results told from employed, onlooker and scout bees: drives the schedule

    # -- proposing -------------------------------------------------------------------------
    def propose(self, rng, pending):
        taken = self.taken(pending)
        pending_roles = [r for _, r in pending]
        empty = [i for i, s in enumerate(self.sources) if s is None and f"init:{i}" not in pending_roles]
        if empty:
            i = empty[0]
            uniform = self.uniform_feasible()
            if i == 0 and uniform not in taken:
                return uniform, "init:0"
            return self.random_unseen(rng, pending), f"init:{i}"
        filled = [i for i, s in enumerate(self.sources) if s is not None]
        if not filled:  # every initial source is still being scored by other workers
            return self.random_unseen(rng, pending), f"init:{int(rng.integers(len(self.sources)))}"

        n = len(self.sources)
        # Candidates in flight count toward the schedule so that concurrent workers spread
        # over different bees instead of all visiting the same source.
        step = self.visits + sum(1 for r in pending_roles if not r.startswith("init"))
        k = step % (2 * n)
        if k < n and self.sources[k] is not None:
            i, phase = k, "employed"
        else:
            i, phase = self._roulette(filled, rng), "onlooker"
        if self.sources[i].visits >= self.limit:
            return self.random_unseen(rng, pending), f"scout:{i}"
        for _ in range(20):
            widths = self._perturb(i, filled, rng)
            if widths not in taken:
                return widths, f"{phase}:{i}"
        # The neighbourhood is exhausted: behave as a scout would.
        return self.random_unseen(rng, pending), f"scout:{i}"

    def _roulette(self, filled: list[int], rng) -> int:
        scores = np.array([self.sources[i].score for i in filled], dtype=float)
        finite = np.isfinite(scores)
        if not finite.any():
            return int(rng.choice(filled))
        lo, hi = scores[finite].min(), scores[finite].max()
        # Fitness ∝ score is near-uniform when scores are accuracies a few points apart; shifting
        # by the worst source keeps ABC's "richer source, more onlookers" with real pressure.
        fit = np.where(finite, scores - lo + 0.1 * (hi - lo) + 1e-9, 0.0)
        return int(filled[rng.choice(len(filled), p=fit / fit.sum())])

    def _perturb(self, i: int, filled: list[int], rng) -> Widths:
        choices = self.space.choices
        x = [c.index(w) for c, w in zip(choices, self.sources[i].widths)]
        others = [k for k in filled if k != i]
        xk = ([c.index(w) for c, w in zip(choices, self.sources[int(rng.choice(others))].widths)]
              if others else x)
        new = list(x)
        dims = [int(j) for j in rng.choice(len(x), size=self.dims, replace=False)]
        for j in dims:
            j = int(j)
            v = int(round(x[j] + rng.uniform(-1.0, 1.0) * (x[j] - xk[j])))
            if v == x[j]:  # equal coordinates give no step; move one grid cell instead
                v = x[j] + int(rng.choice((-1, 1)))
            new[j] = min(max(v, 0), len(choices[j]) - 1)
        return self.repair([c[v] for c, v in zip(choices, new)], rng, hold=dims)

    # -- learning --------------------------------------------------------------------------
    def observe(self, widths, score, role):
        phase, _, slot = role.partition(":")
        try:
            i = int(slot)
        except ValueError:
            return  # a trial of another optimizer in the same study: nothing to learn here
        if not 0 <= i < len(self.sources):
            return
        fit = float("-inf") if score is None else float(score)
        if phase != "init":
            self.visits += 1
        src = self.sources[i]
        if src is None or phase == "scout":
            self.sources[i] = _Source(widths, fit)
        elif fit > src.score:
            self.sources[i] = _Source(widths, fit)
        elif phase != "init":
            src.visits += 1
