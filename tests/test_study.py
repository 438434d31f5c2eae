"""Trials in Optuna storage: resume without re-evaluation, several workers with no duplicates."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoprune.api import search
from autoprune.errors import SearchError
from autoprune.search.study import TrialStore

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
        search("resnet20", 0.4, method, objective=first, trials=10, out=tmp_path, seed=1)
    second = Counting()
    result = search("resnet20", 0.4, method, objective=second, trials=10, out=tmp_path, seed=1)
    assert len(first.calls) == 4
    assert len(second.calls) == 6, "the four finished trials must be kept, the interrupted one re-scored"
    assert not set(first.calls) & set(second.calls)
    assert len(result.trials) == 10 and all(t["status"] == "ok" for t in result.trials)
    # A finished study: a third run scores nothing and returns the same winner.
    third = Counting()
    again = search("resnet20", 0.4, method, objective=third, trials=10, out=tmp_path, seed=1)
    assert third.calls == [] and again.widths == result.widths
    assert (tmp_path / "arch.json").is_file() and (tmp_path / "trials.csv").read_text().count("\n") == 11


def test_same_seed_same_widths(tmp_path):
    a = search("resnet20", 0.3, "abc", objective="synthetic", trials=12, out=tmp_path / "a", seed=5)
    b = search("resnet20", 0.3, "abc", objective="synthetic", trials=12, out=tmp_path / "b", seed=5)
    assert a.widths == b.widths and [t["widths"] for t in a.trials] == [t["widths"] for t in b.trials]


WORKER = textwrap.dedent("""
    import json, sys, time
    from autoprune.api import search
    storage, log, method = sys.argv[1], sys.argv[2], sys.argv[3]
    seen = []
    def slow(widths):
        seen.append(list(widths))
        time.sleep(0.1)  # long enough that the two workers interleave
        return sum(w * (i % 3 + 1) for i, w in enumerate(widths)) / 1e4
    search("resnet20", 0.4, method, objective=slow, trials=10, storage=storage, study="shared",
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
        search("resnet20", 0.4, "random", objective="synthetic", trials=2, storage="nosuchdb://x/y", out=tmp_path / "o")
    url = f"sqlite:///{tmp_path / 's.db'}"
    search("resnet20", 0.4, "random", objective="synthetic", trials=2, storage=url, study="s", out=tmp_path / "o")
    with pytest.raises(SearchError, match="was made with max_macs"):
        search("resnet20", 0.2, "random", objective="synthetic", trials=2, storage=url, study="s", out=tmp_path / "o")


def test_failed_candidates_are_recorded_and_skipped(tmp_path):
    def flaky(widths):
        if widths[0] % 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return float(sum(widths))

    result = search("resnet20", 0.5, "random", objective=flaky, trials=8, out=tmp_path)
    statuses = {t["status"] for t in result.trials}
    assert "ok" in statuses
    for t in result.trials:
        if t["status"] == "failed":
            assert "out of memory" in t["reason"]
    assert result.widths[0] % 2 == 0
