"""Optuna's TPE sampler over the encoded width space, every sample repaired into the budget.

One float parameter in [0, 1] per free group (the space's unit-cube encoding), so TPE sees
the order of the widths. TPE is fitted on the *repaired* candidates that were actually
scored, not on its raw samples: the score belongs to the repaired vector.

TPE's history lives in one in-memory Optuna study that grows by the results told since the
last ask (rebuilding it from every result at each ask cost seconds per candidate after a few
thousand). Each ask gets a fresh sampler seeded from the ask's rng, as a rebuilt study would,
and proposes exactly what a study rebuilt from the same results would: the trials an ask adds
for itself (candidates in flight elsewhere, its own samples) are closed as failed when it
returns, which TPE ignores. A sample that repaired onto an already-scored vector is told that
score as complete, so that the ask's next samples move away from it; a rebuilt study would
not hold it, so it is turned into a failed trial too when the ask returns (a finished trial
cannot be told again: its stored record is replaced; where the storage does not allow that,
the study is rebuilt at the next ask instead).

Optuna's sampling itself reads every result in the study at each sample, so a long search
keeps a bounded history (``history``, default 64): the :data:`BEST` best results, whatever
their age, and the most recent others, told in order. The study is rebuilt so whenever it
has grown by half the bound. Up to ``history`` results the proposals are exactly those of an
unbounded TPE. Beyond, TPE's "good" model is the best tenth of the kept results (the best 7
to 10 of 64 to 96 kept) rather than of every result (at most 25): it exploits the best region
a little more. The cost decides the default: a converged TPE samples several times per ask
(samples that repair onto scored vectors), each sample reads the whole kept history, and
with 256 kept an ask took 65 to 125 ms of CPU after 600 results against 20 to 25 ms with 64;
on the synthetic objective (resnet56 at 40 %, seeds 0 to 2) both found the same best at 400
and 600 candidates, 64 as good or better at 200. ``history=256`` (or None) keeps more.
"""

from __future__ import annotations

import copy
import warnings

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from autoprune.optimizers._base import Optimizer, register_optimizer

BEST = 25  # the most results Optuna's TPE (default gamma) puts in its "good" model


@register_optimizer
class TPEOptimizer(Optimizer):
    """TPE with ``n_startup`` random trials first (the first of them the uniform vector);
    ``history``: the most results TPE reads at one ask (None: every one)."""

    name = "tpe"
    summary = "Optuna's TPE over the encoded widths"

    def __init__(self, space, limits, *, seed=0, n_startup: int = 10, multivariate: bool = True,
                 history: int | None = 64):
        super().__init__(space, limits, seed=seed)
        if history is not None and (isinstance(history, bool) or int(history) < 2 * BEST):
            raise ValueError(f"history must be at least {2 * BEST} results (or None), got {history!r}")
        self.window = None if history is None else int(history)
        self.n_startup = int(n_startup)
        self.multivariate = bool(multivariate)
        self.history: list[tuple[tuple[int, ...], float | None]] = []
        self._dists = {f"g{j}": FloatDistribution(0.0, 1.0) for j in range(len(space.choices))}
        self._study: optuna.Study | None = None  # TPE's history (see _kept), then closed extras
        self._memory = None  # the study's storage
        self._added = self._in_study = 0  # results of history looked at; of them, in the study
        self._space_memo = None  # the sampler's intersection search space, carried over between asks
        self.rebuilds = self.dropped = 0  # studies rebuilt beyond the bound's; repeats turned into failures

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
            study = self._history_study(sampler)
            # The trials from here on are this ask's own: they are closed before it returns.
            extras = len(study.get_trials(deepcopy=False))
            # Candidates in flight elsewhere: constant_liar keeps TPE from sampling next to them.
            study.add_trials([create_trial(params=self._params(w), distributions=self._dists,
                                           state=TrialState.RUNNING) for w, _ in pending])
            try:
                return self._sample(study, rng, taken, pending)
            finally:
                for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):
                    if t.number < extras:
                        continue
                    if t.state == TrialState.RUNNING:
                        study.tell(t.number, state=TrialState.FAIL)
                    elif self._fail_finished(study, t.number):  # a repeat's known score (see _sample)
                        self.dropped += 1
                    else:
                        self._study, self._space_memo = None, None
                        self.rebuilds += 1

    def _history_study(self, sampler) -> optuna.Study:
        """The in-memory study of every told result, with ``sampler`` as its sampler."""
        new = self.history[self._added:]
        if self._study is None or (self.window and self._in_study + len(new) > self.window * 3 // 2):
            self._memory = optuna.storages.InMemoryStorage()
            self._study = optuna.create_study(storage=self._memory, direction="maximize", sampler=sampler)
            self._space_memo = None
            new, self._in_study = self._kept(), 0
        self._study.sampler = sampler
        if self._space_memo is not None and hasattr(sampler, "_search_space"):
            sampler._search_space = self._space_memo  # the same every ask; a new one rescans every trial
        self._space_memo = getattr(sampler, "_search_space", None)
        self._study.add_trials([create_trial(params=self._params(w), distributions=self._dists,
                                             value=s if s is not None else None,
                                             state=TrialState.COMPLETE if s is not None else TrialState.FAIL)
                                for w, s in new])
        self._added, self._in_study = len(self.history), self._in_study + len(new)
        return self._study

    def _kept(self) -> list:
        """The results a rebuilt study holds, in the order told: every one up to ``history``;
        beyond, the :data:`BEST` best and the most recent others, ``history`` in all."""
        if not self.window or len(self.history) <= self.window:
            return list(self.history)
        scored = [i for i, (_, s) in enumerate(self.history) if s is not None]
        best = set(sorted(scored, key=lambda i: -self.history[i][1])[:BEST])
        recent = [i for i in range(len(self.history) - 1, -1, -1) if i not in best][:self.window - len(best)]
        return [self.history[i] for i in sorted(best | set(recent))]

    def _sample(self, study, rng, taken, pending):
        role = "startup" if len(self.history) < self.n_startup else "tpe"
        for _ in range(20):
            trial = study.ask(self._dists)
            params = trial.params  # a copy at each access
            widths = self.repair(self.space.decode([params[k] for k in self._dists]), rng)
            if widths not in taken:
                return widths, role
            # A repeat after repair: tell TPE what it already scored there and sample again.
            known = self.seen.get(widths)
            study.tell(trial, known, state=TrialState.FAIL if known is None else None)
        return self.random_unseen(rng, pending), "random"

    def _fail_finished(self, study, number: int) -> bool:
        """Turn the finished trial ``number`` of the in-memory study into a failed one, which
        TPE ignores as a rebuilt study would ignore its absence; False where the storage has no
        way to (then the study must be rebuilt). Optuna offers no public way to change a
        finished trial: this replaces its record through the in-memory storage's own setter."""
        storage = self._memory
        if not (hasattr(storage, "_set_trial") and hasattr(storage, "_lock")):
            return False
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(study.study_name), number)
        failed = copy.copy(storage.get_trial(trial_id))
        failed.state, failed.values = TrialState.FAIL, None
        with storage._lock:
            storage._set_trial(trial_id, failed)
        return True
