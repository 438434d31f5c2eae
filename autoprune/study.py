"""Every evaluated candidate is an Optuna trial: the record, the resume point and the lock.

A trial's user attributes hold the candidate (``widths``, ``key``), its cost (``macs``,
``params``), the optimizer's ``role`` and the outcome, ``result`` = {``score``, ``status``,
``reason``, ``seconds``}. The trial value is the score (maximised).

Claiming. Before a worker scores a candidate it creates a RUNNING trial that carries the
candidate's key *in the same storage write* (``create_new_trial`` with a template), then
reads the trials back: if an earlier-created trial (smaller trial id) holds the same key and
is running or finished, the claim is lost and closed as a duplicate. Because every storage
orders trial creation (SQLite serialises writes; a journal file is an append-only log), of
two workers that claim one key at once exactly the first-created wins — the later one
always sees it, and the earlier one may not see the later one but wins anyway.

Storage: an Optuna RDB URL (``sqlite:///out/study.db``, the default, or a server database)
or a journal file (``journal:PATH``, or a path ending in ``.log`` / ``.journal``) for
file systems where SQLite locking is unreliable (NFS).
"""

from __future__ import annotations

import datetime
import os
import random
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import SearchError, one_line

STATUS_OK, STATUS_FAILED, STATUS_RUNNING = "ok", "failed", "running"
STATUS_DUPLICATE, STATUS_INTERRUPTED = "duplicate", "interrupted"
# Settings that make scores comparable: a study made with other values is refused, so that
# a rerun into the same folder never mixes incomparable scores. Keys absent from an older
# study are not checked.
_META_KEYS = ("model", "space", "max_macs", "method", "seed", "objective", "fine_tune_steps", "bn_batches",
              "eval_batch_size", "lr", "keep", "dataset", "split_seed", "val_size", "limit", "input_shape", "base",
              "latency")


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


def open_storage(url: str):
    """An Optuna storage for ``url``; SearchError with one line when it cannot be opened."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = str(url)
    journal = None
    if url.startswith("journal:"):
        journal = url[len("journal:"):]
        if journal.startswith("///"):
            journal = journal[2:]
    elif "://" not in url and url.endswith((".log", ".journal", ".jsonl")):
        journal = url
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
                    return optuna.storages.RDBStorage(url, **kwargs)
            except Exception:  # noqa: BLE001
                # Workers started together on one new SQLite file race to create the schema;
                # the losers fail ("table already exists", "UNIQUE constraint failed") and
                # succeed on a second try.
                if not url.startswith("sqlite:") or attempt == 4:
                    raise
                time.sleep(0.2 + random.random())
    except Exception as exc:  # noqa: BLE001 — drivers raise anything; the user needs one line
        raise SearchError(f"cannot open storage '{url}': {one_line(exc)[:200]}") from None


class TrialStore:
    """One study in one storage, seen as a list of :class:`Record` with claim / finish.

    ``meta`` (model, space, budget, method, seed, the evaluator settings, the data split and
    a hash of the base checkpoint; see ``_META_KEYS``) is written into a new study and
    checked against an existing one, so that a rerun with other settings cannot silently mix
    its candidates into a study of a different search.
    """

    def __init__(self, storage, study_name: str, *, meta: dict):
        if isinstance(storage, str):
            storage = open_storage(storage)
        self.storage = storage
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        try:
            self.study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                             load_if_exists=True)
        except Exception as exc:  # noqa: BLE001
            raise SearchError(f"cannot open study '{study_name}': {one_line(exc)[:200]}") from None
        self.study_id = storage.get_study_id_from_name(study_name)
        self.name = study_name
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
        """Close the claims of dead local workers (see :meth:`_close_abandoned`)."""
        self._close_abandoned()

    def _close_abandoned(self) -> None:
        """Fail RUNNING claims left by processes of this host that no longer exist.

        A killed worker cannot close its claim; without this its candidate stays claimed for
        ever. Claims of other hosts are left alone: their liveness cannot be checked here.
        """
        host = socket.gethostname()
        for t in self._trials((TrialState.RUNNING,)):
            owner = t.system_attrs.get("autoprune:worker", "")
            h, _, pid = owner.rpartition(":")
            if h == host and pid.isdigit() and not _pid_alive(int(pid)):
                self._close(t.number, TrialState.FAIL, None, STATUS_INTERRUPTED, "worker process ended")

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
        out = []
        for t in self._trials():
            ua = t.user_attrs
            if "widths" not in ua:
                continue
            res = ua.get("result") or {}
            status = STATUS_RUNNING if t.state == TrialState.RUNNING else res.get("status", STATUS_FAILED)
            if status == STATUS_DUPLICATE:
                continue
            out.append(Record(trial_id=t.number, number=t.number, widths=tuple(ua["widths"]), role=ua.get("role", ""),
                              status=status, score=res.get("score"), macs=ua.get("macs", 0), params=ua.get("params", 0),
                              seconds=res.get("seconds", 0.0), reason=res.get("reason", ""),
                              worker=t.system_attrs.get("autoprune:worker", "")))
        return out

    # -- writing ---------------------------------------------------------------------------
    def claim(self, widths, role: str, *, macs: int, params: int, retry: frozenset = frozenset()) -> int | None:
        """Create a RUNNING trial for ``widths``; its number, or None if another worker has it.

        A failed earlier trial of the same candidate does not block the claim when its trial
        id is in ``retry`` (failures from before this run, which a rerun scores again).
        """
        key = widths_key(widths)
        now = datetime.datetime.now()
        template = FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=now, datetime_complete=None,
            params={}, distributions={},
            user_attrs={"widths": [int(w) for w in widths], "key": key, "role": role, "macs": int(macs),
                        "params": int(params)},
            system_attrs={"autoprune:key": key, "autoprune:worker": self.worker},
            intermediate_values={}, trial_id=-1)
        number = self.storage.get_trial_number_from_id(
            self.storage.create_new_trial(self.study_id, template_trial=template))
        for t in self._trials():
            if t.number >= number:
                break
            if t.system_attrs.get("autoprune:key") != key or t.number in retry:
                continue
            status = (t.user_attrs.get("result") or {}).get("status")
            if t.state == TrialState.RUNNING or status in (STATUS_OK, STATUS_FAILED):
                self._close(number, TrialState.FAIL, None, STATUS_DUPLICATE, f"claimed by trial {t.number}")
                return None
        return number

    def finish(self, trial_id: int, score: float | None, status: str, reason: str = "", seconds: float = 0.0) -> None:
        state = TrialState.COMPLETE if status == STATUS_OK else TrialState.FAIL
        self._close(trial_id, state, score, status, reason, seconds)

    def _close(self, number: int, state: TrialState, score, status: str, reason: str, seconds: float = 0.0) -> None:
        trial_id = self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)
        # One attribute for the whole outcome: each storage write is a transaction.
        result = {"score": score, "status": status, "reason": reason[:500], "seconds": round(float(seconds), 4)}
        self.storage.set_trial_user_attr(trial_id, "result", result)
        self.storage.set_trial_state_values(trial_id, state, [float(score)] if state == TrialState.COMPLETE else None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
