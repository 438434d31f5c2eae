"""A candidate's bookkeeping on Optuna's RDB tables: one transaction per step.

Through Optuna's storage API a claim was a transaction per attribute (five user attributes,
three system attributes, each with a query and an insert, then the params and a read of the
trial number), a finish two transactions, and every read of what changed went through the ORM
with every new trial's params. Here a claim, a finish, a heartbeat and a read of what changed
are each one transaction of a few statements on the same tables, written as Optuna writes them:
the trial's number follows the study's latest trial's, taken in the statement that creates
it after locking the study's row (as Optuna does); datetimes are naive UTC; a value
carries its type. Optuna, its cached storage and optuna-dashboard read these trials as their
own. The claim's key is in the transaction that creates the trial, and a close changes only a
trial that is still running, so two workers never both close one trial.
"""

from __future__ import annotations

import datetime
import json

import sqlalchemy as sa
from optuna.distributions import distribution_to_json
from optuna.storages._rdb import models
from optuna.trial import TrialState

HEARTBEAT, WORKER = "autoprune:heartbeat", "autoprune:worker"


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


class SQLTrials:
    """Claims, closes, heartbeats and reads of one study in an Optuna ``RDBStorage``."""

    def __init__(self, storage, study_id: int):
        self.engine, self.study_id = storage.engine, study_id
        self.trials = models.TrialModel.__table__
        self.user = models.TrialUserAttributeModel.__table__
        self.system = models.TrialSystemAttributeModel.__table__
        self.params = models.TrialParamModel.__table__
        self.values = models.TrialValueModel.__table__
        self.studies = models.StudyModel.__table__

    def create(self, user_attrs: dict, system_attrs: dict, params: dict, dists: dict) -> tuple[int, int]:
        """A RUNNING trial with its attributes and params, in one transaction: (trial id, number)."""
        t = self.trials
        with self.engine.begin() as conn:
            # Serialise trial creation per study, as Optuna does (a no-op on SQLite, whose writes
            # are serial anyway): the count below then numbers trials in creation order.
            conn.execute(sa.select(self.studies.c.study_id).where(self.studies.c.study_id == self.study_id)
                         .with_for_update())
            insert = sa.insert(t).values(number=self._next_number(), study_id=self.study_id,
                                         state=TrialState.RUNNING, datetime_start=_utcnow())
            if self.engine.dialect.insert_returning:
                trial_id, number = conn.execute(insert.returning(t.c.trial_id, t.c.number)).one()
            else:
                trial_id = conn.execute(insert).inserted_primary_key[0]
                number = conn.execute(sa.select(t.c.number).where(t.c.trial_id == trial_id)).scalar_one()
            for table, attrs in ((self.user, user_attrs), (self.system, system_attrs)):
                conn.execute(sa.insert(table), [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                                                for k, v in attrs.items()])
            if params:
                conn.execute(sa.insert(self.params), [
                    {"trial_id": trial_id, "param_name": k, "param_value": float(dists[k].to_internal_repr(v)),
                     "distribution_json": distribution_to_json(dists[k])} for k, v in params.items()])
        return trial_id, number

    def _next_number(self):
        """The new trial's number, evaluated inside its insert: the study's latest trial's number
        plus one (an index lookup; Optuna numbers a study's trials 0, 1, 2...), else the count
        of the study's trials (an empty study, or a latest trial not yet numbered)."""
        t, mine = self.trials, self.trials.c.study_id == self.study_id
        latest = sa.select(t.c.number + 1).where(mine).order_by(t.c.trial_id.desc()).limit(1).scalar_subquery()
        return sa.func.coalesce(latest, sa.select(sa.func.count(t.c.trial_id)).where(mine).scalar_subquery())

    def close(self, trial_id: int, state: TrialState, value: float | None, result: dict) -> bool:
        """Finish a running trial with its ``result`` attribute (and value, when complete) in
        one transaction; False, changing nothing, when the trial was already finished."""
        t = self.trials
        with self.engine.begin() as conn:
            done = conn.execute(sa.update(t).where(t.c.trial_id == trial_id, t.c.state == TrialState.RUNNING)
                                .values(state=state, datetime_complete=_utcnow()))
            if done.rowcount != 1:
                conn.rollback()
                return False
            conn.execute(sa.delete(self.user).where(self.user.c.trial_id == trial_id, self.user.c.key == "result"))
            conn.execute(sa.insert(self.user).values(trial_id=trial_id, key="result", value_json=json.dumps(result)))
            if state == TrialState.COMPLETE:
                stored, kind = models.TrialValueModel.value_to_stored_repr(float(value))
                conn.execute(sa.insert(self.values).values(trial_id=trial_id, objective=0, value=stored,
                                                           value_type=kind))
        return True

    def beat(self, trial_ids, stamp: float) -> None:
        """Stamp ``autoprune:heartbeat`` on those of ``trial_ids`` that are still running."""
        s, t = self.system, self.trials
        running = sa.select(t.c.trial_id).where(t.c.trial_id.in_(list(trial_ids)), t.c.state == TrialState.RUNNING)
        with self.engine.begin() as conn:
            conn.execute(sa.update(s).where(s.c.key == HEARTBEAT, s.c.trial_id.in_(running))
                         .values(value_json=json.dumps(stamp)))

    def read(self, after: int, open_ids) -> list[tuple[int, int, TrialState, dict, str]]:
        """The study's trials created after trial id ``after`` or among ``open_ids`` (those seen
        running), in creation order: (trial id, number, state, user attributes, worker)."""
        t, u, s = self.trials, self.user, self.system
        which = t.c.trial_id > after
        if open_ids:
            which = sa.or_(which, t.c.trial_id.in_(sorted(open_ids)))
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.trial_id, t.c.number, t.c.state)
                                .where(t.c.study_id == self.study_id, which).order_by(t.c.trial_id)).all()
            if not rows:
                return []
            ids = [r[0] for r in rows]
            attrs: dict[int, dict] = {i: {} for i in ids}
            for i, key, value in conn.execute(sa.select(u.c.trial_id, u.c.key, u.c.value_json)
                                              .where(u.c.trial_id.in_(ids))):
                attrs[i][key] = json.loads(value)
            workers = dict(conn.execute(sa.select(s.c.trial_id, s.c.value_json)
                                        .where(s.c.trial_id.in_(ids), s.c.key == WORKER)).all())
        return [(i, n, state, attrs[i], json.loads(workers[i]) if i in workers else "") for i, n, state in rows]
