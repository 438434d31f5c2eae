"""The search driver: ask, claim, score, record, tell — until the study holds enough trials.

The loop is the same for one worker and for many: before each ask it replays the trials
it has not yet told the optimizer (its own, other workers', and on resume all stored ones),
so every worker's optimizer is rebuilt from the shared study. A candidate is claimed in the
store before it is scored; a lost claim just means "ask again".

Failed candidates (out of memory, a non-finite loss) count toward ``trials`` only in the run
that scored them: a rerun leaves the failures it finds in the study out of the count and out
of the optimizer's replay, so it may propose and score those candidates again. The failed
records stay in the study (and in ``trials.csv``) as the history of what happened.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from autoprune import cost
from autoprune.errors import SearchError
from autoprune.search.base import Optimizer
from autoprune.search.evaluate import EvalResult
from autoprune.search.study import (STATUS_FAILED, STATUS_INTERRUPTED, STATUS_OK, STATUS_RUNNING, Record,
                                    TrialStore, widths_key)

# Consecutive proposals that were already scored before the driver gives up: the optimizer
# keeps re-proposing known vectors, i.e. it has converged or the space is exhausted.
MAX_REPEATS = 50
# How long a one-shot method waits for its candidate while another worker scores it.
WAIT_S = 3600.0


def run_search(optimizer: Optimizer, evaluate: Callable[[tuple[int, ...]], EvalResult], store: TrialStore, *,
               trials: int, seed: int = 0, progress=None, on_result=None, wait_s: float = WAIT_S) -> list[Record]:
    """Run until the study holds ``trials`` candidates (scored or being scored by any worker).

    ``evaluate`` maps widths to an :class:`EvalResult`; ``progress`` is an optional tqdm-like
    bar (``update``, ``set_postfix``); ``on_result(record)`` is called after each candidate
    this process scores. Returns every record of the study at the end.

    Failures already in the study when this run starts do not count and are not replayed,
    so their candidates may be scored again (see the module docstring). A one-shot method
    whose candidate another worker is scoring waits for that result (up to ``wait_s``
    seconds) instead of giving up. Every candidate is checked against the budget before it
    is claimed: SearchError if an optimizer proposes one above ``optimizer.max_macs``.
    """
    space = optimizer.space
    retry = frozenset(r.trial_id for r in store.records() if r.status == STATUS_FAILED)
    told: set[int] = set()
    repeats = 0
    attempt = 0
    best = float("-inf")
    waited_since, delay = None, 0.05
    if optimizer.one_shot:
        trials = min(trials, 1)
    while True:
        records = [r for r in store.records() if r.trial_id not in retry]
        for r in records:
            if r.finished and r.trial_id not in told:
                optimizer.tell(r.widths, r.score, r.role)
                told.add(r.trial_id)
                if r.score is not None:
                    best = max(best, r.score)
        running = {r.key: r for r in records if r.status == STATUS_RUNNING}
        active = [r for r in records if r.finished or r.status == STATUS_RUNNING]
        if progress is not None:
            progress.n = min(len(active), trials)
            progress.set_postfix(best=f"{best:.4f}" if best > float("-inf") else "-")
        if len(active) >= trials and not (optimizer.one_shot and running):
            break
        out = None
        if len(active) < trials:
            pending = [(r.widths, r.role) for r in running.values()]
            out = optimizer.ask(np.random.default_rng([seed, optimizer.n_told, attempt]), pending)
        if out is None or widths_key(out[0]) in running:
            if optimizer.one_shot and running:
                # Another worker is scoring the one candidate: wait for its result.
                waited_since = waited_since or time.monotonic()
                if time.monotonic() - waited_since > wait_s:
                    r = next(iter(running.values()))
                    raise SearchError(f"candidate {r.key} is still being scored by {r.worker or 'another worker'} "
                                      f"after {wait_s:.0f} s; rerun when it has finished")
                time.sleep(delay)
                delay = min(2.0, delay * 2)
                store.release_abandoned()
                continue
            if out is None:
                break
            attempt += 1
            continue
        widths, role = out
        key = widths_key(widths)
        macs = cost.macs(space, widths)
        if macs > optimizer.max_macs:
            raise SearchError(f"method '{optimizer.name or type(optimizer).__name__}' proposed {key} with "
                              f"{macs} MACs, above the budget of {optimizer.max_macs}")
        if any(r.finished and r.key == key for r in records):
            # Already scored in this study: the optimizer was told the result in the replay
            # above; ask again (a new rng) without scoring or telling anything.
            attempt += 1
            repeats += 1
            if repeats >= MAX_REPEATS:
                break
            continue
        trial_id = store.claim(widths, role, macs=macs, params=cost.params(space, widths), retry=retry)
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
