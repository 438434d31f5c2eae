"""Every evaluated candidate is an Optuna trial: the record, the resume point and the lock.

A trial's user attributes hold the candidate (``widths``, ``key``), its cost (``macs``,
``params``), the optimizer's ``role`` and the outcome, ``result`` = {``score``, ``status``,
``reason``, ``seconds``}. The trial value is the score (maximised).

Claiming. Before a worker scores a candidate it creates a RUNNING trial that carries the
candidate's key *in the same storage write* (one transaction on an RDB storage, see
:mod:`autoprune.study_sql`; ``create_new_trial`` with a template on others). Where no
:class:`ClaimLock` orders the claims, it then reads the trials back: if an earlier-created
trial (smaller trial id) holds the same key and is running or finished, the claim is lost and
closed as a duplicate. Because every storage
orders trial creation (SQLite serialises writes; a journal file is an append-only log), of
two workers that claim one key at once exactly the first-created wins — the later one
always sees it, and the earlier one may not see the later one but wins anyway.

Reading. A finished trial never changes again, so a store keeps the records of finished
trials and rereads only the trials that were new or running at its last read (in SQL on an
RDB storage; on others through the study, whose storage itself fetches only those); the
driver asks for what finished since its last look (:meth:`TrialStore.changes`) and a claim
counts from the same view. A candidate's bookkeeping therefore costs about the same in the
ten-thousandth trial as in the first.

Storage: an Optuna RDB URL (``sqlite:///out/study.db``, the default, or a server database)
or a journal file (``journal:PATH``, or a path ending in ``.log`` / ``.journal``) for
file systems where SQLite locking is unreliable (NFS).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import os
import random
import socket
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import sqlalchemy
import sqlalchemy.event
import sqlalchemy.pool
from optuna.distributions import IntDistribution
from optuna.storages import RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import SearchError, one_line
from autoprune.study_sql import SQLTrials

STATUS_OK, STATUS_FAILED, STATUS_RUNNING = "ok", "failed", "running"
STATUS_DUPLICATE, STATUS_INTERRUPTED = "duplicate", "interrupted"
# The role of a candidate the latency hold adds after the search (see autoprune.driver): it
# does not count toward a study's trials.
HOLD_ROLE = "hold"
# Settings that make scores comparable: a study made with other values is refused, so that
# a rerun into the same folder never mixes incomparable scores. Keys absent from an older
# study are not checked.
_META_KEYS = ("model", "space", "max_macs", "method", "seed", "objective", "fine_tune_steps", "bn_batches",
              "eval_batch_size", "lr", "keep", "dataset", "split_seed", "val_size", "limit", "input_shape", "base",
              "latency")


_SCHEMA_RACE = ("already exists", "unique", "duplicate key", "locked", "deadlock")
DEFAULT_HEARTBEAT_TIMEOUT = 300.0


def widths_key(widths) -> str:
    return "-".join(str(int(w)) for w in widths)


@dataclass
class Record:
    """One stored candidate, as the search driver and the reports see it."""

    trial_id: int
    number: int
    widths: tuple[int, ...]
    role: str
    status: str
    score: float | None = None
    macs: int = 0
    params: int = 0
    seconds: float = 0.0
    reason: str = ""
    worker: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return widths_key(self.widths)

    @property
    def finished(self) -> bool:
        return self.status in (STATUS_OK, STATUS_FAILED)

    def row(self) -> dict:
        return {"trial": self.number, "status": self.status, "score": self.score, "macs": self.macs,
                "params": self.params, "role": self.role, "seconds": round(self.seconds, 3),
                "widths": " ".join(map(str, self.widths)), "reason": self.reason, "worker": self.worker}


def journal_path(url: str) -> str | None:
    """The file of a journal storage URL (``journal:PATH`` or a ``.log`` path); None for others."""
    url = str(url)
    if url.startswith("journal:"):
        journal = url[len("journal:"):]
        return journal[2:] if journal.startswith("///") else journal
    if "://" not in url and url.endswith((".log", ".journal", ".jsonl")):
        return url
    return None


def storage_path(url: str) -> Path | None:
    """The local file (resolved) that a journal or SQLite storage URL names; None for a server."""
    journal = journal_path(url)
    if journal is not None:
        return Path(journal).expanduser().resolve()
    if str(url).startswith("sqlite:///"):
        path = str(url).split(":///", 1)[-1]
        return Path(path).expanduser().resolve() if path and path != ":memory:" else None
    return None


def open_storage(url: str):
    """An Optuna storage for ``url``; SearchError with one line when it cannot be opened."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = str(url)
    journal = journal_path(url)
    try:
        if journal is not None:
            parent = Path(journal).expanduser().resolve().parent
            if not parent.is_dir():
                raise OSError(f"directory {parent} does not exist")
            return JournalStorage(JournalFileBackend(str(Path(journal).expanduser())))
        if "://" not in url:
            raise ValueError("not a storage URL (expected e.g. sqlite:///out/study.db or journal:PATH)")
        kwargs = {}
        if url.startswith("sqlite:"):
            path = url.split(":///", 1)[-1]
            if path and path != ":memory:" and not Path(path).expanduser().resolve().parent.is_dir():
                raise OSError(f"directory {Path(path).parent} does not exist")
            # Several workers write to one file: wait for the lock rather than fail at once.
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    storage = optuna.storages.RDBStorage(url, **kwargs)
                if url.startswith("sqlite:"):
                    _write_ahead(storage.engine)
                return storage
            except Exception as exc:  # noqa: BLE001
                # Workers started together on one new database race to create the schema; the
                # losers fail ("table already exists", "UNIQUE constraint failed" on SQLite,
                # UniqueViolation on pg_type in PostgreSQL) and succeed on a second try.
                if attempt == 4 or not any(m in str(exc).lower() for m in _SCHEMA_RACE):
                    raise
                time.sleep(0.2 + random.random())
    except Exception as exc:  # noqa: BLE001 — drivers raise anything; the user needs one line
        raise SearchError(f"cannot open storage '{url}': {one_line(exc)[:200]}") from None


def _write_ahead(engine) -> None:
    """SQLite in write-ahead-log mode, synced at checkpoints rather than at every commit.

    Each candidate commits four times (claim, params, result, state); with SQLite's default
    rollback journal each commit waits for the disk twice, which on a busy disk was most of
    a candidate's bookkeeping. In WAL mode a crash of the process loses nothing committed; a
    crash of the machine may lose the last commits (candidates then scored again), never the
    file. Readers and the writer no longer block each other. WAL needs a local file system
    (as the claim lock does): on NFS use a journal file.
    """
    @sqlalchemy.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection, _record):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    engine.dispose()  # connections opened while creating the schema reconnect with the pragmas


class TrialStore:
    """One study in one storage, seen as a list of :class:`Record` with claim / finish.

    ``meta`` (model, space, budget, method, seed, the evaluator settings, the data split and
    a hash of the base checkpoint; see ``_META_KEYS``) is written into a new study and
    checked against an existing one, so that a rerun with other settings cannot silently mix
    its candidates into a study of a different search.
    """

    def __init__(self, storage, study_name: str, *, meta: dict, heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT):
        if not (isinstance(heartbeat_timeout, (int, float)) and heartbeat_timeout > 0):
            raise SearchError(f"heartbeat timeout must be a positive number of seconds, got {heartbeat_timeout!r}")
        self.lock = ClaimLock(storage, study_name) if isinstance(storage, str) else ClaimLock(None, study_name)
        if isinstance(storage, str):
            storage = open_storage(storage)
        self.storage = storage
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.reclaimed: list[int] = []  # claims of dead workers this process failed and re-queued
        self._view = _View()
        self._ids: dict[int, int] = {}  # storage trial id of each claim of this process, by number
        try:
            self.study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                             load_if_exists=True)
        except Exception as exc:  # noqa: BLE001
            raise SearchError(f"cannot open study '{study_name}': {one_line(exc)[:200]}") from None
        self.study_id = storage.get_study_id_from_name(study_name)
        self.name = study_name
        # RDB storages: each step of a claim's life in one transaction (see autoprune.study_sql).
        self._sql = SQLTrials(storage, self.study_id) if isinstance(storage, RDBStorage) else None
        self._beat = _Heartbeat(self._sql.beat if self._sql is not None else self._stamp, self.heartbeat_timeout / 4)
        self._check_meta(meta)
        self._close_abandoned()

    def _check_meta(self, meta: dict) -> None:
        stored = self.study.user_attrs
        if not stored.get("autoprune"):
            for k, v in meta.items():
                self.study.set_user_attr(k, v)
            self.study.set_user_attr("autoprune", True)
            return
        for k in _META_KEYS:
            if k in meta and k in stored and stored[k] != meta[k]:
                shown = lambda v: v if len(str(v)) < 40 else f"{str(v)[:37]}..."  # noqa: E731
                raise SearchError(f"study '{self.name}' was made with {k}={shown(stored[k])}, not {shown(meta[k])}; "
                                  "use another --study name or --out folder")

    def release_abandoned(self) -> None:
        """Close the claims of dead workers (see :meth:`_close_abandoned`)."""
        self._close_abandoned()

    def _close_abandoned(self) -> None:
        """Re-queue RUNNING claims whose worker is dead: a process of this host that no longer
        exists, or a worker anywhere whose heartbeat is older than ``heartbeat_timeout``.

        A killed worker cannot close its claim; without this its candidate stays claimed for
        ever. The claim is closed as pruned with status ``interrupted`` (not a failure), so
        the candidate is claimed and scored again.
        """
        host, now = socket.gethostname(), time.time()
        for t in self._trials((TrialState.RUNNING,)):
            owner = t.system_attrs.get("autoprune:worker", "")
            if owner == self.worker:
                continue
            h, _, pid = owner.rpartition(":")
            beat = t.system_attrs.get("autoprune:heartbeat")
            if h == host and pid.isdigit() and not _pid_alive(int(pid)):
                reason = f"worker {owner} ended"
            elif isinstance(beat, (int, float)) and now - beat > self.heartbeat_timeout:
                reason = f"no heartbeat from worker {owner} for {now - beat:.0f} s"
            else:
                continue
            try:
                if not self._close(t.number, TrialState.PRUNED, None, STATUS_INTERRUPTED, reason):
                    continue  # another worker closed it first (or its owner finished)
            except Exception:  # noqa: BLE001 — the same, seen as a storage error
                continue
            self.reclaimed.append(t.number)

    # -- reading ---------------------------------------------------------------------------
    def _trials(self, states=None) -> list[FrozenTrial]:
        # Through the study: Optuna caches finished trials there, which keeps the
        # per-candidate re-read of the study cheap. Trial numbers follow creation order.
        trials = self.study.get_trials(deepcopy=False, states=states)
        return sorted(trials, key=lambda t: t.number)

    def records(self) -> list[Record]:
        """Every candidate trial in creation order (claims lost to another worker left out).

        A record's ``trial_id`` is the trial's number in the study (unique, in creation order).
        """
        self._sync()
        view = self._view
        return sorted([r for r in view.done.values() if r is not None] + list(view.running.values()),
                      key=lambda r: r.trial_id)

    def changes(self, cursor: int = 0) -> tuple[list[Record], list[Record], int]:
        """What changed since ``cursor``: (records finished since then, in the order this
        process saw them finish, creation order within one read; every running record; the
        cursor to pass next time). Cursor 0 gives every finished record. Only trials that
        were running or new at the last read are read again: a finished trial never changes.
        """
        self._sync()
        view = self._view
        return view.log[cursor:], sorted(view.running.values(), key=lambda r: r.trial_id), len(view.log)

    def _sync(self) -> None:
        """Bring the view up to date, reading only the trials that are new or were running at
        the last read: through SQL on an RDB storage, else through the study, whose storage
        caches finished trials and reads only newer or unfinished ones."""
        if self._sql is not None:
            self._view.update_rows(self._sql.read(self._view.after, self._view.open_ids()))
        else:
            self._view.update_trials(self.study.get_trials(deepcopy=False))

    # -- writing ---------------------------------------------------------------------------
    def claim(self, widths, role: str, *, macs: int, params: int, retry: frozenset = frozenset(),
              limit: int | None = None, space=None) -> int | None:
        """Create a RUNNING trial for ``widths``: its number; None if another worker has the
        candidate; :data:`FULL` if the study already holds ``limit`` candidates (the latency
        hold's, role :data:`HOLD_ROLE`, do not count).

        Count, duplicate check and creation happen under :class:`ClaimLock`, so that workers
        never exceed ``limit`` together. A failed earlier trial of the same candidate does not
        block the claim (nor count) when its number is in ``retry`` (failures from before this
        run, which a rerun scores again). With ``space``, the trial carries one integer index
        per group as Optuna ``params``, for optuna-dashboard's views.
        """
        key = widths_key(widths)
        with self.lock.held():
            if self.lock.kind is not None or limit is not None:
                self._sync()
                if limit is not None and self._view.counted(retry) >= limit:
                    return FULL
                if self._view.holds(key, retry):
                    return None
            names, dists = trial_params(space, widths) if space is not None else ({}, {})
            user = {"widths": [int(w) for w in widths], "key": key, "role": role, "macs": int(macs),
                    "params": int(params)}
            system = {"autoprune:key": key, "autoprune:worker": self.worker, "autoprune:heartbeat": time.time()}
            if self._sql is not None:
                trial_id, number = self._sql.create(user, system, names, dists)
            else:
                trial_id = self.storage.create_new_trial(self.study_id, template_trial=FrozenTrial(
                    number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(),
                    datetime_complete=None, params=names, distributions=dists, user_attrs=user,
                    system_attrs=system, intermediate_values={}, trial_id=-1))
                number = self.storage.get_trial_number_from_id(trial_id)
        self._ids[number] = trial_id
        if self.lock.kind is None and self._lost(number, key, retry):
            return None
        self._beat.add(trial_id)
        return number

    def _stamp(self, trial_ids, stamp: float) -> None:
        for trial_id in trial_ids:  # through the storage: one write each
            try:
                self.storage.set_trial_system_attr(trial_id, "autoprune:heartbeat", stamp)
            except Exception:  # noqa: BLE001 — finished meanwhile
                continue

    def _lost(self, number: int, key: str, retry) -> bool:
        """Without a lock: did an earlier-created trial claim ``key``? (then close ours)."""
        for t in self._trials():
            if t.number >= number:
                break
            if t.system_attrs.get("autoprune:key") != key or t.number in retry:
                continue
            status = (t.user_attrs.get("result") or {}).get("status")
            if t.state == TrialState.RUNNING or status in (STATUS_OK, STATUS_FAILED):
                self._close(number, TrialState.PRUNED, None, STATUS_DUPLICATE, f"claimed by trial {t.number}")
                return True
        return False

    def finish(self, trial_id: int, score: float | None, status: str, reason: str = "", seconds: float = 0.0) -> None:
        """Record the outcome of claim ``trial_id`` (an interrupted one is pruned, not failed)."""
        self._beat.discard(self._ids.get(trial_id))
        state = {STATUS_OK: TrialState.COMPLETE, STATUS_INTERRUPTED: TrialState.PRUNED}.get(status, TrialState.FAIL)
        if not self._close(trial_id, state, score, status, reason, seconds):
            # Another worker re-queued this claim (our heartbeat was late): the candidate will
            # be scored again there, and this result is dropped rather than written twice.
            warnings.warn(f"trial {trial_id} was re-queued by another worker before it finished here", stacklevel=2)

    def _id_of(self, number: int) -> int:
        if number in self._ids:
            return self._ids[number]
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _close(self, number: int, state: TrialState, score, status: str, reason: str, seconds: float = 0.0) -> bool:
        """Finish trial ``number``; False when it was already finished (by another worker)."""
        trial_id = self._id_of(number)
        # One attribute for the whole outcome: each storage write is a transaction.
        result = {"score": score, "status": status, "reason": reason[:500], "seconds": round(float(seconds), 4)}
        if self._sql is not None:
            return self._sql.close(trial_id, state, score, result)
        try:
            self.storage.set_trial_user_attr(trial_id, "result", result)
            self.storage.set_trial_state_values(trial_id, state, [float(score)] if state == TrialState.COMPLETE else None)
        except Exception:  # noqa: BLE001
            if not self.storage.get_trial(trial_id).state.is_finished():
                raise
            return False
        return True


FULL = -1  # claim(): the study already holds the asked-for number of candidates


def _record(t: FrozenTrial) -> Record | None:
    """The record of trial ``t``; None for a trial that is no candidate or a lost claim."""
    return _record_of(t.number, t.state, t.user_attrs, t.system_attrs.get("autoprune:worker", ""))


def _record_of(number: int, state: TrialState, ua: dict, worker: str) -> Record | None:
    if "widths" not in ua:
        return None
    res = ua.get("result") or {}
    status = STATUS_RUNNING if state == TrialState.RUNNING else res.get("status", STATUS_FAILED)
    if status == STATUS_DUPLICATE:
        return None
    return Record(trial_id=number, number=number, widths=tuple(ua["widths"]), role=ua.get("role", ""),
                  status=status, score=res.get("score"), macs=ua.get("macs", 0), params=ua.get("params", 0),
                  seconds=res.get("seconds", 0.0), reason=res.get("reason", ""), worker=worker)


class _View:
    """What a process knows of its study, kept up to date by :meth:`TrialStore._sync`.

    ``done``: every finished trial's record by number (None: no candidate); ``log``: the
    candidate records in the order they were seen finished; ``open``: numbers seen
    unfinished, with their storage trial ids; ``running``: their records; ``seen``: trials
    0..seen-1 were read at least once; ``after``: the largest storage trial id read. ``keys``
    and ``n_counted`` (scored candidates that count toward the trials) answer the claim's
    questions without a pass over the study.
    """

    def __init__(self):
        self.done: dict[int, Record | None] = {}
        self.log: list[Record] = []
        self.open: dict[int, int | None] = {}
        self.running: dict[int, Record] = {}
        self.seen, self.after = 0, -1
        self.keys: dict[str, list[int]] = {}
        self.n_counted = 0

    def open_ids(self) -> list[int]:
        return list(self.open.values())

    def update_trials(self, trials: list[FrozenTrial]) -> None:
        """From the study's every trial (by number): only the new and the unfinished are read."""
        if trials and trials[-1].number != len(trials) - 1:  # numbers are 0..n-1; guard anyway
            trials = {t.number: t for t in trials}
            top = max(trials) + 1
        else:
            top = len(trials)
        for n in sorted(self.open) + list(range(self.seen, top)):
            t = trials[n] if n < top and (isinstance(trials, list) or n in trials) else None
            if t is not None:
                self.update(n, None, t.state, _record(t))  # ids are the SQL reads' only
        self.seen = max(self.seen, top)

    def update_rows(self, rows) -> None:
        """From :meth:`SQLTrials.read` rows: the new and the unfinished trials, in creation order."""
        for trial_id, n, state, user_attrs, worker in rows:
            self.update(n, trial_id, state, _record_of(n, state, user_attrs, worker))
            self.after = max(self.after, trial_id)

    def update(self, n: int, trial_id: int | None, state: TrialState, record: Record | None) -> None:
        if state.is_finished():
            self.finish(n, record)
        else:
            self.open[n] = trial_id
            if record is not None:
                self.running[n] = record

    def finish(self, n: int, record: Record | None) -> None:
        self.open.pop(n, None)
        self.running.pop(n, None)
        self.done[n] = record
        if record is None:
            return
        self.log.append(record)
        if record.finished:
            self.keys.setdefault(record.key, []).append(n)
            self.n_counted += record.role != HOLD_ROLE

    def counted(self, retry) -> int:
        """Candidates scored or being scored that count toward the trials (``retry`` left out)."""
        retried = sum(1 for n in retry if (r := self.done.get(n)) is not None and r.finished and r.role != HOLD_ROLE)
        return self.n_counted - retried + sum(1 for n, r in self.running.items() if r.role != HOLD_ROLE and n not in retry)

    def holds(self, key: str, retry) -> bool:
        """Is ``key`` scored (outside ``retry``) or being scored?"""
        return (any(n not in retry for n in self.keys.get(key, ()))
                or any(r.key == key and n not in retry for n, r in self.running.items()))


def trial_params(space, widths) -> tuple[dict, dict]:
    """Optuna ``params`` and ``distributions`` of ``widths``: each group's index into its
    allowed widths, as an integer in [0, number of choices - 1] named after the group."""
    names = list(space.names)
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    params, dists = {}, {}
    for name, w, choices in zip(names, widths, space.choices):
        params[name] = list(choices).index(int(w))
        dists[name] = IntDistribution(0, len(choices) - 1)
    return params, dists


class ClaimLock:
    """The lock that makes count-and-create one step for every worker of a study.

    PostgreSQL: a session advisory lock keyed by the study name (released by the server if
    the worker dies); SQLite and journal files: ``flock`` on a file beside the storage file
    (released by the kernel if the worker dies). Other storages have none (``kind`` None):
    claims then fall back to create-then-check, which never scores a candidate twice but
    may exceed the trial count by up to one per worker.
    """

    def __init__(self, url: str | None, study_name: str):
        self.kind, self.path, self.engine, self.conn = None, None, None, None
        self.key = int.from_bytes(hashlib.sha1(study_name.encode()).digest()[:8], "big", signed=True)
        file = storage_path(url) if url is not None else None
        if file is not None:
            self.kind, self.path = "file", file.with_name(file.name + ".claim-lock")
        elif url is not None and url.startswith(("postgresql", "postgres:")):
            self.kind = "postgresql"
            self.engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                                   isolation_level="AUTOCOMMIT")

    @contextlib.contextmanager
    def held(self):
        if self.kind == "file":
            with open(self.path, "a") as f:
                fcntl.flock(f, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(f, fcntl.LOCK_UN)
        elif self.kind == "postgresql":
            conn = self._locked()
            try:
                yield
            finally:
                try:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                except sqlalchemy.exc.DBAPIError:  # the session is gone, and its lock with it
                    with contextlib.suppress(Exception):
                        conn.close()
                    self.conn = None
        else:
            yield

    def _locked(self):
        """The lock's connection, kept open between claims (a new one per claim was a server
        process start each time), with the lock taken; reconnects once if it was lost."""
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = self.engine.connect()
                self.conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self.key})
                return self.conn
            except sqlalchemy.exc.DBAPIError:
                if attempt or self.conn is None:
                    raise
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.conn = None


class _Heartbeat:
    """One thread per store that stamps ``autoprune:heartbeat`` on every running claim of this
    process every ``interval`` s, through ``beat(trial_ids, stamp)``.

    A claim is stamped when it is created; the thread stamps it again within ``interval``. It
    runs while the process holds claims and ends at a wake-up that finds none, so a search
    starts it about once instead of a thread per candidate.
    """

    def __init__(self, beat, interval: float):
        self.beat, self.interval = beat, max(0.05, interval)
        self.ids: set[int] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, trial_id: int) -> None:
        with self.lock:
            self.ids.add(trial_id)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, daemon=True, name="autoprune-heartbeat")
                self.thread.start()

    def discard(self, trial_id: int | None) -> None:
        with self.lock:
            self.ids.discard(trial_id)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            with self.lock:
                ids = sorted(self.ids)
                if not ids:
                    self.thread = None
                    return
            try:
                self.beat(ids, time.time())
            except Exception:  # noqa: BLE001 — a transient storage error: try again at the next beat
                continue


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
