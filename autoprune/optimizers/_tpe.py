"""Optuna's TPE sampler over the encoded width space, every sample repaired into the budget.

One float parameter in [0, 1] per free group (the space's unit-cube encoding), so TPE sees
the order of the widths. TPE is fitted on the *repaired* candidates that were actually
scored, not on its raw samples: the score belongs to the repaired vector. The sampler is
rebuilt from the told results at each ask, which is what lets several workers share one
stored study; its cost (a few ms per trial) is negligible next to scoring a candidate.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from autoprune.optimizers._base import Optimizer, register_optimizer


@register_optimizer
class TPEOptimizer(Optimizer):
    """TPE with ``n_startup`` random trials first (the first of them the uniform vector)."""

    name = "tpe"
    summary = "Optuna's TPE over the encoded widths"

    def __init__(self, space, max_macs, *, seed=0, n_startup: int = 10, multivariate: bool = True):
        super().__init__(space, max_macs, seed=seed)
        self.n_startup = int(n_startup)
        self.multivariate = bool(multivariate)
        self.history: list[tuple[tuple[int, ...], float | None]] = []
        self._dists = {f"g{j}": FloatDistribution(0.0, 1.0) for j in range(len(space.choices))}

    def observe(self, widths, score, role):
        self.history.append((widths, score))

    def _params(self, widths) -> dict:
        return {f"g{j}": float(v) for j, v in enumerate(self.space.encode(widths))}

    def propose(self, rng, pending):
        taken = self.taken(pending)
        if not self.history:
            uniform = self.uniform_feasible()
            if uniform not in taken:
                return uniform, "startup"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # multivariate / constant_liar are "experimental"
            sampler = optuna.samplers.TPESampler(
                seed=int(rng.integers(2**31 - 1)), n_startup_trials=self.n_startup,
                multivariate=self.multivariate, constant_liar=True)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            trials = [create_trial(params=self._params(w), distributions=self._dists,
                                   value=s if s is not None else None,
                                   state=TrialState.COMPLETE if s is not None else TrialState.FAIL)
                      for w, s in self.history]
            # Candidates in flight elsewhere: constant_liar keeps TPE from sampling next to them.
            trials += [create_trial(params=self._params(w), distributions=self._dists, state=TrialState.RUNNING)
                       for w, _ in pending]
            study.add_trials(trials)
            role = "startup" if len(self.history) < self.n_startup else "tpe"
            for _ in range(20):
                trial = study.ask(self._dists)
                widths = self.repair(self.space.decode([trial.params[k] for k in self._dists]), rng)
                if widths not in taken:
                    return widths, role
                # A repeat after repair: tell TPE what it already scored there and sample again.
                known = self.seen.get(widths)
                if known is None:
                    study.tell(trial, state=TrialState.FAIL)
                else:
                    study.tell(trial, known)
        return self.random_unseen(rng, pending), "random"
