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
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from autoprune import cost
from autoprune.errors import CheckpointError, SearchError
from autoprune.files import write_text
from autoprune.train import resolve_device
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


def search(model, budget=0.4, method: str = "abc", data="cifar10", *, trials: int | None = None,
           base: str | os.PathLike | None = None, storage: str | None = None, study: str | None = None,
           out: str | os.PathLike | None = None, seed: int = 0, device: str | None = None,
           input_size: int | None = None, num_classes: int | None = None, data_dir=None, keep: str = "l1",
           limit: int | None = None, val_size: int | None = None, fine_tune_steps: int | None = None,
           bn_batches: int | None = None, eval_batch_size: int | None = None, lr: float | None = None,
           pretrain_epochs: int = 10, objective: str | Callable | None = None, method_options: dict | None = None,
           space_options: dict | None = None, progress: bool = False) -> SearchResult:
    """Search per-group widths of ``model`` under ``budget`` and write ``OUT/arch.json``.

    ``model``: registry name (``vgg16``, ``tv:resnet18``, ``pkg.mod:fn``) or an nn.Module.
    ``budget``: ratio of the base MACs (0 < b ≤ 1) or absolute MACs (``"120M"``).
    ``method``: ``abc``, ``tpe``, ``random``, ``uniform``, ``slimming``, ``l1-global`` or ``dmcp``.
    ``data``: dataset name for :func:`autoprune.data.load_data`, or a loaded ``Data``.
    ``trials``: candidates to score in the study (default 50; one-shot methods score one).
    ``base``: checkpoint of the trained base model; without it a base is pre-trained for
    ``pretrain_epochs`` and kept in ``OUT/base/`` so that a rerun reuses it.
    ``storage`` / ``study``: Optuna storage URL (default ``sqlite:///OUT/study.db``) and study
    name; rerunning resumes, and several processes on one study share the work.
    ``objective``: None (the evaluator: inherit, recalibrate BN, fine-tune, validation
    accuracy), ``"synthetic"`` (a cheap deterministic score, no data or training), or a
    callable ``widths -> float | EvalResult``.
    """
    start = time.perf_counter()
    out = Path(out if out is not None else DEFAULT_OUT)
    device = resolve_device(device)
    method_options = dict(method_options or {})
    trials = 50 if trials is None else int(trials)
    if trials < 1:
        raise SearchError(f"trials must be at least 1, got {trials}")
    if method not in EXTERNAL:
        get_optimizer(method)  # unknown method: fail before any data is loaded
    budget = parse_budget(budget)

    # -- data, model, space ------------------------------------------------------------------
    needs_data = objective is None
    loaded = None
    if needs_data:
        loaded = _load_data(data, data_dir, device=device, seed=seed, limit=limit, val_size=val_size)
    model, model_name, kwargs = _resolve_model(model, loaded, num_classes, seed)
    if loaded is not None:
        input_shape = tuple(loaded.input_shape) if input_size is None else (loaded.input_shape[0], input_size, input_size)
    else:
        from autoprune.models import default_input_size

        size = input_size or (default_input_size(model_name) if isinstance(model_name, str) else 32)
        input_shape = (kwargs.get("in_channels", 3), size, size)
    from autoprune.space import SearchSpace

    space = SearchSpace.from_model(model, input_shape, model_name=model_name, **(space_options or {}))
    base_macs = cost.macs(space, space.max_widths())
    max_macs = budget.max_macs(base_macs)
    check_reachable(space, max_macs, budget)

    # -- the trained base ----------------------------------------------------------------------
    needs_base = objective is None or method in ("slimming", "l1-global", "dmcp")
    if needs_base:
        model = _base_model(model, model_name, kwargs, base, out, loaded, data, data_dir, device, seed,
                            pretrain_epochs, limit, val_size, progress)

    # -- objective -----------------------------------------------------------------------------
    if objective is None:
        config = EvalConfig.for_device(device, fine_tune_steps=fine_tune_steps, bn_batches=bn_batches,
                                       batch_size=eval_batch_size, lr=lr, keep=keep, seed=seed)
        evaluate = Evaluator(model, space, loaded, config=config, device=device)
    elif objective == "synthetic":
        evaluate = SyntheticObjective(space, seed=seed)
    elif callable(objective):
        evaluate = _wrap(objective)
    else:
        raise SearchError(f"unknown objective {objective!r}; expected None, 'synthetic' or a callable")

    # -- optimizer -------------------------------------------------------------------------------
    if method in EXTERNAL:
        widths = _external(method, model, space, loaded, budget_macs=max_macs, seed=seed, device=device,
                           out_dir=out / method, progress=progress, model_name=str(model_name),
                           model_kwargs=kwargs, budget=budget.text, **method_options)
        optimizer: Optimizer = _Fixed(space, max_macs, seed=seed, widths=widths, role=method)
    else:
        optimizer = get_optimizer(method)(space, max_macs, seed=seed, model=model if needs_base else None,
                                          **method_options)

    # -- study and search ----------------------------------------------------------------------
    url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
    study = study or _default_study(model_name, method, budget.text, seed)
    space_sig = hashlib.sha1(json.dumps(space.to_dict(), sort_keys=True).encode()).hexdigest()[:12]
    meta = {"model": str(model_name), "space": space_sig, "max_macs": int(max_macs), "method": method,
            "seed": int(seed), "budget": budget.text}
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
    store = TrialStore(url, study, meta=meta)
    out.mkdir(parents=True, exist_ok=True)
    scored_here = 0

    def on_result(_record):
        nonlocal scored_here
        scored_here += 1

    bar = _progress(trials if not optimizer.one_shot else 1, f"search {method}", progress)
    try:
        records = run_search(optimizer, evaluate, store, trials=trials, seed=seed, progress=bar, on_result=on_result)
    finally:
        if bar is not None:
            bar.close()

    # -- winner and files ------------------------------------------------------------------------
    scored = [r for r in records if r.status in (STATUS_OK, STATUS_FAILED)]
    ok = [r for r in scored if r.status == STATUS_OK]
    if not ok:
        reason = scored[0].reason if scored else "no candidate was scored"
        raise SearchError(f"no candidate could be scored ({len(scored)} failed; first: {reason})")
    best = max(ok, key=lambda r: (r.score, -r.trial_id))
    seconds = time.perf_counter() - start
    from autoprune.arch import make_arch, save_arch

    arch = make_arch(str(model_name), kwargs, space, best.widths,
                     budget={**budget.to_dict(), "max_macs": int(max_macs), "ratio": max_macs / base_macs},
                     method=method, seed=int(seed), score=float(best.score),
                     extra={"search": {"study": study, "candidates": len(ok), "failed": len(scored) - len(ok),
                                       "objective": "evaluator" if objective is None else str(getattr(objective, "__name__", objective)),
                                       "evaluator": _eval_info(evaluate), "seconds": round(seconds, 2)}})
    rows = [r.row() for r in scored]
    save_arch(arch, out / "arch.json")
    _write_csv_atomic(rows, out / "trials.csv")
    return SearchResult(widths=list(best.widths), arch=arch, trials=rows, method=method, score=float(best.score),
                        seconds=seconds, out=out, info={"scored_here": scored_here, "storage": url, "study": study})


# --------------------------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------------------------


def _load_data(data, data_dir, *, device, seed, limit, val_size):
    if not isinstance(data, str):
        return data.to(device) if hasattr(data, "to") else data
    from autoprune.data import load_data

    kw = {}
    if val_size is not None:
        kw["val_size"] = val_size
    elif data.lower() == "synthetic":
        kw["val_size"] = 256  # the synthetic set has 1024 training images
    return load_data(data, data_dir, seed=seed, device=device, limit=limit, **kw)


def _resolve_model(model, data, num_classes, seed):
    from autoprune.models import create_model, model_kwargs

    if isinstance(model, nn.Module):
        cls = type(model)
        return model, f"{cls.__module__}:{cls.__name__}", {}
    if not isinstance(model, str):
        raise SearchError(f"model must be a registry name or an nn.Module, got {type(model).__name__}")
    kwargs = {}
    classes = num_classes if num_classes is not None else (data.num_classes if data is not None else None)
    if classes is not None:
        if data is not None and num_classes is not None and num_classes != data.num_classes:
            raise SearchError(f"--num-classes {num_classes} does not match the dataset's {data.num_classes} classes")
        kwargs["num_classes"] = classes
    if data is not None and data.input_shape[0] != 3:
        kwargs["in_channels"] = data.input_shape[0]
    kwargs = model_kwargs(model, **kwargs)
    torch.manual_seed(seed)
    return create_model(model, **kwargs), model, kwargs


def _base_model(model, model_name, kwargs, base, out, data, data_name, data_dir, device, seed, epochs, limit,
                val_size, progress):
    """Load the base weights from ``base``, or from / into ``OUT/base/model.pt``."""
    from autoprune.train import TrainConfig, load_checkpoint, save_checkpoint, train

    if base is not None:
        ckpt = load_checkpoint(base, model)
        recorded = ckpt.get("model_name")
        if recorded and isinstance(model_name, str) and recorded != model_name:
            raise CheckpointError(f"checkpoint '{base}' is for model '{recorded}', not '{model_name}'")
        return model.to(device)
    kept = out / "base" / "model.pt"
    if kept.is_file():
        load_checkpoint(kept, model)
        return model.to(device)
    if data is None:
        data = _load_data(data_name, data_dir, device=device, seed=seed, limit=limit, val_size=val_size)
    torch.manual_seed(seed)
    kept.parent.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(epochs=int(epochs), seed=seed,
                         batch_size=512 if torch.device(device).type == "cuda" else 128,
                         lr=0.2 if torch.device(device).type == "cuda" else 0.05)
    train(model, data, config, device=device, out_dir=out / "base", progress=progress,
          extra={"model_name": model_name, "model_kwargs": kwargs})
    save_checkpoint(kept, model, model_name=model_name, model_kwargs=kwargs, input_shape=list(data.input_shape),
                    dataset=getattr(data, "meta", {}))
    return model.to(device)


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


def _external(method, *args, **kwargs) -> tuple[int, ...]:
    """Methods that run their own search (``dmcp``) and hand back one width vector."""
    try:
        from autoprune.dmcp import search_dmcp
    except ImportError:
        try:
            from autoprune.search.dmcp import search_dmcp
        except ImportError:
            raise SearchError(f"method '{method}' is not available in this installation") from None
    result = search_dmcp(*args, **kwargs)
    widths = result.get("widths") if isinstance(result, dict) else getattr(result, "widths", result)
    return tuple(int(w) for w in widths)


class _Fixed(Optimizer):
    """One given width vector, scored like any candidate (used for external methods)."""

    one_shot = True

    def __init__(self, space, max_macs, *, seed=0, model=None, widths=(), role="fixed"):
        super().__init__(space, max_macs, seed=seed, model=model)
        self.widths = self.repair(space.validate(widths), __import__("numpy").random.default_rng(seed))
        self.role = role

    def propose(self, rng, pending):
        return None if self.n_told else (self.widths, self.role)


def _default_study(model_name, method, budget_text, seed) -> str:
    name = f"{model_name}-{method}-{budget_text}-seed{seed}"
    return re.sub(r"[^A-Za-z0-9_.%-]+", "_", name)


def _progress(total, desc, show):
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)


def _write_csv_atomic(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    fields = ["trial", "status", "score", "macs", "params", "role", "seconds", "widths", "reason", "worker"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(buf.getvalue(), path)
