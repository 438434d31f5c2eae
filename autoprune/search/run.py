"""The search driver: ask, claim, score, record, tell — until the study holds enough trials.

The loop is the same for one worker and for many: before each ask it replays the trials
it has not yet told the optimizer (its own, other workers', and on resume all stored ones),
so every worker's optimizer is rebuilt from the shared study. A candidate is claimed in the
store before it is scored; a lost claim just means "ask again".
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from autoprune import cost
from autoprune.search.base import Optimizer
from autoprune.search.evaluate import EvalResult
from autoprune.search.study import STATUS_INTERRUPTED, STATUS_OK, STATUS_RUNNING, Record, TrialStore, widths_key

# Consecutive proposals that were already scored before the driver gives up: the optimizer
# keeps re-proposing known vectors, i.e. it has converged or the space is exhausted.
MAX_REPEATS = 50


def run_search(optimizer: Optimizer, evaluate: Callable[[tuple[int, ...]], EvalResult], store: TrialStore, *,
               trials: int, seed: int = 0, progress=None, on_result=None) -> list[Record]:
    """Run until the study holds ``trials`` candidates (finished or being scored by any worker).

    ``evaluate`` maps widths to an :class:`EvalResult`; ``progress`` is an optional tqdm-like
    bar (``update``, ``set_postfix``); ``on_result(record)`` is called after each candidate
    this process scores. Returns every record of the study at the end.
    """
    space = optimizer.space
    told: set[int] = set()
    repeats = 0
    attempt = 0
    best = float("-inf")
    if optimizer.one_shot:
        trials = min(trials, 1)
    while True:
        records = store.records()
        for r in records:
            if r.finished and r.trial_id not in told:
                optimizer.tell(r.widths, r.score, r.role)
                told.add(r.trial_id)
                if r.score is not None:
                    best = max(best, r.score)
        active = [r for r in records if r.finished or r.status == STATUS_RUNNING]
        if progress is not None:
            progress.n = min(len(active), trials)
            progress.set_postfix(best=f"{best:.4f}" if best > float("-inf") else "-")
        if len(active) >= trials:
            break
        running = {r.key for r in records if r.status == STATUS_RUNNING}
        finished = {r.key: r for r in records if r.finished}
        pending = [(r.widths, r.role) for r in records if r.status == STATUS_RUNNING]
        rng = np.random.default_rng([seed, optimizer.n_told, attempt])
        out = optimizer.ask(rng, pending)
        if out is None:
            break
        widths, role = out
        key = widths_key(widths)
        if key in finished:
            # Already scored (by this study): the optimizer learns the known result as a
            # cache hit, and nothing is evaluated again.
            known = finished[key]
            optimizer.tell(widths, known.score, role)
            attempt += 1
            repeats += 1
            if repeats >= MAX_REPEATS:
                break
            continue
        if key in running:
            attempt += 1
            continue
        trial_id = store.claim(widths, role, macs=cost.macs(space, widths), params=cost.params(space, widths))
        if trial_id is None:  # another worker claimed it first
            attempt += 1
            continue
        repeats, attempt = 0, 0
        start = time.perf_counter()
        try:
            result = evaluate(widths)
        except BaseException:
            # Interrupted (Ctrl-C) or crashed: release the claim so a rerun scores it again.
            store.finish(trial_id, None, STATUS_INTERRUPTED, "interrupted", time.perf_counter() - start)
            raise
        seconds = result.seconds or (time.perf_counter() - start)
        store.finish(trial_id, result.score, result.status, result.reason, seconds)
        optimizer.tell(widths, result.score, role)
        told.add(trial_id)
        if result.status == STATUS_OK:
            best = max(best, result.score)
        if on_result is not None:
            on_result(Record(trial_id=trial_id, number=-1, widths=widths, role=role, status=result.status,
                             score=result.score, seconds=seconds, reason=result.reason))
    return store.records()
