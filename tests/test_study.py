"""Trials in Optuna storage: resume without re-evaluation, several workers with no duplicates."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoprune.api import StudyConfig, search
from autoprune.errors import SearchError
from autoprune.study import TrialStore

ROOT = Path(__file__).resolve().parent.parent


class Counting:
    """A synthetic score that records every evaluation and can be made to stop mid-search."""

    def __init__(self, interrupt_at=None):
        self.calls = []
        self.interrupt_at = interrupt_at
        self.inner = None

    def __call__(self, widths):
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append(tuple(widths))
        return sum(w * (i + 1) for i, w in enumerate(widths)) / 1e4


@pytest.mark.parametrize("method", ["abc", "tpe"])
def test_resume_after_interruption_scores_nothing_twice(tmp_path, method):
    first = Counting(interrupt_at=4)
    with pytest.raises(KeyboardInterrupt):
        search("resnet20", 0.4, method, objective=first, study=StudyConfig(trials=10), out=tmp_path, seed=1)
    second = Counting()
    result = search("resnet20", 0.4, method, objective=second, study=StudyConfig(trials=10), out=tmp_path, seed=1)
    assert len(first.calls) == 4
    assert len(second.calls) == 6, "the four finished trials must be kept, the interrupted one re-scored"
    assert not set(first.calls) & set(second.calls)
    assert len(result.trials) == 10 and all(t["status"] == "ok" for t in result.trials)
    # A finished study: a third run scores nothing and returns the same winner.
    third = Counting()
    again = search("resnet20", 0.4, method, objective=third, study=StudyConfig(trials=10), out=tmp_path, seed=1)
    assert third.calls == [] and again.widths == result.widths
    assert (tmp_path / "arch.json").is_file() and (tmp_path / "trials.csv").read_text().count("\n") == 11


def test_same_seed_same_widths(tmp_path):
    a = search("resnet20", 0.3, "abc", objective="synthetic", study=StudyConfig(trials=12), out=tmp_path / "a", seed=5)
    b = search("resnet20", 0.3, "abc", objective="synthetic", study=StudyConfig(trials=12), out=tmp_path / "b", seed=5)
    assert a.widths == b.widths and [t["widths"] for t in a.trials] == [t["widths"] for t in b.trials]


WORKER = textwrap.dedent("""
    import json, sys, time
    from autoprune.api import StudyConfig, search
    storage, log, method = sys.argv[1], sys.argv[2], sys.argv[3]
    seen = []
    def slow(widths):
        seen.append(list(widths))
        time.sleep(0.1)  # long enough that the two workers interleave
        return sum(w * (i % 3 + 1) for i, w in enumerate(widths)) / 1e4
    search("resnet20", 0.4, method, objective=slow, study=StudyConfig(trials=10, storage=storage, name="shared"),
           out=sys.argv[4], seed=0)
    open(log, "w").write(json.dumps(seen))
""")


@pytest.mark.parametrize("kind, method", [("sqlite", "abc"), ("journal", "tpe")])
def test_two_workers_share_one_study(tmp_path, kind, method):
    import json

    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, url, str(tmp_path / f"w{i}.json"), method,
                               str(tmp_path / f"out{i}")], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    scored = [tuple(w) for i in range(2) for w in json.loads((tmp_path / f"w{i}.json").read_text())]
    assert len(scored) == len(set(scored)), "a candidate was evaluated twice"
    store = TrialStore(url, "shared", meta={})
    records = [r for r in store.records() if r.status == "ok"]
    assert len({r.key for r in records}) == len(records) == len(scored)
    assert 10 <= len(records) <= 11  # at most one extra: both workers may start the last one


def test_bad_storage_and_mismatched_study(tmp_path):
    with pytest.raises(SearchError, match="cannot open storage"):
        search("resnet20", 0.4, "random", objective="synthetic", study=StudyConfig(trials=2, storage="nosuchdb://x/y"),
               out=tmp_path / "o")
    url = f"sqlite:///{tmp_path / 's.db'}"
    shared = StudyConfig(trials=2, storage=url, name="s")
    search("resnet20", 0.4, "random", objective="synthetic", study=shared, out=tmp_path / "o")
    with pytest.raises(SearchError, match="was made with max_macs"):
        search("resnet20", 0.2, "random", objective="synthetic", study=shared, out=tmp_path / "o")


def test_failed_candidates_are_recorded_and_skipped(tmp_path):
    def flaky(widths):
        if widths[0] % 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return float(sum(widths))

    result = search("resnet20", 0.5, "random", objective=flaky, study=StudyConfig(trials=8), out=tmp_path)
    statuses = {t["status"] for t in result.trials}
    assert "ok" in statuses
    for t in result.trials:
        if t["status"] == "failed":
            assert "out of memory" in t["reason"]
    assert result.widths[0] % 2 == 0


def test_a_rerun_retries_failed_candidates(tmp_path):
    def oom(widths):
        raise RuntimeError("CUDA out of memory (simulated)")

    with pytest.raises(SearchError, match="no candidate could be scored"):
        search("resnet20", 0.5, "uniform", objective=oom, out=tmp_path / "u")
    again = search("resnet20", 0.5, "uniform", objective=lambda w: 1.0, out=tmp_path / "u")
    assert [t["status"] for t in again.trials] == ["failed", "ok"] and again.score == 1.0
    with pytest.raises(SearchError, match="no candidate could be scored"):
        search("resnet20", 0.5, "random", objective=oom, study=StudyConfig(trials=3), out=tmp_path / "r")
    counting = Counting()
    result = search("resnet20", 0.5, "random", objective=counting, study=StudyConfig(trials=3), out=tmp_path / "r")
    assert len(counting.calls) == 3 and [t["status"] for t in result.trials].count("ok") == 3


def test_study_of_another_objective_is_refused(tmp_path):
    search("resnet20", 0.4, "random", objective="synthetic", study=StudyConfig(trials=2), out=tmp_path)
    with pytest.raises(SearchError, match="was made with objective=synthetic, not callable"):
        search("resnet20", 0.4, "random", objective=Counting(), study=StudyConfig(trials=2), out=tmp_path)


def _store_and_space(tmp_path):
    from autoprune.budget import Limits
    from autoprune.models import create_model
    from autoprune.space import SearchSpace

    space = SearchSpace.from_model(create_model("resnet20"))
    return TrialStore(f"sqlite:///{tmp_path / 's.db'}", "s", meta={}), space, Limits.of(space, 0.5)


def test_over_budget_candidate_is_an_error_not_a_trial(tmp_path):
    from autoprune.driver import run_search
    from autoprune.optimizers import Optimizer

    class Greedy(Optimizer):  # bypasses the check in ask, as a third-party optimizer may
        def ask(self, rng, pending=()):
            return self.space.max_widths(), "greedy"

    store, space, limits = _store_and_space(tmp_path)
    with pytest.raises(SearchError, match="above the budget"):
        run_search(Greedy(space, limits), Counting(), store, trials=2)
    assert store.records() == []


def test_known_result_is_not_told_twice(tmp_path):
    """n_told seeds the rng: an extra tell on a cache hit would change what a resumed run asks."""
    from autoprune.driver import run_search
    from autoprune.evaluator import EvalResult
    from autoprune.optimizers import Optimizer
    from autoprune.study import STATUS_OK

    store, space, limits = _store_and_space(tmp_path)
    known, new = space.uniform(0.3), space.uniform(0.4)
    store.finish(store.claim(known, "x", macs=0, params=0), 0.5, STATUS_OK)

    class KnownFirst(Optimizer):
        calls = 0

        def propose(self, rng, pending):
            self.calls += 1
            return (known, "x") if self.calls == 1 else (new, "y")

    opt = KnownFirst(space, limits)
    run_search(opt, lambda w: EvalResult(1.0, "ok"), store, trials=2)
    assert opt.calls == 2 and opt.n_told == 2  # the stored result once, the new one once


@pytest.mark.parametrize("method", ["uniform", "fixed"])
def test_one_shot_waits_for_another_worker(tmp_path, method):
    import threading
    import time

    from autoprune.driver import run_search
    from autoprune.optimizers import Optimizer, get_optimizer
    from autoprune.study import STATUS_OK

    store, space, limits = _store_and_space(tmp_path)
    if method == "uniform":
        opt = get_optimizer("uniform")(space, limits)
    else:
        class Fixed(Optimizer):  # a one-shot method with a vector of its own (as dmcp derives one)
            one_shot = True

            def propose(self, rng, pending):
                return self.propose_once(space.uniform(0.5), "fixed", pending)

        opt = Fixed(space, limits)
    widths = opt.ask(__import__("numpy").random.default_rng(0))[0]
    other = TrialStore(f"sqlite:///{tmp_path / 's.db'}", "s", meta={})
    tid = other.claim(widths, "other", macs=0, params=0)  # another worker is scoring it
    threading.Timer(0.5, lambda: other.finish(tid, 0.75, STATUS_OK)).start()
    counting = Counting()
    start = time.monotonic()
    records = run_search(opt, counting, store, trials=1)
    assert counting.calls == [] and time.monotonic() - start >= 0.4
    assert [(r.status, r.score) for r in records] == [("ok", 0.75)]
