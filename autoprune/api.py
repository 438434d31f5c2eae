"""The Python entry point of the search: ``autoprune.search(model, budget, method, data)``.

>>> result = search("resnet20", budget=0.5, method="random", data="synthetic", trials=4,
...                 objective="synthetic", out="runs/doctest")           # doctest: +SKIP
>>> result.widths, result.arch["macs"]["pruned"] <= 0.5 * result.arch["macs"]["base"]  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import numbers
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from autoprune import cost
from autoprune.errors import CheckpointError, DataError, SearchError
from autoprune.files import write_text
from autoprune.train import progress_bar, resolve_device
from autoprune.search.base import EXTERNAL, Optimizer, get_optimizer
from autoprune.search.budget import check_reachable, parse_budget
from autoprune.search.evaluate import EvalConfig, EvalResult, Evaluator, SyntheticObjective
from autoprune.search.run import run_search
from autoprune.search.study import STATUS_FAILED, STATUS_OK, TrialStore

DEFAULT_OUT = "runs/search"


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
        from autoprune.arch import save_arch

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
            "seconds": round(self.seconds, 2),
            "candidates_per_min": round(self.info.get("scored_here", 0) / max(self.seconds, 1e-9) * 60, 2),
            "widths": list(self.widths),
            "arch": str(self.out / "arch.json") if self.out else None,
        }

    def __str__(self) -> str:
        s = self.summary()
        rows = [("method", s["method"]),
                ("MACs", f"{cost.human(s['macs'])} ({s['macs_ratio']:.3f} of {cost.human(s['macs_base'])}, "
                         f"budget {s['budget']}, {100 * (s['utilisation'] or 0):.1f} % used)"),
                ("params", f"{cost.human(s['params'])} ({s['params'] / s['params_base']:.3f} of base)"),
                ("score", "-" if s["score"] is None else f"{s['score']:.4f} (validation)"),
                ("candidates", f"{s['candidates']} scored, {s['failed']} failed"),
                ("wall time", f"{s['seconds']:.1f} s"),
                ("widths", " ".join(map(str, s["widths"])))]
        if s["arch"]:
            rows.append(("wrote", s["arch"]))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def search(model, budget=0.4, method: str = "abc", data=None, *, trials: int | None = None,
           base: str | os.PathLike | None = None, storage: str | None = None, study: str | None = None,
           out: str | os.PathLike | None = None, seed: int = 0, device: str | None = None,
           input_size: int | None = None, num_classes: int | None = None, in_channels: int | None = None,
           data_dir=None, keep: str = "l1", limit: int | None = None, val_size: int | None = None,
           fine_tune_steps: int | None = None, bn_batches: int | None = None, eval_batch_size: int | None = None,
           lr: float | None = None, pretrain_epochs: int = 10, objective: str | Callable | None = None,
           method_options: dict | None = None, space_options: dict | None = None,
           progress: bool = False) -> SearchResult:
    """Search per-group widths of ``model`` under ``budget`` and write ``OUT/arch.json``.

    ``model``: registry name (``vgg16``, ``tv:resnet18``, ``pkg.mod:fn``) or an nn.Module.
    ``budget``: ratio of the base MACs (0 < b ≤ 1) or absolute MACs (``"120M"``).
    ``method``: ``abc``, ``tpe``, ``random``, ``uniform``, ``slimming``, ``l1-global`` or ``dmcp``.
    ``data``: dataset name for :func:`autoprune.data.load_data`, or a loaded ``Data``; default
    the one the base checkpoint records, else ``cifar10``.
    ``trials``: candidates to score in the study (default 50; one-shot methods score one).
    Failed candidates count only in the run that scored them: a rerun into the same study
    scores as many new candidates as failed before, and may retry the failed ones.
    ``base``: checkpoint of the trained base model; without it a base is pre-trained for
    ``pretrain_epochs`` and kept in ``OUT/base/`` so that a rerun reuses it. The validation
    split must be the one the base was trained without: the dataset, split seed,
    validation size, limit, data folder and normalisation a checkpoint records are reused
    when not given, and DataError is raised when the given ones differ (a different
    ``limit`` is allowed: it only thins the training images).
    ``storage`` / ``study``: Optuna storage URL (default ``sqlite:///OUT/study.db``) and study
    name; rerunning resumes, and several processes on one study share the work. A study
    made with other settings (budget, evaluator, data split, base weights...) is refused.
    ``objective``: None (the evaluator: inherit, recalibrate BN, fine-tune, validation
    accuracy), ``"synthetic"`` (a cheap deterministic score, no data or training), or a
    callable ``widths -> float | EvalResult``.
    ``space_options``: ``space_file``, ``round_to``, ``min_ratio`` (and ``step``, ``frozen``)
    for :meth:`autoprune.space.SearchSpace.from_model`.
    """
    start = time.perf_counter()
    out = Path(out if out is not None else DEFAULT_OUT)
    device = resolve_device(device)
    method_options = dict(method_options or {})
    trials = 50 if trials is None else trials
    _check_counts(trials=trials, input_size=input_size, num_classes=num_classes, in_channels=in_channels,
                  limit=limit, eval_batch_size=eval_batch_size, bn_batches=bn_batches,
                  pretrain_epochs=pretrain_epochs)
    _check_counts(minimum=0, fine_tune_steps=fine_tune_steps, val_size=val_size)
    if lr is not None and not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise SearchError(f"lr must be a positive number, got {lr!r}")
    if method not in EXTERNAL:
        get_optimizer(method)  # unknown method: fail before any data is loaded
    if not (objective is None or objective == "synthetic" or callable(objective)):
        raise SearchError(f"unknown objective {objective!r}; expected None, 'synthetic' or a callable")
    budget = parse_budget(budget)

    # -- the base checkpoint, read first: it decides the data split ----------------------------
    needs_base = objective is None or method in ("slimming", "l1-global", "dmcp")
    kept = out / "base" / "model.pt"
    base_path = Path(base) if base is not None else (kept if needs_base and kept.is_file() else None)
    ckpt = None
    if needs_base and base_path is not None:
        from autoprune.train import load_checkpoint

        ckpt = load_checkpoint(base_path)

    # -- data, model, space ------------------------------------------------------------------
    loaded = None
    split = _split_settings(data, data_dir, seed, limit, val_size, (ckpt or {}).get("dataset"), base_path)
    if objective is None or method in EXTERNAL:
        loaded = _load_data(split, device=device)
        if objective is None and _num_val(loaded) == 0:
            raise DataError("the validation split is empty (--val-size 0): the evaluator scores candidates on it; "
                            "use a positive --val-size")
    model, model_name, kwargs = _resolve_model(model, loaded, num_classes, in_channels, seed)
    if loaded is not None:
        input_shape = tuple(loaded.input_shape)
        if input_size is not None and tuple(input_shape[1:]) != (input_size, input_size):
            raise SearchError(f"--input-size {input_size} does not match the {input_shape[1]}x{input_shape[2]} "
                              f"images of dataset '{_data_name(loaded)}' (images are not resized)")
    else:
        from autoprune.models import default_input_size

        size = input_size or (default_input_size(model_name) if isinstance(model_name, str) else 32)
        input_shape = (kwargs.get("in_channels", 3), size, size)
    from autoprune.space import SearchSpace

    space = SearchSpace.from_model(model, input_shape, model_name=model_name, **(space_options or {}))
    base_macs = cost.macs(space, space.max_widths())
    max_macs = budget.max_macs(base_macs)
    check_reachable(space, max_macs, budget)  # before a base is pre-trained for nothing

    # -- the trained base ----------------------------------------------------------------------
    base_info = {}
    if needs_base:
        if ckpt is not None:
            base_info = _load_base(model, model_name, ckpt, base_path)
        else:
            if loaded is None:
                loaded = _load_data(split, device=device)
            base_info = _pretrain_base(model, model_name, kwargs, kept, loaded, device, seed, pretrain_epochs,
                                       progress)
        model = model.to(device)

    # -- objective -----------------------------------------------------------------------------
    config = None
    if objective is None:
        config = EvalConfig.for_device(device, fine_tune_steps=fine_tune_steps, bn_batches=bn_batches,
                                       batch_size=eval_batch_size, lr=lr, keep=keep, seed=seed)
        evaluate = Evaluator(model, space, loaded, config=config, device=device)
    elif objective == "synthetic":
        evaluate = SyntheticObjective(space, seed=seed)
    else:
        evaluate = _wrap(objective)

    # -- optimizer -------------------------------------------------------------------------------
    if method in EXTERNAL:
        widths = _external(method, model, space, loaded, budget_macs=max_macs, seed=seed, device=device,
                           out_dir=out / method, progress=progress, budget=budget.text, **method_options)
        optimizer: Optimizer = _Fixed(space, max_macs, seed=seed, widths=widths, role=method)
    else:
        optimizer = get_optimizer(method)(space, max_macs, seed=seed, model=model if needs_base else None,
                                          **method_options)

    # -- study and search ----------------------------------------------------------------------
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = study or _default_study(model_name, method, budget.text, seed)
    space_sig = hashlib.sha1(json.dumps(space.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    meta = {"model": str(model_name), "space": space_sig, "max_macs": int(max_macs), "method": method,
            "seed": int(seed), "budget": budget.text, "input_shape": list(input_shape),
            "objective": "evaluator" if objective is None else ("synthetic" if objective == "synthetic" else "callable"),
            "base": base_info.get("sha1")}
    if config is not None:
        meta.update(fine_tune_steps=config.fine_tune_steps, bn_batches=config.bn_batches,
                    eval_batch_size=config.batch_size, lr=config.lr, keep=config.keep)
    if loaded is not None:
        m = getattr(loaded, "meta", {}) or {}
        meta.update(dataset=str(m.get("name")), split_seed=m.get("seed"), val_size=m.get("val_size"),
                    limit=m.get("limit"))
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)  # the default storage is a file in OUT
    store = TrialStore(url, study, meta=meta)
    if storage is not None:
        out.mkdir(parents=True, exist_ok=True)  # only once the given storage has opened
    scored_here = 0

    def on_result(_record):
        nonlocal scored_here
        scored_here += 1

    bar = progress_bar(trials if not optimizer.one_shot else 1, f"search {method}", progress)
    try:
        records = run_search(optimizer, evaluate, store, trials=trials, seed=seed, progress=bar, on_result=on_result)
    finally:
        if bar is not None:
            bar.close()

    # -- winner and files ------------------------------------------------------------------------
    scored = [r for r in records if r.status in (STATUS_OK, STATUS_FAILED)]
    ok = [r for r in scored if r.status == STATUS_OK]
    if not ok:
        reason = scored[-1].reason if scored else "no candidate was scored"
        raise SearchError(f"no candidate could be scored ({len(scored)} failed; last: {reason})")
    best = max(ok, key=lambda r: (r.score, -r.trial_id))
    seconds = time.perf_counter() - start
    from autoprune.arch import make_arch, save_arch

    info = {"study": study, "candidates": len(ok), "failed": len(scored) - len(ok),
            "objective": getattr(objective, "__name__", "callable") if callable(objective) else meta["objective"],
            "evaluator": _eval_info(evaluate), "seconds": round(seconds, 2)}
    if loaded is not None:
        info["dataset"] = {k: meta[k] for k in ("dataset", "split_seed", "val_size", "limit")}
    if base_info:
        info["base"] = base_info.get("path")
        info["base_sha1"] = base_info.get("sha1")
        if base_info.get("epochs") is not None:
            info["base_epochs"] = int(base_info["epochs"])
    arch = make_arch(str(model_name), kwargs, space, best.widths,
                     budget={**budget.to_dict(), "max_macs": int(max_macs), "ratio": max_macs / base_macs},
                     method=method, seed=int(seed), score=float(best.score), extra={"search": info})
    rows = [r.row() for r in scored]
    save_arch(arch, out / "arch.json")
    _write_csv_atomic(rows, out / "trials.csv")
    return SearchResult(widths=list(best.widths), arch=arch, trials=rows, method=method, score=float(best.score),
                        seconds=seconds, out=out, info={"scored_here": scored_here, "storage": url, "study": study})


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


def _check_counts(minimum: int = 1, **values) -> None:
    """SearchError naming the first of ``values`` that is not an integer ≥ ``minimum``."""
    for name, v in values.items():
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
            what = "a positive integer" if minimum == 1 else f"an integer of at least {minimum}"
            raise SearchError(f"{name.replace('_', '-')} must be {what}, got {v!r}")


def _same_name(a, b) -> bool:
    return str(a).lower().replace("_", "-") == str(b).lower().replace("_", "-")


def _split_settings(data, data_dir, seed, limit, val_size, recorded, source) -> dict:
    """How to load the data so that its validation split is the one the base never trained on.

    ``recorded`` is the base checkpoint's ``dataset`` record (name, seed, val_size, limit,
    mean, std, data_dir) or None. Unset settings take the recorded values; a different
    dataset or validation size is a DataError. The split seed is always the recorded one
    (``seed`` is the split seed only when there is no record).
    """
    rec = dict(recorded or {}) if isinstance(recorded, dict) else {}
    src = f"base checkpoint '{source}'"
    if data is not None and not isinstance(data, str):
        m = getattr(data, "meta", None) or {}
        if rec.get("name") is not None:
            for k in ("name", "seed", "val_size"):
                if k in rec and k in m and not _same_name(m[k], rec[k]):
                    raise DataError(f"the given data have {k}={m[k]!r} but {src} was trained with {k}={rec[k]!r}: "
                                    "its validation images would overlap the base's training images")
        return {"loaded": data, "recorded": rec if rec.get("name") is not None else {}}
    if rec.get("name") is None:
        name = data if data is not None else "cifar10"
        if val_size is None:
            val_size = 256 if name.lower() == "synthetic" else 5000  # the synthetic set has 1024 images
        return {"name": name, "data_dir": data_dir, "seed": seed, "limit": limit, "val_size": val_size,
                "recorded": {}}
    name = data if data is not None else rec["name"]
    if not _same_name(name, rec["name"]):
        raise DataError(f"dataset '{name}' is not the '{rec['name']}' that {src} was trained on; "
                        f"search on '{rec['name']}' or give a base trained on '{name}'")
    if val_size is not None and rec.get("val_size") is not None and int(val_size) != int(rec["val_size"]):
        raise DataError(f"--val-size {val_size} differs from the {rec['val_size']} validation images {src} was "
                        "trained without: the validation split would overlap its training images "
                        "(leave --val-size out to reuse the recorded split)")
    return {"name": name, "data_dir": data_dir if data_dir is not None else rec.get("data_dir"),
            "seed": int(rec.get("seed", seed)), "limit": limit if limit is not None else rec.get("limit"),
            "val_size": int(rec["val_size"]) if rec.get("val_size") is not None else (val_size or 5000),
            "recorded": rec}


def _load_data(split: dict, *, device):
    if "loaded" in split:
        data = split["loaded"]
        data = data.to(device) if hasattr(data, "to") else data
    else:
        from autoprune.data import load_data

        data = load_data(split["name"], split["data_dir"], seed=split["seed"], device=device, limit=split["limit"],
                         val_size=split["val_size"])
        data.meta["data_dir"] = None if split["data_dir"] is None else str(split["data_dir"])
    rec = split["recorded"]
    if rec.get("mean") and rec.get("std") and not getattr(data, "streamed", False):
        # Score with the normalisation the base was trained with.
        data.mean, data.std = tuple(rec["mean"]), tuple(rec["std"])
        data.meta["mean"], data.meta["std"] = list(rec["mean"]), list(rec["std"])
    return data


def _num_val(data) -> int:
    sizes = (getattr(data, "meta", None) or {}).get("sizes") or {}
    if "val" in sizes:
        return int(sizes["val"])
    return len(data.val_y) if hasattr(data, "val_y") else 1


def _data_name(data) -> str:
    return str((getattr(data, "meta", None) or {}).get("name", "given"))


def _resolve_model(model, data, num_classes, in_channels, seed):
    from autoprune.models import create_model, model_kwargs

    if isinstance(model, nn.Module):
        cls = type(model)
        return model, f"{cls.__module__}:{cls.__name__}", {}
    if not isinstance(model, str):
        raise SearchError(f"model must be a registry name or an nn.Module, got {type(model).__name__}")
    kwargs = {}
    if data is not None:
        if num_classes is not None and num_classes != data.num_classes:
            raise SearchError(f"--num-classes {num_classes} does not match the {data.num_classes} classes of "
                              f"dataset '{_data_name(data)}'")
        if in_channels is not None and in_channels != data.input_shape[0]:
            raise SearchError(f"--in-channels {in_channels} does not match the {data.input_shape[0]}-channel "
                              f"images of dataset '{_data_name(data)}'")
        kwargs["num_classes"] = data.num_classes
        if data.input_shape[0] != 3:
            kwargs["in_channels"] = data.input_shape[0]
    else:
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if in_channels is not None:
            kwargs["in_channels"] = in_channels
    kwargs = model_kwargs(model, **kwargs)
    torch.manual_seed(seed)
    return create_model(model, **kwargs), model, kwargs


def _file_sha1(path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_base(model, model_name, ckpt: dict, path: Path) -> dict:
    """Load the weights of checkpoint ``ckpt`` (read from ``path``) into ``model``."""
    from autoprune.train import check_state_dict

    check_state_dict(model, ckpt["model"], f"checkpoint '{path}'")
    recorded = ckpt.get("model_name")
    if recorded and isinstance(model_name, str) and recorded != model_name:
        raise CheckpointError(f"checkpoint '{path}' is for model '{recorded}', not '{model_name}'")
    model.load_state_dict(ckpt["model"])
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    return {"path": str(path), "sha1": _file_sha1(path), "epochs": config.get("epochs")}


def _pretrain_base(model, model_name, kwargs, kept: Path, data, device, seed, epochs, progress) -> dict:
    """Pre-train ``model`` on ``data`` and keep it in ``kept`` (``OUT/base/model.pt``) for reruns."""
    from dataclasses import asdict

    from autoprune.train import TrainConfig, save_checkpoint, train

    torch.manual_seed(seed)
    kept.parent.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(epochs=int(epochs), seed=seed,
                         batch_size=512 if torch.device(device).type == "cuda" else 128,
                         lr=0.2 if torch.device(device).type == "cuda" else 0.05)
    train(model, data, config, device=device, out_dir=kept.parent, progress=progress,
          extra={"model_name": model_name, "model_kwargs": kwargs})
    save_checkpoint(kept, model, model_name=model_name, model_kwargs=kwargs, input_shape=list(data.input_shape),
                    dataset=getattr(data, "meta", {}), config=asdict(config))
    return {"path": str(kept), "sha1": _file_sha1(kept), "epochs": int(epochs)}


def _wrap(fn):
    def evaluate(widths):
        try:
            value = fn(widths)
        except (RuntimeError, ValueError) as exc:
            return EvalResult(None, "failed", f"{type(exc).__name__}: {exc}"[:300])
        if isinstance(value, EvalResult):
            return value
        value = float(value)
        if not math.isfinite(value):
            return EvalResult(None, "failed", f"non-finite score {value}")
        return EvalResult(value, "ok")

    evaluate.__name__ = getattr(fn, "__name__", "callable")
    return evaluate


def _eval_info(evaluate) -> dict:
    if isinstance(evaluate, Evaluator):
        return {"device": str(evaluate.device), **evaluate.config.__dict__}
    return {"kind": type(evaluate).__name__}


def _external(method, model, space, data, **kwargs) -> tuple[int, ...]:
    """Methods that run their own search (``dmcp``) and hand back one width vector."""
    from autoprune.dmcp import search_dmcp

    if data is None:
        raise SearchError(f"method '{method}' trains a supernet and needs data")
    # No model_name: the search writes OUT/arch.json itself, dmcp only its checkpoint.
    result = search_dmcp(model, space, data, **kwargs)
    widths = result.get("widths") if isinstance(result, dict) else getattr(result, "widths", result)
    return tuple(int(w) for w in widths)


class _Fixed(Optimizer):
    """One given width vector, scored like any candidate (used for external methods)."""

    one_shot = True

    def __init__(self, space, max_macs, *, seed=0, model=None, widths=(), role="fixed"):
        super().__init__(space, max_macs, seed=seed, model=model)
        self.widths = self.repair(space.validate(widths), np.random.default_rng(seed))
        self.role = role

    def propose(self, rng, pending):
        return None if self.n_told else (self.widths, self.role)


def _default_study(model_name, method, budget_text, seed) -> str:
    name = f"{model_name}-{method}-{budget_text}-seed{seed}"
    return re.sub(r"[^A-Za-z0-9_.%-]+", "_", name)


def _write_csv_atomic(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    fields = ["trial", "status", "score", "macs", "params", "role", "seconds", "widths", "reason", "worker"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(buf.getvalue(), path)
