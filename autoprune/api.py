"""The Python entry point of the search: ``autoprune.search(model, budget, method, data)``.

The search is a short pipeline of named phases, each a function below that returns what the
next one needs: check the settings, read the base checkpoint (it decides the data split),
load the data, build the model and its search space, set the limits, put the trained base in
place, make the optimizer, the objective and the study, run the driver, and write the results
(:mod:`autoprune.report`). Settings come as small frozen dataclasses (:class:`ModelConfig`,
:class:`SpaceOptions`, :class:`MethodConfig`, :class:`LatencyConfig`, :class:`BaseConfig`,
:class:`StudyConfig`, :class:`~autoprune.evaluator.EvalConfig`), each checked when it is made.

>>> from autoprune.api import search, StudyConfig
>>> import tempfile
>>> with tempfile.TemporaryDirectory() as out:
...     result = search("resnet20", budget=0.5, method="random", objective="synthetic",
...                     study=StudyConfig(trials=4), out=out)
>>> result.arch["macs"]["pruned"] <= 0.5 * result.arch["macs"]["base"]
True
"""

from __future__ import annotations

import hashlib
import inspect
import json
import numbers
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn as nn

from autoprune.budget import Limits, parse_latency_budget
from autoprune.checkpoint import check_state_dict, file_sha1, load_checkpoint, load_weights, save_checkpoint
from autoprune.checks import check_counts
from autoprune.data import Dataset
from autoprune.dataspec import DataSpec, check_loaded, kwargs_for_data
from autoprune.driver import best_record, hold_latency, run_search
from autoprune.errors import CheckpointError, DataError, SearchError, one_line
from autoprune.evaluator import EvalConfig, EvalResult, Evaluator, SyntheticObjective
from autoprune.files import check_out_dir
from autoprune.keep import ScoreCache
from autoprune.latency import LatencyTable
from autoprune.models import create_model, create_pretrained, default_input_size, merge_kwargs, model_kwargs
from autoprune.optimizers import Context, Optimizer, get_optimizer
from autoprune.profile import TableConfig, latency_table
from autoprune.report import SearchResult, search_record, write_result
from autoprune.runtime import log, progress_bar, resolve_device
from autoprune.space import SearchSpace, SpaceConfig
from autoprune.study import DEFAULT_HEARTBEAT_TIMEOUT, Record, TrialStore, storage_path
from autoprune.task import ClassificationTask, Task, as_task, score_model, train_steps
from autoprune.train import TrainConfig, split_accuracy, train

DEFAULT_OUT = "runs/search"
DEFAULT_TRIALS = 50
DEFAULT_PRETRAIN_EPOCHS = 10

__all__ = ["BaseConfig", "LatencyConfig", "MethodConfig", "ModelConfig", "SearchResult", "SpaceOptions",
           "StudyConfig", "search"]


# --------------------------------------------------------------------------------------------
# The settings.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpaceOptions:
    """Overrides of the model's search space, applied over its per-model YAML (see
    :meth:`SearchSpace.from_model`): ``file`` a YAML of overrides, ``round_to``, ``min_ratio``,
    ``step`` and ``frozen`` (glob patterns of group names kept whole). None keeps the model's own.
    ``mode``: the forward traced, ``"eval"`` or ``"train"`` (None: eval for a model built by
    name, the mode it is in for an nn.Module)."""

    file: str | os.PathLike | None = None
    round_to: int | None = None
    min_ratio: float | None = None
    step: float | None = None
    frozen: tuple[str, ...] | None = None
    mode: str | None = None

    def __post_init__(self):
        if self.mode not in (None, "eval", "train"):
            raise SearchError(f"space mode must be 'eval' or 'train', got {self.mode!r}")
        if self.frozen is not None:
            if isinstance(self.frozen, str) or not all(isinstance(p, str) for p in self.frozen):
                raise SearchError(f"space frozen must be a list of group-name patterns, got {self.frozen!r}")
            object.__setattr__(self, "frozen", tuple(self.frozen))
        check_counts(round_to=self.round_to, error=SearchError)
        SpaceConfig.from_dict({k: v for k, v in self.overrides().items() if k not in ("space_file", "mode")},
                              source="space options")  # a bad value fails here, in one line

    def overrides(self) -> dict:
        """The keyword arguments of :meth:`SearchSpace.from_model` that are set."""
        given = {"space_file": self.file, "round_to": self.round_to, "min_ratio": self.min_ratio, "step": self.step,
                 "frozen": list(self.frozen) if self.frozen is not None else None, "mode": self.mode}
        return {k: v for k, v in given.items() if v is not None}


@dataclass(frozen=True)
class ModelConfig:
    """The model a search prunes: ``name`` a registry name (``vgg16``, ``tv:resnet18``,
    ``timm:efficientnet_b0``, ``pkg.mod:fn``) or an nn.Module pruned as it is; ``kwargs`` more
    constructor arguments; ``input_size``, ``num_classes`` and ``in_channels`` (default: the
    data's, else the model's defaults; given, they must agree with the data); ``space`` the
    search-space overrides."""

    name: str | nn.Module
    kwargs: Mapping = field(default_factory=dict)
    input_size: int | None = None
    num_classes: int | None = None
    in_channels: int | None = None
    space: SpaceOptions = field(default_factory=SpaceOptions)

    def __post_init__(self):
        if not isinstance(self.name, (str, nn.Module)):
            raise SearchError(f"model must be a registry name or an nn.Module, got {type(self.name).__name__}")
        if not isinstance(self.kwargs, Mapping):
            raise SearchError(f"model kwargs must be a mapping of constructor arguments, got {type(self.kwargs).__name__}")
        if isinstance(self.name, nn.Module) and (self.kwargs or self.num_classes or self.in_channels):
            raise SearchError("a model given as an nn.Module is pruned as it is: it takes no constructor arguments")
        if not isinstance(self.space, SpaceOptions):
            raise SearchError(f"model space must be a SpaceOptions, got {type(self.space).__name__}")
        check_counts(input_size=self.input_size, num_classes=self.num_classes, in_channels=self.in_channels,
                     error=SearchError)

    @classmethod
    def of(cls, model) -> "ModelConfig":
        """``model`` as a ModelConfig: a name or an nn.Module becomes one with the defaults."""
        return model if isinstance(model, cls) else cls(model)


@dataclass(frozen=True)
class MethodConfig:
    """The optimizer: ``name`` a registered method (``autoprune.optimizers.list_methods()``) and
    ``options`` its keyword options (``autoprune methods`` lists each method's)."""

    name: str
    options: Mapping = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise SearchError(f"method must be a method name, got {type(self.name).__name__}")
        if not isinstance(self.options, Mapping):
            raise SearchError(f"method options must be a mapping, got {type(self.options).__name__}")

    @classmethod
    def of(cls, method) -> "MethodConfig":
        return method if isinstance(method, cls) else cls(method)


@dataclass(frozen=True)
class LatencyConfig:
    """A latency budget, a ratio of the base model's measured latency (0.5) or a time
    (``"3.2ms"``), held against the latency predicted from ``table``: a measured
    :class:`~autoprune.latency.LatencyTable`, or the :class:`~autoprune.profile.TableConfig` to
    measure one with (read from the cache when it holds it; default: batch 1 on the search's device)."""

    budget: object
    table: TableConfig | LatencyTable | None = None

    def __post_init__(self):
        parse_latency_budget(self.budget)  # a bad budget fails before anything is loaded or measured
        if self.table is not None and not isinstance(self.table, (TableConfig, LatencyTable)):
            raise SearchError(f"latency table must be a TableConfig or a LatencyTable, got {type(self.table).__name__}")

    @classmethod
    def of(cls, latency) -> "LatencyConfig | None":
        return latency if latency is None or isinstance(latency, cls) else cls(latency)


@dataclass(frozen=True)
class BaseConfig:
    """The trained base the candidates inherit from: ``path`` a checkpoint, or ``pretrained`` (a
    tv:/timm: library's weights), or ``weights`` (any state dict file); with none of them a
    base pre-trained for ``pretrain_epochs`` and kept in ``OUT/base/`` so that a rerun reuses it."""

    path: str | os.PathLike | None = None
    pretrain_epochs: int = DEFAULT_PRETRAIN_EPOCHS
    pretrained: bool = False
    weights: str | os.PathLike | None = None

    def __post_init__(self):
        check_counts(pretrain_epochs=self.pretrain_epochs, error=SearchError)
        given = [n for n, v in (("base", self.path), ("pretrained", self.pretrained), ("weights", self.weights)) if v]
        if len(given) > 1:
            raise SearchError(f"give one base: {' and '.join(given)} were both given")

    @classmethod
    def of(cls, base) -> "BaseConfig":
        return base if isinstance(base, cls) else cls(base)


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
        check_counts(trials=self.trials, error=SearchError)
        t = self.heartbeat_timeout
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 < t < float("inf"):
            raise SearchError(f"heartbeat-timeout must be a positive number of seconds, got {t!r}")


@dataclass(frozen=True)
class _Setup:
    """What one search is about, fixed once the model, its space and the limits are known."""

    model_name: str
    kwargs: dict
    space: SearchSpace
    limits: Limits
    method: str
    seed: int
    device: torch.device
    out: Path


# --------------------------------------------------------------------------------------------
# The search.
# --------------------------------------------------------------------------------------------


def search(model, budget=0.4, method="abc", data=None, *, latency=None, base=None,
           out: str | os.PathLike | None = None, seed: int = 0, device: str | None = None,
           study: StudyConfig | None = None, objective=None, progress: bool = False) -> SearchResult:
    """Search per-group widths of ``model`` under ``budget`` and write ``OUT/arch.json``.

    ``model``: a registry name, an nn.Module, or a :class:`ModelConfig` (constructor arguments,
    input size, classes, search-space overrides). ``budget``: ratio of the base MACs (0 < b ≤ 1)
    or absolute MACs (``"120M"``); None for no MACs budget (then ``latency`` is the only one).
    ``method``: a registered optimizer name, or a :class:`MethodConfig` with its options.
    ``data``: a dataset name or path, a :class:`~autoprune.dataspec.DataSpec`, or loaded data;
    unset settings take what the base checkpoint records (see :mod:`autoprune.dataspec`); or a
    :class:`~autoprune.task.Task`: its data, loss and score then train and score everything.
    ``latency``: a latency budget too (``0.5``, ``"3.2ms"``), or a :class:`LatencyConfig` with
    the table to predict from. ``base``: checkpoint of the trained base, or a
    :class:`BaseConfig` (without a checkpoint, a base is pre-trained into ``OUT/base/``).
    ``study``: trials, storage and study name (:class:`StudyConfig`); a study made with other
    settings (budget, evaluator, data split, base weights...) is refused. ``objective``: what
    scores a candidate: None or an :class:`~autoprune.evaluator.EvalConfig` (the evaluator),
    ``"synthetic"`` (a cheap deterministic score, no data or training), or a callable
    ``widths -> float | EvalResult``.
    """
    start = time.perf_counter()
    model, method, latency = ModelConfig.of(model), MethodConfig.of(method), LatencyConfig.of(latency)
    base, study = BaseConfig.of(base), study or StudyConfig()
    optimizer_cls, device, out = _settings(method, latency, objective, device, out)
    task, data = _task(data, optimizer_cls, method.name)
    evaluates = objective is None or isinstance(objective, EvalConfig)
    needs_base, given = evaluates or optimizer_cls.needs_base, _given_weights(base, model.name)
    ckpt, base_path = _open_base(base.path, out, needs_base and not given)
    needs_data = task is None and (evaluates or optimizer_cls.needs_data or (needs_base and not (ckpt or given)))
    data = _load_data(data, ckpt, base_path, seed, device, needs_data, scores_on_val=evaluates)
    name, kwargs, module, space, made = _build(model, data, seed, base.pretrained, task)
    limits = _limits(module, space, budget, latency, device, progress)
    setup = _Setup(name, kwargs, space, limits, method.name, int(seed), device, out)
    base_info = _place(setup, module, task or data, ckpt, base_path, base, made, progress) if needs_base else {}
    optimizer = _make_optimizer(optimizer_cls, setup, method.options)
    context = Context(base=module if needs_base else None, data=data, device=device, out_dir=out / method.name,
                      progress=progress, cache=_score_cache(base_info))
    score_fn, evaluation = _objective(setup, objective, module, task or data, base_info, optimizer)
    store, url, study_name = _open_study(setup, study, objective, evaluation, data, base_info, task)
    records, scored_here = _run(optimizer, score_fn, store, study.trials, setup.seed, context, progress)
    best, held = best_record(records), None
    if limits.table is not None:  # the winner measured on the device; tightened where it runs over
        held = hold_latency(optimizer, score_fn, store, module)
        best, scored_here, records = held.best, scored_here + held.scored, store.records()
    stripes = _stripe_result(optimizer, context)
    seconds = time.perf_counter() - start
    record = search_record(
        records, seconds=seconds, objective=_objective_name(objective, optimizer), data=data, base=base_info,
        study=study_name, latency=_latency_record(limits, held), report=optimizer.report(),
        evaluator=_evaluator_record(evaluation, score_fn, task or data, device))
    result = write_result(out, records, best, model_name=name, model_kwargs=kwargs, space=space, limits=limits,
                          method=method.name, seed=setup.seed, record=record, seconds=seconds, stripes=stripes,
                          info={"scored_here": scored_here, "storage": url, "study": study_name,
                                "reclaimed": list(store.reclaimed)})
    if stripes is not None:  # the stripe model itself, with its weights, for retrain and export
        save_checkpoint(out / "model.pt", optimizer.result.model.cpu(), model_name=name, model_kwargs=kwargs,
                        input_shape=list(space.graph.input_shape), dataset=data.meta, arch=result.arch)
    return result


# --------------------------------------------------------------------------------------------
# The phases.
# --------------------------------------------------------------------------------------------


def _settings(method: MethodConfig, latency: LatencyConfig | None, objective, device, out):
    """Every setting that can be checked before anything is loaded: (optimizer class, device, OUT)."""
    optimizer_cls = get_optimizer(method.name)  # unknown method: fail before any data is loaded
    if latency is not None and optimizer_cls.granularity == "stripe":
        raise SearchError(f"method '{method.name}' prunes stripes, which the latency table does not price; "
                          "use a width method (autoprune methods) with --latency-budget")
    if not (objective is None or isinstance(objective, EvalConfig) or objective == "synthetic" or callable(objective)):
        raise SearchError(f"unknown objective {objective!r}; expected None, an EvalConfig, 'synthetic' or a callable")
    _check_method_options(optimizer_cls, method.name, method.options)
    return optimizer_cls, resolve_device(device), check_out_dir(out if out is not None else DEFAULT_OUT, "out")


def _task(data, optimizer_cls, method: str) -> tuple[Task | None, object]:
    """(the task, the data to load): a task brings its own data; a dataset is loaded as before.
    A method that trains on a classification dataset itself (DMCP, slimming, stripes...) cannot
    take a task: SearchError."""
    if not isinstance(data, Task):
        return None, data
    if optimizer_cls.needs_data or optimizer_cls.granularity == "stripe":
        raise SearchError(f"method '{method}' trains on a classification dataset itself and cannot take task "
                          f"'{data.name}'; use a method that proposes widths (random, abc, tpe, uniform...)")
    if len(tuple(data.input_shape)) != 3:
        raise SearchError(f"task '{data.name}': input_shape must be (channels, height, width), "
                          f"got {data.input_shape!r}")
    return data, None


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


def _build(config: ModelConfig, data, seed: int, pretrained: bool = False, task: Task | None = None):
    """The model (from the registry, with its library's pretrained weights, or as given) and its
    search space, traced at the data's or the task's input shape: (name, kwargs, model, space,
    the record of the pretrained weights or {})."""
    model, made = config.name, {}
    if isinstance(model, nn.Module):
        name, kwargs = f"{type(model).__module__}:{type(model).__name__}", {}
    else:
        name = model
        if data is not None:
            kwargs = kwargs_for_data(model, data, num_classes=config.num_classes, in_channels=config.in_channels)
        else:
            given = {"num_classes": config.num_classes, "in_channels": config.in_channels}
            kwargs = model_kwargs(model, **{k: v for k, v in given.items() if v is not None})
        kwargs = merge_kwargs(kwargs, dict(config.kwargs))
        torch.manual_seed(seed)
        model, made = _pretrained(name, kwargs) if pretrained else (create_model(name, **kwargs), {})
    if data is not None:
        shape = tuple(data.input_shape)
        if config.input_size is not None and shape[1:] != (config.input_size, config.input_size):
            raise SearchError(f"--input-size {config.input_size} does not match the {shape[1]}x{shape[2]} images of "
                              f"dataset '{data.meta.get('name', 'given')}' (images are not resized)")
    elif task is not None:
        shape = tuple(int(n) for n in task.input_shape)
        if config.input_size is not None and shape[1:] != (config.input_size, config.input_size):
            raise SearchError(f"--input-size {config.input_size} does not match task '{task.name}''s "
                              f"{shape[1]}x{shape[2]} inputs")
    else:
        size = config.input_size or default_input_size(name)
        shape = (kwargs.get("in_channels", 3), size, size)
    overrides = config.space.overrides()
    if not isinstance(config.name, nn.Module):  # built here, in the constructor's mode: trace the deployed one
        overrides.setdefault("mode", "eval")
    space = SearchSpace.from_model(model, shape, model_name=name, **overrides)
    return name, kwargs, model, space, made


def _limits(model: nn.Module, space: SearchSpace, budget, latency: LatencyConfig | None, device,
            progress: bool) -> Limits:
    """The limits of the search: the MACs budget (checked before a base is pre-trained for
    nothing) and, with a latency budget, its limit from the table (measured, or from the cache)."""
    limits = Limits.of(space, 1.0 if budget is None else budget)
    if latency is None:
        return limits
    table = latency.table
    if not isinstance(table, LatencyTable):
        table, _ = latency_table(model, space, table or TableConfig(device=str(device)), progress=progress)
    return Limits.of(space, limits.budget, latency.budget, table)


def _given_weights(base: BaseConfig, model) -> bool:
    """Whether the base is given as weights (``pretrained`` or ``weights``); SearchError for
    weights of a model object, which comes with its own."""
    given = "pretrained" if base.pretrained else "weights" if base.weights is not None else None
    if given and isinstance(model, nn.Module):
        raise SearchError(f"{given} is for a model given by name; an nn.Module comes with its own weights "
                          "(load them into it before the search)")
    if base.weights is not None and not Path(base.weights).is_file():
        raise CheckpointError(f"weights file '{base.weights}' not found")
    if base.weights is not None and _records_its_data(base.weights):
        raise SearchError(f"'{base.weights}' is an autoprune checkpoint that records its training data: give it as "
                          "the base (--base), so that the validation split keeps out the images it was trained on")
    return given is not None


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


def _place(s: _Setup, model: nn.Module, data, ckpt, path, base: BaseConfig, made: dict, progress: bool) -> dict:
    """The base in place (given as weights, a checkpoint, or pre-trained), moved to the device,
    and its record, with its accuracy on the validation split (measured, never assumed)."""
    if base.weights is not None:
        info = load_weights(model, base.weights)
    elif base.pretrained:
        info = dict(made)
        info["sha1"] = file_sha1(info["path"]) if Path(info["path"]).is_file() else None
    else:
        info = _place_base(s, model, data, ckpt, path, base.pretrain_epochs, progress)
    model.to(s.device)
    if isinstance(data, Task):
        info["score"] = score_model(model, data, s.device)
    elif data is not None and data.num_examples("val") > 0:
        info["score"] = split_accuracy(model, data, "val", device=s.device)
    return info


def _place_base(s: _Setup, model: nn.Module, data, ckpt, path, pretrain_epochs: int, progress: bool) -> dict:
    """Load the base checkpoint's weights into ``model`` (in place), or pre-train one into
    OUT/base; what the record says about the base (path, sha1, epochs)."""
    if ckpt is not None:
        check_state_dict(model, ckpt["model"], f"checkpoint '{path}'")
        recorded = ckpt.get("model_name")
        if recorded and recorded != s.model_name:
            raise CheckpointError(f"checkpoint '{path}' is for model '{recorded}', not '{s.model_name}'")
        model.load_state_dict(ckpt["model"])
        config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
        info = {"path": str(path), "sha1": file_sha1(path), "epochs": config.get("epochs")}
    else:
        if data is None:
            raise SearchError(f"method '{s.method}' needs a trained base: give one, or data to pre-train it on")
        kept = s.out / "base" / "model.pt"
        torch.manual_seed(s.seed)
        config = TrainConfig.for_device(s.device, epochs=int(pretrain_epochs), seed=s.seed)
        if isinstance(data, Task):  # the task's loss, one cosine over the epochs; no resuming
            steps = int(pretrain_epochs) * data.epoch_steps(config.batch_size)
            train_steps(model, data, steps=steps, lr=config.lr, batch_size=config.batch_size, device=s.device,
                        seed=s.seed, momentum=config.momentum, weight_decay=config.weight_decay)
            record = {"task": data.describe()}
        else:
            train(model, data, config, device=s.device, out_dir=kept.parent, progress=progress,
                  extra={"model_name": s.model_name, "model_kwargs": s.kwargs})
            record = {"dataset": data.meta}
        save_checkpoint(kept, model, model_name=s.model_name, model_kwargs=s.kwargs,
                        input_shape=list(data.input_shape), config=asdict(config), **record)
        info = {"path": str(kept), "sha1": file_sha1(kept), "epochs": int(pretrain_epochs)}
    return info


def _make_optimizer(optimizer_cls, s: _Setup, options: Mapping) -> Optimizer:
    """The optimizer for this search's space and limits."""
    try:
        return optimizer_cls(s.space, s.limits, seed=s.seed, **options)
    except (TypeError, ValueError) as exc:
        raise SearchError(f"method '{s.method}': bad method options {dict(options)}: {one_line(exc)[:200]}") from None


def _objective(s: _Setup, objective, model: nn.Module, data, base_info: dict, optimizer: Optimizer):
    """The function that scores a width vector, and the evaluator's settings when it is the evaluator.
    A stripe method's one candidate is scored by its stripe model's validation accuracy."""
    if optimizer.granularity == "stripe":
        if data is None:
            raise SearchError(f"method '{s.method}' trains on the data; give a dataset")
        return _stripe_score(optimizer), None
    if objective is None or isinstance(objective, EvalConfig):
        evaluation = (objective or EvalConfig(seed=s.seed)).resolved(s.device)
        return Evaluator(model, s.space, data, config=evaluation, device=s.device,
                         cache=_score_cache(base_info)), evaluation
    if objective == "synthetic":
        return SyntheticObjective(s.space, seed=s.seed), None
    return _wrap(objective), None


def _open_study(s: _Setup, study: StudyConfig, objective, evaluation: EvalConfig | None, data,
                base_info: dict, task: Task | None = None) -> tuple[TrialStore, str, str]:
    """The Optuna study, with the settings that make its scores comparable (see TrialStore)."""
    url = study.storage or f"sqlite:///{(s.out / 'study.db').resolve()}"
    name = study.name or re.sub(r"[^A-Za-z0-9_.%-]+", "_",
                                f"{s.model_name}-{s.method}-{s.limits.budget.text}-seed{s.seed}")
    space_sig = hashlib.sha1(json.dumps(s.space.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    meta = {"model": s.model_name, "space": space_sig, "max_macs": s.limits.max_macs, "method": s.method,
            "seed": s.seed, "budget": s.limits.budget.text, "input_shape": list(s.space.graph.input_shape),
            "objective": _objective_kind(objective), "base": base_info.get("sha1")}
    if s.limits.table is not None:
        meta["latency"] = f"{s.limits.max_ms:.6g}ms@{s.limits.table.id}"
    if evaluation is not None:
        c = evaluation
        meta.update(fine_tune_steps=c.fine_tune_steps, bn_batches=c.bn_batches, eval_batch_size=c.batch_size,
                    lr=c.lr, keep=c.keep.name, task=task.name if task is not None else ClassificationTask.name)
    if data is not None:
        m = data.meta
        meta.update(dataset=str(m.get("name")), split_seed=m.get("seed"), val_size=m.get("val_size"),
                    limit=m.get("limit"))
    file = storage_path(url)
    if file is not None and (s.out.resolve() == file.parent or s.out.resolve() in file.parents):
        s.out.mkdir(parents=True, exist_ok=True)  # a storage file in OUT (the default) needs OUT first
    store = TrialStore(url, name, meta=meta, heartbeat_timeout=study.heartbeat_timeout)
    s.out.mkdir(parents=True, exist_ok=True)  # only once a given storage has opened
    return store, url, name


def _run(optimizer: Optimizer, score_fn, store, trials, seed, context, progress) -> tuple[list[Record], int]:
    """Run the driver with a progress bar; (every record of the study, candidates scored here)."""
    scored = []
    bar = progress_bar(1 if optimizer.one_shot else trials, f"search {optimizer.name}", progress)
    try:
        records = run_search(optimizer, score_fn, store, trials=trials, seed=seed, context=context, progress=bar,
                             on_result=scored.append)
    finally:
        if bar is not None:
            bar.close()
    return records, len(scored)


def _stripe_result(optimizer: Optimizer, context: Context) -> dict | None:
    """A stripe method's masks for ``arch.json``; None for a channel method. Where this process
    found the trial stored and so never trained the skeleton (a rerun, another worker's
    result), it trains it now: the same seeds, the same masks."""
    if optimizer.granularity != "stripe":
        return None
    if optimizer.result is None:
        optimizer.prepare(context)
    return optimizer.result.masks


def _stripe_score(optimizer: Optimizer):
    def stripe_model_accuracy(widths):
        score = optimizer.result.score
        if score is None:
            return EvalResult(None, "failed", "no validation split to score the stripe model on")
        return EvalResult(float(score), "ok")

    return stripe_model_accuracy


def _latency_record(limits: Limits, held) -> dict | None:
    """The ``search.latency`` record: the limit, and the hold's measurements (``held``, see
    :func:`~autoprune.driver.hold_latency`); None without a latency limit."""
    if held is None:
        return None
    return {**limits.to_dict()["latency"], **held.steps[-1], "max_ms": limits.max_ms,
            "held_max_ms": held.steps[-1]["max_ms"], "hold": held.steps}


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


def _check_method_options(optimizer_cls, method: str, options: Mapping) -> None:
    """SearchError naming an option the optimizer does not take, before any data are loaded."""
    params = inspect.signature(optimizer_cls.__init__).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return
    allowed = sorted(n for n, p in params.items() if p.kind == p.KEYWORD_ONLY and n != "seed")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise SearchError(f"method '{method}' has no option {', '.join(map(repr, unknown))}; "
                          f"its options: {', '.join(allowed) or 'none'}")


def _score_cache(base_info: dict) -> ScoreCache | None:
    """Where data-driven channel scores of the base are kept: beside its checkpoint."""
    return ScoreCache.beside(base_info["path"], base_info["sha1"]) if base_info else None


def _evaluator_record(evaluation: EvalConfig | None, score_fn, data, device) -> dict:
    """The ``search.evaluator`` record: the evaluator's settings and task, or the objective's kind."""
    if evaluation is None:
        return {"kind": type(score_fn).__name__}
    return {"device": str(device), **evaluation.to_dict(), "task": as_task(data).describe()}


def _objective_kind(objective) -> str:
    if objective is None or isinstance(objective, EvalConfig):
        return "evaluator"
    return "synthetic" if objective == "synthetic" else "callable"


def _objective_name(objective, optimizer: Optimizer) -> str:
    """What ``arch.json`` records as the objective: the kind, or a callable's name."""
    if optimizer.granularity == "stripe":
        return "validation accuracy of the stripe model"
    kind = _objective_kind(objective)
    return getattr(objective, "__name__", "callable") if kind == "callable" else kind


def _wrap(fn: Callable):
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
