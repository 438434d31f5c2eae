"""The incremental reading of a study, and TPE's incremental history, against full rebuilds.

A store rereads only new and unfinished trials; its records, its change log and its claim
counts must equal what a full read of the study gives, whatever mix of finished, failed,
interrupted, lost and running claims two workers leave. TPE adds only new results to its
in-memory study; each proposal must equal that of a TPE rebuilt from every result.
"""

import time

import numpy as np
import pytest
import sqlalchemy

import autoprune.study
from autoprune.budget import Limits
from autoprune.cost import base_macs
from autoprune.evaluator import SyntheticObjective
from autoprune.models import create_model
from autoprune.optimizers import get_optimizer
from autoprune.space import SearchSpace
from autoprune.study import FULL, HOLD_ROLE, TrialStore, _record


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_model(create_model("resnet20"))


def _full(store) -> list:
    """Every record from a full read of the study (no cache of this process)."""
    out = [_record(t) for t in store.study.get_trials(deepcopy=True)]
    return [r for r in out if r is not None]


def _rows(records):
    return [(r.trial_id, r.widths, r.role, r.status, r.score) for r in records]


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_incremental_reads_equal_a_full_read(tmp_path, space, kind):
    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    workers = [TrialStore(url, "s", meta={}) for _ in range(2)]
    rng = np.random.default_rng(0)
    pool = [tuple(space.sample(rng)) for _ in range(12)]  # few vectors: claims collide often
    running = {0: [], 1: []}
    cursors, logs = [0, 0], [[], []]
    for step in range(70):
        w = int(rng.integers(2))
        store = workers[w]
        if running[w] and rng.random() < 0.5:
            number = running[w].pop(int(rng.integers(len(running[w]))))
            status = str(rng.choice(["ok", "ok", "failed", "interrupted"]))
            store.finish(number, float(rng.random()) if status == "ok" else None, status)
        else:
            widths = pool[int(rng.integers(len(pool)))]
            role = HOLD_ROLE if rng.random() < 0.1 else "random"
            retry = frozenset(int(x) for x in rng.integers(0, step + 1, size=2))
            number = store.claim(widths, role, macs=1, params=1, retry=retry, limit=40, space=space)
            full = _full(store)
            live = [r for r in full if r.trial_id not in retry and (r.finished or r.status == "running")]
            if number is None:
                assert any(r.key == "-".join(map(str, widths)) for r in live)
            elif number != FULL:
                running[w].append(number)
        for i, other in enumerate(workers):
            full = _full(other)
            assert _rows(other.records()) == _rows(full)
            new, live, cursors[i] = other.changes(cursors[i])
            logs[i] += new
            assert _rows(live) == _rows(r for r in full if r.status == "running")
            done = [r for r in full if r.status != "running"]
            assert sorted(_rows(logs[i])) == sorted(_rows(done)), "each finished record once in the change log"
    fresh = TrialStore(url, "s", meta={})
    assert _rows(fresh.records()) == _rows(workers[0].records()) == _rows(workers[1].records())
    for store in workers:
        for number in running[workers.index(store)]:
            store.finish(number, 0.5, "ok")


def test_claim_counts_equal_a_full_count(tmp_path, space):
    store = TrialStore(f"sqlite:///{tmp_path / 'study.db'}", "s", meta={})
    rng = np.random.default_rng(1)
    claimed = []
    while True:
        number = store.claim(tuple(space.sample(rng)), "random", macs=1, params=1, limit=9, space=space)
        if number == FULL:
            break
        claimed.append(number)
        if len(claimed) % 3:
            store.finish(number, 0.1, "failed" if len(claimed) % 2 else "ok")
    assert len(claimed) == 9
    failed = frozenset(r.trial_id for r in store.records() if r.status == "failed")
    # The failures retried by a rerun do not count: as many claims again as there were failures.
    more = [store.claim(tuple(space.sample(rng)), "random", macs=1, params=1, limit=9, retry=failed, space=space)
            for _ in range(len(failed) + 1)]
    assert more[-1] == FULL and FULL not in more[:-1]
    trial = store.study.get_trials()[claimed[0]]
    assert len(trial.params) == len(space.choices)  # the params written in one insert are Optuna's


def _cycle(store, space, rng, cursor):
    """One candidate's bookkeeping: the driver's read of changes, a claim, a finish."""
    _, _, cursor = store.changes(cursor)
    number = store.claim(tuple(space.sample(rng)), "random", macs=1, params=1, space=space)
    store.finish(number, float(rng.random()), "ok")
    return cursor


def test_sql_bookkeeping_is_a_fixed_number_of_statements(tmp_path, space):
    store = TrialStore(f"sqlite:///{tmp_path / 'study.db'}", "s", meta={})
    statements, rows = [], []
    sqlalchemy.event.listen(store.storage.engine, "before_cursor_execute",
                            lambda *args: statements.append(args[2].split()[0]))
    read = store._sql.read
    store._sql.read = lambda *a: rows.append(len(out := read(*a))) or out
    rng, cursor = np.random.default_rng(3), 0
    per_cycle = []
    for _ in range(60):
        statements.clear(), rows.clear()
        cursor = _cycle(store, space, rng, cursor)
        per_cycle.append((len(statements), sum(rows)))
    # The same statements in the 60th candidate as in the 2nd, each read returning only the
    # trial that changed since the last one: the bookkeeping does not grow with the study.
    assert set(per_cycle[1:]) == {per_cycle[1]}
    assert per_cycle[1][0] <= 16 and per_cycle[1][1] == 1
    trials = store.study.get_trials()
    assert [t.number for t in trials] == list(range(60)), "numbered as Optuna numbers them"


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_records_are_built_only_for_changed_trials(tmp_path, space, kind, monkeypatch):
    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    store, other = TrialStore(url, "s", meta={}), TrialStore(url, "s", meta={})
    built = []
    for name in ("_record", "_record_of"):
        inner = getattr(autoprune.study, name)
        monkeypatch.setattr(autoprune.study, name, lambda *a, inner=inner: built.append(1) or inner(*a))
    rng, cursors = np.random.default_rng(4), [0, 0]
    for i in range(40):
        cursors[i % 2] = _cycle((store, other)[i % 2], space, rng, cursors[i % 2])
    built.clear()
    new, _, cursors[0] = store.changes(cursors[0])
    # Only what the other worker finished since this store's last read, and this store's own
    # last finish: not the 40 trials of the study.
    assert len(new) == 2 and len(built) <= 2 * (1 + (kind == "journal"))


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_a_live_claim_keeps_its_heartbeat_and_is_not_reclaimed(tmp_path, space, kind):
    url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else f"journal:{tmp_path / 'study.log'}"
    store = TrialStore(url, "s", meta={}, heartbeat_timeout=0.4)
    number = store.claim(tuple(space.sample(np.random.default_rng(5))), "random", macs=1, params=1, space=space)
    first = store.study.get_trials()[number].system_attrs["autoprune:heartbeat"]
    time.sleep(1.0)  # several heartbeat intervals (0.1 s), two and a half timeouts
    other = TrialStore(url, "s", meta={}, heartbeat_timeout=0.4)
    other.worker = "another-host:1"  # judges the claim by its heartbeat alone
    other.release_abandoned()
    trial = store.study.get_trials()[number]
    assert trial.system_attrs["autoprune:heartbeat"] > first and not other.reclaimed
    store.finish(number, 0.5, "ok")
    assert store.study.get_trials()[number].state.is_finished()


def _tpe_run(space, max_macs, steps, lag, **options):
    """(proposals, optimizer) of one TPE told its results ``lag`` asks late, and the proposals
    a fresh TPE told the same results makes at each ask (its study built from all of them)."""
    obj = SyntheticObjective(space, seed=0)
    opt = get_optimizer("tpe")(space, Limits(max_macs), seed=0, **options)
    told, inflight, got, rebuilt = [], [], [], []
    for i in range(steps):
        fresh = get_optimizer("tpe")(space, Limits(max_macs), seed=0, **options)
        for w, s, r in told:
            fresh.tell(w, s, r)
        rebuilt.append(fresh.ask(np.random.default_rng([0, i]), inflight))
        got.append(opt.ask(np.random.default_rng([0, i]), inflight))
        inflight.append(got[-1])
        if len(inflight) > lag:
            w, r = inflight.pop(0)
            s = None if i % 5 == 4 else obj(w).score
            opt.tell(w, s, r)
            told.append((w, s, r))
    return got, rebuilt, opt


@pytest.mark.parametrize("lag", [0, 2])
def test_tpe_incremental_proposes_what_a_rebuilt_tpe_proposes(space, lag):
    max_macs = int(0.3 * base_macs(space))
    got, rebuilt, _ = _tpe_run(space, max_macs, 30, lag)
    assert got == rebuilt


@pytest.mark.parametrize("lag", [0, 2])
def test_tpe_repeats_are_dropped_without_a_rebuild(lag):
    # Three widths per group: TPE often samples vectors that repair onto scored ones. Each is
    # told its known score for the rest of its ask, then dropped: the proposals stay those of
    # a rebuilt study, and the incremental study is never rebuilt for it.
    space = SearchSpace.from_model(create_model("resnet20"), step=0.5, min_ratio=0.25)
    got, rebuilt, opt = _tpe_run(space, int(0.3 * base_macs(space)), 30, lag)
    assert got == rebuilt
    assert opt.dropped > 0 and opt.rebuilds == 0


def test_tpe_bounded_history_keeps_the_best_and_the_latest(space):
    max_macs = int(0.3 * base_macs(space))
    _, _, opt = _tpe_run(space, max_macs, 0, 0, history=50)
    rng = np.random.default_rng(2)
    for i in range(120):
        w = opt.random_feasible(rng)
        opt.tell(w, float(i % 37) if i % 9 else None, "random")
    kept = opt._kept()
    scores = sorted((s for _, s in opt.history if s is not None), reverse=True)
    assert len(kept) == 50 and kept[-25:] == opt.history[-25:]
    assert sorted((s for _, s in kept if s is not None), reverse=True)[:25] == scores[:25]
    opt.ask(np.random.default_rng(0))
    assert len(opt._study.get_trials(deepcopy=False)) <= 75 + 1
    with pytest.raises(ValueError):
        get_optimizer("tpe")(space, Limits(max_macs), history=10)
