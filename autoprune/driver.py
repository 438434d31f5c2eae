"""The search driver: ask, claim, score, record, tell — until the study holds enough trials.

The loop is the same for one worker and for many: before each ask it replays the trials
it has not yet told the optimizer (its own, other workers', and on resume all stored ones),
so every worker's optimizer is rebuilt from the shared study. A candidate is claimed in the
store before it is scored; a lost claim just means "ask again".

Failed candidates (out of memory, a non-finite loss) count toward ``trials`` only in the run
that scored them: a rerun leaves the failures it finds in the study out of the count and out
of the optimizer's replay, so it may propose and score those candidates again. The failed
records stay in the study (and in ``trials.csv``) as the history of what happened.

With a latency budget the driver's last step is :func:`hold_latency`: the winner is measured
on the device beside the base, and where it runs over the budget the predicted limit tightens
by what the measurement showed and a candidate for the tighter limit is scored as one more.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import numpy as np
import torch.nn as nn

from autoprune.budget import Budget, Limits
from autoprune.errors import BudgetError, SearchError
from autoprune.evaluator import EvalResult
from autoprune.optimizers import Context, Optimizer
from autoprune.profile import STATISTICS, measure_rounds, paired_ratio
from autoprune.study import (
    FULL,
    HOLD_ROLE,
    STATUS_FAILED,
    STATUS_INTERRUPTED,
    STATUS_OK,
    Record,
    TrialStore,
    widths_key,
)

# Consecutive proposals that were already scored before the driver gives up: the optimizer
# keeps re-proposing known vectors, i.e. it has converged or the space is exhausted.
MAX_REPEATS = 50
# How long a one-shot method waits for its candidate while another worker scores it.
WAIT_S = 3600.0
# How often the latency hold tightens the predicted limit after the winner measured over the
# budget, how far below the measured excess it aims (timing noise near the boundary), and the
# fewest rounds of its measurements (the median of the winner-to-base ratios of the rounds).
HOLD_TRIES = 3
HOLD_MARGIN = 0.97
HOLD_ROUNDS = 7


def run_search(optimizer: Optimizer, score: Callable[[tuple[int, ...]], EvalResult], store: TrialStore, *,
               trials: int, seed: int = 0, context: Context | None = None, progress=None, on_result=None,
               wait_s: float = WAIT_S) -> list[Record]:
    """Run until the study holds ``trials`` candidates (scored or being scored by any worker).

    ``score`` maps widths to an :class:`EvalResult`; ``context`` is handed to
    ``optimizer.prepare`` before its first ask; ``progress`` is an optional tqdm-like bar
    (``update``, ``set_postfix``); ``on_result(record)`` is called after each candidate
    this process scores. Returns every record of the study at the end.

    Failures already in the study when this run starts do not count and are not replayed,
    so their candidates may be scored again (see the module docstring). A one-shot method
    whose candidate another worker is scoring waits for that result (up to ``wait_s``
    seconds) instead of giving up. Every candidate is checked against the budget before it
    is claimed: SearchError if an optimizer proposes one outside ``optimizer.limits``.
    """
    loop = _Loop(optimizer, store, seed, context or Context(), progress, wait_s)
    trials = min(trials, 1) if optimizer.one_shot else trials
    while True:
        running, active = loop.replay()
        if active >= trials and not running:
            break
        out = loop.ask(running) if active < trials else None
        if out is None or widths_key(out[0]) in running:
            if running and (optimizer.one_shot or active >= trials):
                # The study is full (or the one candidate is claimed) but other workers are
                # still scoring: wait for their results, or re-queue their claims if they died,
                # so that every worker ends on the same, complete study.
                loop.wait_for(running)
                continue
            if out is None:
                break
            loop.attempt += 1
            continue
        if widths_key(out[0]) in loop.scored_keys:
            # Already scored in this study: the optimizer was told the result in the replay;
            # ask again (a new rng) without scoring or telling anything.
            loop.attempt += 1
            loop.repeats += 1
            if loop.repeats >= MAX_REPEATS:
                break
            continue
        record = loop.score(*out, score, trials)
        if record is not None and on_result is not None:
            on_result(record)
    return store.records()


class _Loop:
    """The driver's state between iterations: what was told, retries, and the one-shot wait."""

    def __init__(self, optimizer, store, seed, context, progress, wait_s):
        self.optimizer, self.store, self.seed, self.context = optimizer, store, seed, context
        self.progress, self.wait_s = progress, wait_s
        self.retry = frozenset(r.trial_id for r in store.records() if r.status == STATUS_FAILED)
        self.told: set[int] = set()
        self.scored_keys: set[str] = set()  # candidates finished in the study (retried failures left out)
        self.cursor = self.counted = 0  # where the study's changes were read up to; finished ones counted
        self.repeats = self.attempt = 0
        self.best = float("-inf")
        self.prepared = False
        self.waited_since, self.delay = None, 0.05

    def replay(self):
        """Tell the optimizer every newly finished trial it has not seen, in the order the
        study showed them finished; (running records by key, candidates that count toward the
        trials). Only what changed since the last replay is read (:meth:`TrialStore.changes`)."""
        finished, running_list, self.cursor = self.store.changes(self.cursor)
        for r in finished:
            if not r.finished or r.trial_id in self.retry:
                continue
            self.scored_keys.add(r.key)
            self.counted += r.role != HOLD_ROLE
            if r.trial_id not in self.told:
                self.optimizer.tell(r.widths, r.score, r.role)
                self.told.add(r.trial_id)
                if r.score is not None:
                    self.best = max(self.best, r.score)
        running = {r.key: r for r in running_list}
        active = self.counted + sum(1 for r in running_list if r.role != HOLD_ROLE)
        if self.progress is not None:
            self.progress.n = active
            self.progress.set_postfix(best=f"{self.best:.4f}" if self.best > float("-inf") else "-")
        return running, active

    def ask(self, running):
        if not self.prepared:
            self.optimizer.prepare(self.context)
            self.prepared = True
        pending = [(r.widths, r.role) for r in running.values()]
        return self.optimizer.ask(np.random.default_rng([self.seed, self.optimizer.n_told, self.attempt]), pending)

    def wait_for(self, running) -> None:
        self.waited_since = self.waited_since or time.monotonic()
        if time.monotonic() - self.waited_since > self.wait_s:
            r = next(iter(running.values()))
            raise SearchError(f"candidate {r.key} is still being scored by {r.worker or 'another worker'} "
                              f"after {self.wait_s:.0f} s; rerun when it has finished")
        time.sleep(self.delay)
        self.delay = min(2.0, self.delay * 2)
        self.store.release_abandoned()

    def score(self, widths, role, score_fn, trials: int | None) -> Record | None:
        """Claim ``widths``, score it and record the result; None when another worker has it
        or the study filled up meanwhile."""
        space = self.optimizer.space
        (macs, params), limits = self.optimizer.cost(widths), self.optimizer.limits
        method = self.optimizer.name or type(self.optimizer).__name__
        if macs > limits.max_macs:  # the one place the hard limits are enforced
            raise SearchError(f"method '{method}' proposed {widths_key(widths)} with {macs} MACs, above the "
                              f"budget of {limits.max_macs}")
        if limits.table is not None and not limits.allows(space, widths):
            raise SearchError(f"method '{method}' proposed {widths_key(widths)} with a predicted "
                              f"{limits.predicted_ms(space, widths):.3f} ms, above the latency budget of "
                              f"{limits.max_ms:.3f} ms")
        trial_id = self.store.claim(widths, role, macs=macs, params=params, retry=self.retry,
                                    limit=trials, space=space)
        if trial_id == FULL:  # other workers filled the study since the replay
            return None
        if trial_id is None:  # another worker claimed it first
            self.attempt += 1
            return None
        self.repeats = self.attempt = 0
        start = time.perf_counter()
        try:
            result = score_fn(widths)
        except BaseException:
            # Interrupted (Ctrl-C) or crashed: release the claim so a rerun scores it again.
            self.store.finish(trial_id, None, STATUS_INTERRUPTED, "interrupted", time.perf_counter() - start)
            raise
        seconds = result.seconds or (time.perf_counter() - start)
        self.store.finish(trial_id, result.score, result.status, result.reason, seconds)
        self.optimizer.tell(widths, result.score, role)
        self.told.add(trial_id)
        if result.status == STATUS_OK:
            self.best = max(self.best, result.score)
        return Record(trial_id=trial_id, number=-1, widths=widths, role=role, status=result.status,
                      score=result.score, seconds=seconds, reason=result.reason)


def best_record(records: list[Record]) -> Record:
    """The best scored candidate (ties: the earlier trial); SearchError when none was scored."""
    ok = [r for r in records if r.status == STATUS_OK]
    if not ok:
        scored = [r for r in records if r.finished]
        reason = scored[-1].reason if scored else "no candidate was scored"
        raise SearchError(f"no candidate could be scored ({len(scored)} failed; last: {reason})")
    return max(ok, key=lambda r: (r.score, -r.trial_id))


@dataclasses.dataclass
class Held:
    """What the latency hold ends with: the winner, one dict per measurement (the last one's
    ``within`` says whether the winner holds the budget), how many candidates it scored, and
    the limits it ended with (the search's, its latency limit tightened where the hold did)."""

    best: Record
    steps: list[dict]
    scored: int = 0
    limits: Limits | None = None


def hold_latency(optimizer: Optimizer, score: Callable[[tuple[int, ...]], EvalResult], store: TrialStore,
                 model: nn.Module, *, tries: int = HOLD_TRIES, rounds: int = HOLD_ROUNDS) -> Held:
    """The winner of a search with a latency limit, measured to hold the budget on this device.

    The best candidate ``optimizer.limits`` allow is materialised and timed beside the base, at
    least ``rounds`` rounds of the table's statistic (:func:`measure_rounds`); a ratio latency
    budget is checked with the median over rounds of winner / base (each pair timed back to
    back), a time with the winner's own time. Where it runs over, the limits are
    :meth:`~autoprune.budget.Limits.tightened` to the winner's prediction divided by the excess
    (and times :data:`HOLD_MARGIN`): the table's error on this winner, learned from the
    measurement. The optimizer names the candidate for the tighter limits
    (:meth:`Optimizer.hold`: the winner repaired onto them, or a one-shot method's own rule),
    which is scored as one more candidate (role ``hold``, not counted toward the trials), and
    the best candidate the tighter limits allow is measured in turn, at most ``tries`` times. A
    rerun starts from the tightest limit an earlier hold reached (the least predicted latency
    of its candidates). The optimizer's own limits never change.
    """
    space, limits = optimizer.space, optimizer.limits
    budget = limits.latency_budget or Budget(limits.max_ms, "ms", f"{limits.max_ms}ms")
    known = _Known(store).update()
    earlier = [limits.predicted_ms(space, r.widths) for r in known.finished
               if r.role == HOLD_ROLE and r.status == STATUS_OK]
    if earlier:
        limits = limits.tightened(min(earlier))
    loop = _Loop(optimizer, store, optimizer.seed, Context(), None, WAIT_S)
    held = Held(_allowed_best(known.finished, space, limits) or best_record(known.finished), [], limits=limits)
    while True:
        step = _measure_held(limits, space, model, budget, held.best.widths, rounds)
        held.steps.append(step)
        if step["within"] or len(held.steps) > tries:
            return held
        try:
            limits = limits.tightened(step["predicted_ms"] / step["excess"] * HOLD_MARGIN)
            limits.check_reachable(space)
            widths = optimizer.hold(held.best.widths, np.random.default_rng([optimizer.seed, len(held.steps)]), limits)
        except BudgetError:  # not even the smallest network is predicted under the tighter limit
            return held
        held.limits = limits
        held.scored += _score_hold(loop, widths, score, known)
        best = _allowed_best(known.update().finished, space, limits)
        if best is None:  # the hold's candidate failed and no other one meets the tighter limit
            return held
        held.best = best


def _allowed_best(records: list[Record], space, limits: Limits) -> Record | None:
    """The best scored candidate ``limits`` allow; None if they allow none."""
    ok = [r for r in records if r.status == STATUS_OK and limits.allows(space, r.widths)]
    return best_record(ok) if ok else None


def _score_hold(loop: _Loop, widths, score, known: "_Known") -> int:
    """Score the hold's candidate unless the study has it; where another worker is scoring it,
    wait for its result. How many candidates this process scored (0 or 1)."""
    key = widths_key(widths)
    if key in known.update().keys:
        return 0
    if loop.score(widths, HOLD_ROLE, score, trials=None) is not None:
        return 1
    while key in known.update().running:
        loop.wait_for(known.running)
    return 0


class _Known:
    """The study's finished records and running claims, kept up to date from what changed
    since the last look (:meth:`TrialStore.changes`), not from every record."""

    def __init__(self, store: TrialStore):
        self.store, self.cursor = store, 0
        self.finished: list[Record] = []
        self.keys: set[str] = set()
        self.running: dict[str, Record] = {}

    def update(self) -> "_Known":
        new, running, self.cursor = self.store.changes(self.cursor)
        self.finished += [r for r in new if r.finished]
        self.keys.update(r.key for r in new if r.finished)
        self.running = {r.key: r for r in running}
        return self


def _measure_held(limits: Limits, space, model: nn.Module, budget: Budget, widths, rounds: int) -> dict:
    """One measurement of the hold: ``widths`` and the base timed back to back, round by round."""
    table = limits.table
    statistic = STATISTICS[table.key.get("statistic", "median")]
    runs = measure_rounds(table, model, space, [widths, space.max_widths()], rounds=max(rounds, table.key.get("rounds", 1)))
    pruned, base = statistic(runs[0]), statistic(runs[1])
    ratio = paired_ratio(*runs)
    excess = ratio / budget.value if budget.kind == "ratio" else pruned / budget.value
    return {"max_ms": limits.max_ms, "predicted_ms": limits.predicted_ms(space, widths), "measured_ms": pruned,
            "measured_base_ms": base, "measured_ratio": ratio, "measured_max_ms": budget.max_ms(base),
            "excess": excess, "within": bool(excess <= 1.0)}
