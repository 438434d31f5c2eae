"""The Python entry point of the search: ``autoprune.search(model, budget, method, data)``.

The search is a short pipeline of named phases, each a function below: read the base
checkpoint (it decides the data split), load the data, build the model and its search
space, put the trained base in place, make the objective, make the optimizer, open the
study, run the driver, write the results.

>>> from autoprune.api import search, StudyConfig
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as out:
...     result = search("resnet20", budget=0.5, method="random", objective="synthetic",
...                     study=StudyConfig(trials=4), out=out)
>>> result.arch["macs"]["pruned"] <= 0.5 * result.arch["macs"]["base"]
True
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import numbers
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from autoprune import cost
from autoprune.arch import make_arch, save_arch
from autoprune.budget import Budget, check_reachable, parse_budget
from autoprune.checkpoint import check_state_dict, file_sha1, load_checkpoint, load_weights, save_checkpoint
from autoprune.data import Dataset
from autoprune.dataspec import DataSpec, check_loaded, kwargs_for_data
from autoprune.driver import Held, best_record, hold_latency, run_search
from autoprune.errors import CheckpointError, DataError, SearchError, one_line
from autoprune.evaluator import EvalConfig, EvalResult, Evaluator, SyntheticObjective
from autoprune.files import check_out_dir, write_text
from autoprune.keep import ScoreCache
from autoprune.latency import LatencyLimit, LatencyTable, check_table, parse_latency_budget
from autoprune.models import create_model, create_pretrained, default_input_size, merge_kwargs, model_kwargs
from autoprune.optimizers import Context, Optimizer, get_optimizer
from autoprune.profile import TableConfig, latency_table
from autoprune.runtime import log, progress_bar, resolve_device
from autoprune.space import SearchSpace
from autoprune.study import DEFAULT_HEARTBEAT_TIMEOUT, STATUS_FAILED, STATUS_OK, Record, TrialStore, storage_path
from autoprune.train import TrainConfig, split_accuracy, train

DEFAULT_OUT = "runs/search"
DEFAULT_TRIALS = 50


@dataclass(frozen=True)
class StudyConfig:
    """Where the scored candidates are stored and how many to score.

    ``trials``: candidates to score in the study (one-shot methods score one). Failed
    candidates count only in the run that scored them: a rerun into the same study scores as
    many new candidates as failed before, and may retry the failed ones. ``storage``: an
    Optuna storage URL (default ``sqlite:///OUT/study.db``) or ``journal:PATH``; ``name``:
    the study name (default ``MODEL-METHOD-BUDGET-seedS``). Rerunning resumes, and several
    processes on one study share the work. ``heartbeat_timeout``: seconds after which a
    claim whose worker stopped sending heartbeats (killed, its host lost) is re-queued.
    """

    trials: int = DEFAULT_TRIALS
    storage: str | None = None
    name: str | None = None
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT

    def __post_init__(self):
        check_counts(trials=self.trials)
        t = self.heartbeat_timeout
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 < t < float("inf"):
            raise SearchError(f"heartbeat-timeout must be a positive number of seconds, got {t!r}")


@dataclass
class SearchResult:
    """The winner of a search and the record of how it was found.

    ``widths`` are the chosen widths (one per free group, in space order); ``arch`` the
    architecture JSON dict (rebuild with :func:`autoprune.arch.build`); ``trials`` one row per
    scored candidate of the study (all workers').
    """

    widths: list[int]
    arch: dict
    trials: list[dict]
    method: str
    score: float | None
    seconds: float
    out: Path | None = None
    info: dict = field(default_factory=dict)

    def save(self, path) -> Path:
        return save_arch(self.arch, path)

    def summary(self) -> dict:
        a = self.arch
        ok = [t for t in self.trials if t["status"] == STATUS_OK]
        failed = [t for t in self.trials if t["status"] == STATUS_FAILED]
        return {
            "method": self.method,
            "budget": a["budget"]["text"] if a.get("budget") else None,
            "macs": a["macs"]["pruned"], "macs_base": a["macs"]["base"],
            "macs_ratio": a["macs"]["pruned"] / a["macs"]["base"],
            "utilisation": a["macs"]["pruned"] / a["budget"]["max_macs"] if a.get("budget") else None,
            "params": a["params"]["pruned"], "params_base": a["params"]["base"],
            "score": self.score, "candidates": len(ok), "failed": len(failed),
            "reclaimed": len(self.info.get("reclaimed", [])),
            "seconds": round(self.seconds, 2),
            "candidates_per_min": round(self.info.get("scored_here", 0) / max(self.seconds, 1e-9) * 60, 2),
            "widths": list(self.widths),
            "base": a.get("search", {}).get("base"), "base_score": a.get("search", {}).get("base_score"),
            "latency": ({k: a["search"]["latency"].get(k) for k in ("max_ms", "predicted_ms", "measured_ms",
                                                                   "measured_base_ms", "measured_ratio", "within",
                                                                   "held_max_ms")}
                        if a.get("search", {}).get("latency") else None),
            "arch": str(self.out / "arch.json") if self.out else None,
            "frozen": list(a.get("frozen", [])),
        }

    def __str__(self) -> str:
        s = self.summary()
        rows = [("method", s["method"]),
                ("MACs", f"{cost.human(s['macs'])} ({s['macs_ratio']:.3f} of {cost.human(s['macs_base'])}, "
                         f"budget {s['budget']}, {100 * (s['utilisation'] or 0):.1f} % used)"),
                ("params", f"{cost.human(s['params'])} ({s['params'] / s['params_base']:.3f} of base)"),
                *([("latency", _latency_line(s["latency"]))] if s["latency"] else []),
                ("score", "-" if s["score"] is None else f"{s['score']:.4f} (validation)"),
                *([("base", _base_line(self.arch["search"]))] if s["base"] else []),
                ("candidates", f"{s['candidates']} scored, {s['failed']} failed"
                               + (f", {s['reclaimed']} claims of dead workers re-queued" if s["reclaimed"] else "")),
                ("wall time", f"{s['seconds']:.1f} s"),
                ("widths", " ".join(map(str, s["widths"])))]
        if "stripes" in self.arch:
            info = self.arch.get("search", {}).get("stripe", {})
            kept = sum(m["kept"] for m in self.arch["stripes"].values())
            total = sum(m["shape"][0] * m["shape"][1] * m["shape"][2] for m in self.arch["stripes"].values())
            removed = info.get("removed_channels")
            rows.append(("stripes", f"{kept} of {total} kept in {len(self.arch['stripes'])} convs"
                                    + (f"; {removed} channels removed (filters with no stripe)" if removed else "")))
            whole = info.get("left_whole") or {}
            rows.append(("left whole", ", ".join(f"{n} ({why})" for n, why in whole.items()) or "-"))
        for i, f in enumerate(s["frozen"]):  # one line per submodule the tracer could not look into
            rows.append(("frozen" if i == 0 else "", f"{f['path']} ({f['class']}): {f['reason']}"))
        if s["arch"]:
            rows.append(("wrote", s["arch"]))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@dataclass
class _Search:
    """What the phases of one search hand each other."""

    model_name: str
    kwargs: dict
    model: nn.Module
    space: SearchSpace
    budget: Budget
    max_macs: int
    method: str
    seed: int
    device: torch.device
    out: Path
    data: Dataset | None = None
    base: dict = field(default_factory=dict)
    evaluation: EvalConfig | None = None
    latency: LatencyLimit | None = None
    pretrained: dict = field(default_factory=dict)  # the record of pretrained weights the model was built with


def search(model, budget=0.4, method: str = "abc", data=None, *, latency=None,
           latency_table: TableConfig | LatencyTable | None = None, base: str | os.PathLike | None = None,
           out: str | os.PathLike | None = None, seed: int = 0, device: str | None = None,
           study: StudyConfig | None = None, evaluation: EvalConfig | None = None,
           input_size: int | None = None, num_classes: int | None = None, in_channels: int | None = None, model_args=None,
           pretrain_epochs: int = 10, objective: str | Callable | None = None, method_options: dict | None = None,
           space_options: dict | None = None, progress: bool = False, pretrained: bool = False, weights=None) -> SearchResult:
    """Search per-group widths of ``model`` under ``budget`` and write ``OUT/arch.json``.

    ``model``: registry name (``vgg16``, ``tv:resnet18``, ``timm:efficientnet_b0``,
    ``pkg.mod:fn``) or an nn.Module; ``model_args``: more constructor kwargs, kept in ``arch.json``.
    ``budget``: ratio of the base MACs (0 < b ≤ 1) or absolute MACs (``"120M"``); None for
    no MACs budget (then ``latency`` is the only constraint).
    ``latency``: a latency budget as well, a ratio of the base model's measured latency (0.5)
    or a time (``"3.2ms"``), held against the latency predicted from ``latency_table`` (a
    measured :class:`~autoprune.latency.LatencyTable`, or the :class:`~autoprune.profile.TableConfig`
    to measure one with, read from the cache when it holds it; default: batch 1 on ``device``).
    ``method``: a registered optimizer (``autoprune.optimizers.list_methods()``).
    ``data``: a dataset name or path, a :class:`~autoprune.dataspec.DataSpec`, or loaded data;
    unset settings take what the base checkpoint records (see :mod:`autoprune.dataspec`).
    ``base``: checkpoint of the trained base model, or ``pretrained`` (a tv:/timm: library's weights) or ``weights``
    (any state dict file); without one a base is pre-trained for ``pretrain_epochs`` into ``OUT/base/``, reused by a rerun.
    ``study``: trials, storage and study name (:class:`StudyConfig`); a study made with other
    settings (budget, evaluator, data split, base weights...) is refused.
    ``evaluation``: how candidates are scored (:class:`~autoprune.evaluator.EvalConfig`).
    ``objective``: None (the evaluator), ``"synthetic"`` (a cheap deterministic score, no data
    or training), or a callable ``widths -> float | EvalResult``.
    ``method_options``: keyword options of the optimizer. ``space_options``: ``space_file``,
    ``round_to``, ``min_ratio``, ``step``, ``frozen`` for :meth:`SearchSpace.from_model`.
    """
    start = time.perf_counter()
    study = study or StudyConfig()
    optimizer_cls, device, out = _settings(method, objective, device, out, method_options or {}, latency,
                                           input_size=input_size, num_classes=num_classes, in_channels=in_channels,
                                           pretrain_epochs=pretrain_epochs)
    needs_base = objective is None or optimizer_cls.needs_base
    ckpt, base_path = _open_base(base, out, not _given_weights(base, pretrained, weights, model) and needs_base)
    needs_data = objective is None or optimizer_cls.needs_data or (needs_base and not (ckpt or pretrained or weights))
    loaded = _load_data(data, ckpt, base_path, seed, device, needs_data, scores_on_val=objective is None)
    s = _build(model, loaded, parse_budget(1.0 if budget is None else budget), method, seed, device, out, space_options,
               input_size=input_size, num_classes=num_classes, in_channels=in_channels, pretrained=pretrained, extra=model_args)
    s.latency = _latency(s, latency, latency_table, progress)
    if needs_base:
        s.base = _place(s, ckpt, base_path, pretrain_epochs, progress, pretrained, weights)
    optimizer = _make_optimizer(optimizer_cls, s, method_options or {})
    if optimizer.granularity == "stripe":  # scores its one stripe model itself: no evaluator
        return _stripe_search(s, optimizer, progress, start)
    score_fn = _objective(s, objective, evaluation)
    store, url, name = _open_study(s, study, objective)
    context = Context(base=s.model if needs_base else None, data=s.data, device=device, out_dir=out / method,
                      progress=progress, cache=_score_cache(s))
    records, scored_here = _run(optimizer, score_fn, store, study.trials, seed, context, progress, method)
    best, held = best_record(records), None
    if s.latency is not None:  # the winner measured on the device; tightened where it runs over
        held = hold_latency(optimizer, score_fn, store, s.model, s.latency.budget)
        best, scored_here, records = held.best, scored_here + held.scored, store.records()
    return _write(s, records, best, held, objective, score_fn, time.perf_counter() - start,
                  {"scored_here": scored_here, "storage": url, "study": name, "reclaimed": list(store.reclaimed)},
                  optimizer.report())


# --------------------------------------------------------------------------------------------
# The phases.
# --------------------------------------------------------------------------------------------


def _settings(method, objective, device, out, method_options: dict, latency, **counts):
    """Every setting that can be checked before anything is loaded: (optimizer class, device, OUT)."""
    check_counts(**counts)
    optimizer_cls = get_optimizer(method)  # unknown method: fail before any data is loaded
    if latency is not None and optimizer_cls.granularity == "stripe":
        raise SearchError(f"method '{method}' prunes stripes, which the latency table does not price; "
                          "use a width method (autoprune methods) with --latency-budget")
    if not (objective is None or objective == "synthetic" or callable(objective)):
        raise SearchError(f"unknown objective {objective!r}; expected None, 'synthetic' or a callable")
    _check_method_options(optimizer_cls, method, method_options)
    return optimizer_cls, resolve_device(device), check_out_dir(out if out is not None else DEFAULT_OUT, "out")


def _make_optimizer(optimizer_cls, s: _Search, method_options: dict) -> Optimizer:
    """The optimizer for this search's space and budgets."""
    try:
        optimizer = optimizer_cls(s.space, s.max_macs, seed=s.seed, **method_options)
    except (TypeError, ValueError) as exc:
        raise SearchError(f"method '{s.method}': bad method options {method_options}: {one_line(exc)[:200]}") from None
    optimizer.limit_latency(s.latency)
    return optimizer


def _open_base(base, out: Path, needs_base: bool) -> tuple[dict | None, Path | None]:
    """The base checkpoint, read first: it decides the data split. (None, None) without one."""
    kept = out / "base" / "model.pt"
    path = Path(base) if base is not None else (kept if needs_base and kept.is_file() else None)
    if not needs_base or path is None:
        return None, path
    return load_checkpoint(path), path


def _load_data(data, ckpt, base_path, seed, device, needed: bool, *, scores_on_val: bool) -> Dataset | None:
    """The data the search scores on, split as the base checkpoint records; None if not needed.

    With ``scores_on_val`` (the evaluator scores candidates on the validation split) an empty
    validation split is a DataError, raised before a base is pre-trained for nothing.
    """
    recorded = (ckpt or {}).get("dataset")
    source = f"base checkpoint '{base_path}'"
    if data is not None and not isinstance(data, (str, DataSpec)):
        check_loaded(data, recorded, source)
        if recorded and recorded.get("mean") and recorded.get("std") and data.resident:
            data.mean, data.std = tuple(recorded["mean"]), tuple(recorded["std"])
        loaded = data.to(device)
    else:
        spec = (data if isinstance(data, DataSpec) else DataSpec(name=data, seed=seed)).against(recorded, source)
        if not needed:
            return None
        loaded = spec.load(device, recorded)
    if scores_on_val and loaded.num_examples("val") == 0:
        raise DataError("the validation split is empty (--val-size 0): the evaluator scores candidates on it; "
                        "use a positive --val-size")
    return loaded


def _build(model, data, budget: Budget, method, seed, device, out, space_options, *, input_size, num_classes,
           in_channels, pretrained: bool = False, extra=None) -> _Search:
    """The model (from the registry or as given, with the constructor kwargs ``extra`` too), its search space
    and the budget in MACs."""
    made = {}
    if isinstance(model, nn.Module):
        name, kwargs = f"{type(model).__module__}:{type(model).__name__}", {}
    elif isinstance(model, str):
        name = model
        if data is not None:
            kwargs = kwargs_for_data(model, data, num_classes=num_classes, in_channels=in_channels)
        else:
            given = {"num_classes": num_classes, "in_channels": in_channels}
            kwargs = model_kwargs(model, **{k: v for k, v in given.items() if v is not None})
        kwargs = merge_kwargs(kwargs, extra)
        torch.manual_seed(seed)
        model, made = _pretrained(name, kwargs) if pretrained else (create_model(name, **kwargs), {})
    else:
        raise SearchError(f"model must be a registry name or an nn.Module, got {type(model).__name__}")
    if data is not None:
        shape = tuple(data.input_shape)
        if input_size is not None and shape[1:] != (input_size, input_size):
            raise SearchError(f"--input-size {input_size} does not match the {shape[1]}x{shape[2]} images of "
                              f"dataset '{data.meta.get('name', 'given')}' (images are not resized)")
    else:
        size = input_size or default_input_size(name)
        shape = (kwargs.get("in_channels", 3), size, size)
    space = SearchSpace.from_model(model, shape, model_name=name, **(space_options or {}))
    max_macs = budget.max_macs(cost.base_macs(space))
    check_reachable(space, max_macs, budget)  # before a base is pre-trained for nothing
    return _Search(name, kwargs, model, space, budget, max_macs, method, int(seed), device, out, data,
                   pretrained=made)


def _latency(s: _Search, budget, table, progress: bool) -> LatencyLimit | None:
    """The latency limit of the search: the table (measured or from the cache) and the budget."""
    if budget is None:
        return None
    budget = parse_latency_budget(budget)  # a bad budget fails before anything is measured
    if not isinstance(table, LatencyTable):
        config = table or TableConfig(device=str(s.device))
        table, _ = latency_table(s.model, s.space, config, progress=progress)
    check_table(table, s.space)
    limit = LatencyLimit(table, budget.max_ms(table.model_ms), budget)
    check_reachable(s.space, s.max_macs, budget, latency=limit)
    return limit


def _place_base(s: _Search, ckpt, path, pretrain_epochs: int, progress: bool) -> dict:
    """Load the base checkpoint's weights into the model, or pre-train one into OUT/base."""
    if ckpt is not None:
        check_state_dict(s.model, ckpt["model"], f"checkpoint '{path}'")
        recorded = ckpt.get("model_name")
        if recorded and recorded != s.model_name:
            raise CheckpointError(f"checkpoint '{path}' is for model '{recorded}', not '{s.model_name}'")
        s.model.load_state_dict(ckpt["model"])
        config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        info = {"path": str(path), "sha1": file_sha1(path), "epochs": config.get("epochs")}
    else:
        if s.data is None:
            raise SearchError(f"method '{s.method}' needs a trained base: give one, or data to pre-train it on")
        kept = s.out / "base" / "model.pt"
        torch.manual_seed(s.seed)
        config = TrainConfig.for_device(s.device, epochs=int(pretrain_epochs), seed=s.seed)
        train(s.model, s.data, config, device=s.device, out_dir=kept.parent, progress=progress,
              extra={"model_name": s.model_name, "model_kwargs": s.kwargs})
        save_checkpoint(kept, s.model, model_name=s.model_name, model_kwargs=s.kwargs,
                        input_shape=list(s.data.input_shape), dataset=s.data.meta, config=asdict(config))
        info = {"path": str(kept), "sha1": file_sha1(kept), "epochs": int(pretrain_epochs)}
    s.model = s.model.to(s.device)
    return info


def _stripe_search(s: _Search, optimizer: Optimizer, progress: bool, start: float) -> SearchResult:
    """A stripe method: prepare trains and prunes; its model is written as ``OUT/arch.json``
    (schema ``autoprune.arch/2``) with its validation accuracy as the score. No study: there
    is one result and no width vector to store."""
    if s.data is None:
        raise SearchError(f"method '{s.method}' trains on the data; give a dataset")
    s.out.mkdir(parents=True, exist_ok=True)
    optimizer.prepare(Context(base=s.model, data=s.data, device=s.device, out_dir=s.out / s.method,
                              progress=progress))
    result = optimizer.result
    seconds = time.perf_counter() - start
    record = {"candidates": 1, "failed": 0, "objective": "validation accuracy of the stripe model",
              "seconds": round(seconds, 2), **optimizer.report()}
    m = s.data.meta
    record["dataset"] = {"dataset": str(m.get("name")), "split_seed": m.get("seed"), "val_size": m.get("val_size"),
                         "limit": m.get("limit")}
    if s.base:
        record.update(base=s.base["path"], base_sha1=s.base["sha1"])
        if s.base.get("epochs") is not None:
            record["base_epochs"] = int(s.base["epochs"])
        record.update(_base_record(s.base))
    base_macs = cost.base_macs(s.space)
    widths = s.space.max_widths()
    arch = make_arch(s.model_name, s.kwargs, s.space, widths, stripes=result.masks,
                     budget={**s.budget.to_dict(), "max_macs": s.max_macs, "ratio": s.max_macs / base_macs},
                     method=s.method, seed=s.seed, score=result.score, extra={"search": record})
    save_arch(arch, s.out / "arch.json")
    save_checkpoint(s.out / "model.pt", result.model.cpu(), model_name=s.model_name, model_kwargs=s.kwargs,
                    input_shape=list(s.space.graph.input_shape), dataset=s.data.meta, arch=arch)
    return SearchResult(widths=list(widths), arch=arch, trials=[], method=s.method, score=result.score,
                        seconds=seconds, out=s.out, info={"scored_here": 1})


def _objective(s: _Search, objective, evaluation: EvalConfig | None):
    """The function that scores a width vector."""
    if objective is None:
        s.evaluation = (evaluation or EvalConfig(seed=s.seed)).resolved(s.device)
        return Evaluator(s.model, s.space, s.data, config=s.evaluation, device=s.device, cache=_score_cache(s))
    if objective == "synthetic":
        return SyntheticObjective(s.space, seed=s.seed)
    return _wrap(objective)


def _open_study(s: _Search, study: StudyConfig, objective) -> tuple[TrialStore, str, str]:
    """The Optuna study, with the settings that make its scores comparable (see TrialStore)."""
    url = study.storage or f"sqlite:///{(s.out / 'study.db').resolve()}"
    name = study.name or re.sub(r"[^A-Za-z0-9_.%-]+", "_", f"{s.model_name}-{s.method}-{s.budget.text}-seed{s.seed}")
    space_sig = hashlib.sha1(json.dumps(s.space.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    meta = {"model": s.model_name, "space": space_sig, "max_macs": s.max_macs, "method": s.method, "seed": s.seed,
            "budget": s.budget.text, "input_shape": list(s.space.graph.input_shape), "objective": _objective_kind(objective),
            "base": s.base.get("sha1")}
    if s.latency is not None:
        meta["latency"] = f"{s.latency.max_ms:.6g}ms@{s.latency.table.id}"
    if s.evaluation is not None:
        c = s.evaluation
        meta.update(fine_tune_steps=c.fine_tune_steps, bn_batches=c.bn_batches, eval_batch_size=c.batch_size,
                    lr=c.lr, keep=c.keep.name)
    if s.data is not None:
        m = s.data.meta
        meta.update(dataset=str(m.get("name")), split_seed=m.get("seed"), val_size=m.get("val_size"),
                    limit=m.get("limit"))
    file = storage_path(url)
    if file is not None and (s.out.resolve() == file.parent or s.out.resolve() in file.parents):
        s.out.mkdir(parents=True, exist_ok=True)  # a storage file in OUT (the default) needs OUT first
    store = TrialStore(url, name, meta=meta, heartbeat_timeout=study.heartbeat_timeout)
    s.out.mkdir(parents=True, exist_ok=True)  # only once a given storage has opened
    return store, url, name


def _run(optimizer: Optimizer, score_fn, store, trials, seed, context, progress, method) -> tuple[list, int]:
    """Run the driver with a progress bar; (every record of the study, candidates scored here)."""
    scored = []
    bar = progress_bar(1 if optimizer.one_shot else trials, f"search {method}", progress)
    try:
        records = run_search(optimizer, score_fn, store, trials=trials, seed=seed, context=context, progress=bar,
                             on_result=scored.append)
    finally:
        if bar is not None:
            bar.close()
    return records, len(scored)


def _write(s: _Search, records: list[Record], best: Record, held: Held | None, objective, score_fn,
           seconds: float, info: dict, report: dict) -> SearchResult:
    """The winner as ``OUT/arch.json`` and every scored candidate as ``OUT/trials.csv``; ``held``:
    the latency hold's measurements (:func:`~autoprune.driver.hold_latency`)."""
    scored = [r for r in records if r.status in (STATUS_OK, STATUS_FAILED)]
    ok = [r for r in scored if r.status == STATUS_OK]
    record = {"study": info["study"], "candidates": len(ok), "failed": len(scored) - len(ok),
              "objective": getattr(objective, "__name__", "callable") if callable(objective)
              else _objective_kind(objective),
              "evaluator": ({"device": str(s.device), **s.evaluation.to_dict()} if s.evaluation is not None
                            else {"kind": type(score_fn).__name__}),
              "seconds": round(seconds, 2), **report}
    if s.data is not None:
        m = s.data.meta
        record["dataset"] = {"dataset": str(m.get("name")), "split_seed": m.get("seed"),
                             "val_size": m.get("val_size"), "limit": m.get("limit")}
    if s.base:
        record.update(base=s.base["path"], base_sha1=s.base["sha1"])
        if s.base.get("epochs") is not None:
            record["base_epochs"] = int(s.base["epochs"])
        record.update(_base_record(s.base))
    base_macs = cost.base_macs(s.space)
    if held is not None:
        record["latency"] = {**s.latency.to_dict(), **held.steps[-1], "max_ms": s.latency.max_ms,
                             "held_max_ms": held.steps[-1]["max_ms"], "hold": held.steps}
    arch = make_arch(s.model_name, s.kwargs, s.space, best.widths,
                     budget={**s.budget.to_dict(), "max_macs": s.max_macs, "ratio": s.max_macs / base_macs},
                     method=s.method, seed=s.seed, score=float(best.score), extra={"search": record})
    rows = [r.row() for r in scored]
    save_arch(arch, s.out / "arch.json")
    _write_csv(rows, s.out / "trials.csv")
    return SearchResult(widths=list(best.widths), arch=arch, trials=rows, method=s.method, score=float(best.score),
                        seconds=seconds, out=s.out, info=info)


# --------------------------------------------------------------------------------------------
# A base from weights made elsewhere: a library's pretrained ones or any state dict file.
# --------------------------------------------------------------------------------------------


def _given_weights(base, pretrained: bool, weights, model) -> bool:
    """Whether the base is given as weights (``pretrained`` or ``weights``); SearchError when
    more than one base is given, or weights for a model object, which comes with its own."""
    given = [n for n, v in (("base", base), ("pretrained", pretrained), ("weights", weights)) if v]
    if len(given) > 1:
        raise SearchError(f"give one base: {' and '.join(given)} were both given")
    if given and given[0] != "base" and isinstance(model, nn.Module):
        raise SearchError(f"{given[0]} is for a model given by name; an nn.Module comes with its own weights "
                          "(load them into it before the search)")
    if weights is not None and not Path(weights).is_file():
        raise CheckpointError(f"weights file '{weights}' not found")
    if weights is not None and _records_its_data(weights):
        raise SearchError(f"'{weights}' is an autoprune checkpoint that records its training data: give it as the "
                          "base (--base), so that the validation split keeps out the images it was trained on")
    return bool(pretrained or weights)


def _records_its_data(path) -> bool:
    try:
        return bool(load_checkpoint(path).get("dataset"))
    except CheckpointError:  # another tool's file: load_weights reports what is wrong with it
        return False


def _pretrained(name: str, kwargs: dict) -> tuple[nn.Module, dict]:
    """Model ``name`` with its library's pretrained weights, and their record; a note when its
    classifier is re-initialised for another number of classes."""
    made = create_pretrained(name, **kwargs)
    if made.note:
        log(f"autoprune: note: {made.note}")
    return made.model, made.record()


def _place_given(s: _Search, weights) -> dict:
    """The base's record when it came as weights: ``weights`` loaded into the model, or the
    pretrained weights it was built with. Path and SHA-1 of the file are recorded as for a
    base checkpoint."""
    if weights is not None:
        info = load_weights(s.model, weights)
    else:
        info = dict(s.pretrained)
        info["sha1"] = file_sha1(info["path"]) if Path(info["path"]).is_file() else None
    s.model = s.model.to(s.device)
    return info


def _place(s: _Search, ckpt, path, pretrain_epochs: int, progress: bool, pretrained: bool, weights) -> dict:
    """The base in place (given as weights, a checkpoint, or pre-trained) and its record,
    with its accuracy on the validation split."""
    if pretrained or weights:
        base = _place_given(s, weights)
    else:
        base = _place_base(s, ckpt, path, pretrain_epochs, progress)
    return {**base, **_base_score(s)}


def _base_score(s: _Search) -> dict:
    """The base's accuracy on the validation split, measured (never assumed); {} without one."""
    if s.data is None or s.data.num_examples("val") == 0:
        return {}
    return {"score": split_accuracy(s.model, s.data, "val", device=s.device)}


def _base_line(record: dict) -> str:
    """The summary's base line: where its weights came from and its measured validation score."""
    kind = {"pretrained": f"pretrained {record.get('base_weights')}", "weights": "weights file"}
    score = record.get("base_score")
    return (f"{record['base']} ({kind.get(record.get('base_kind'), 'checkpoint')}), "
            + ("score not measured (no validation data)" if score is None else f"{score:.4f} (validation)"))


def _base_record(base: dict) -> dict:
    """What the architecture file says about the base beyond its path and SHA-1."""
    out = {"base_score": base["score"]} if base.get("score") is not None else {}
    if base.get("kind"):
        out["base_kind"] = base["kind"]
    if base.get("weights"):
        out["base_weights"] = base["weights"]
    return out


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


def _latency_line(latency: dict) -> str:
    """The summary's latency line: predicted and measured, a tightened limit, a broken budget."""
    ratio = latency.get("measured_ratio") or latency["measured_ms"] / latency["measured_base_ms"]
    text = (f"{latency['predicted_ms']:.3f} ms predicted, {latency['measured_ms']:.3f} ms measured, {ratio:.3f} of "
            f"the base's {latency['measured_base_ms']:.3f} ms (budget {latency['max_ms']:.3f} ms predicted)")
    if (latency.get("held_max_ms") or latency["max_ms"]) < latency["max_ms"]:
        text += f"; the table predicted the winner too fast here: limit tightened to {latency['held_max_ms']:.3f} ms"
    return text + ("; measured OVER the budget on this device" if latency["within"] is False else "")


def check_counts(minimum: int = 1, **values) -> None:
    """SearchError naming the first of ``values`` that is not an integer ≥ ``minimum`` (None passes)."""
    for name, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
            raise SearchError(f"{name.replace('_', '-')} must be {what}, got {v!r}")


def _check_method_options(optimizer_cls, method: str, options: dict) -> None:
    """SearchError naming an option the optimizer does not take, before any data are loaded."""
    if not isinstance(options, dict):
        raise SearchError(f"method_options must be a dict, got {type(options).__name__}")
    params = inspect.signature(optimizer_cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    allowed = sorted(n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n != "seed")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise SearchError(f"method '{method}' has no option {', '.join(map(repr, unknown))}; "
                          f"its options: {', '.join(allowed) or 'none'}")


def _score_cache(s: _Search) -> ScoreCache | None:
    """Where data-driven channel scores of the base are kept: beside its checkpoint."""
    return ScoreCache.beside(s.base["path"], s.base["sha1"]) if s.base else None


def _objective_kind(objective) -> str:
    return "evaluator" if objective is None else ("synthetic" if objective == "synthetic" else "callable")


def _wrap(fn):
    def score(widths):
        try:
            value = fn(widths)
        except Exception as exc:  # noqa: BLE001 — the user's function: a failed candidate, with its reason
            return EvalResult(None, "failed", f"{type(exc).__name__}: {one_line(exc)}"[:300])
        if isinstance(value, EvalResult):
            return value
        try:
            value = float(value)
        except (TypeError, ValueError):
            return EvalResult(None, "failed", f"the objective returned {type(value).__name__}, not a number")
        if value != value or value in (float("inf"), float("-inf")):
            return EvalResult(None, "failed", f"non-finite score {value}")
        return EvalResult(value, "ok")

    score.__name__ = getattr(fn, "__name__", "callable")
    return score


def _write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    fields = ["trial", "status", "score", "macs", "params", "role", "seconds", "widths", "reason", "worker"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(buf.getvalue(), path)
