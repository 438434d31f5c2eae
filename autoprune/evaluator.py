"""Scoring a width vector: the proxy for "how good would this architecture be".

The proxy steps live here too: :func:`recalibrate_bn` (re-estimate BatchNorm statistics
after surgery) and :func:`fine_tune` (a few SGD steps), which DMCP's derivation reuses.

:class:`Evaluator` builds the thinner model with weights inherited from the trained base
(the keep rule picks the channels; filter L1 norms by default), re-estimates BatchNorm
statistics on training batches (adaptive BN, EagleEye: without it inherited models score
near chance), fine-tunes a few steps, and measures accuracy on the *validation* split — the
test split is for final reporting only.

:class:`SyntheticObjective` is a cheap deterministic stand-in with a known non-uniform
optimum, for testing optimizers and the search machinery without training anything.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass, replace
from typing import ClassVar, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from autoprune import cost
from autoprune.errors import SearchError, one_line
from autoprune.keep import KeepRule, ScoreCache, get_keep_rule
from autoprune.runtime import autocast
from autoprune.surgery import materialise
from autoprune.task import ClassificationTask, as_task, score_model, train_steps
from autoprune.toolkit import rng_scope, seed_step


@dataclass(frozen=True)
class EvalResult:
    """The outcome of scoring one candidate. ``score`` is None unless ``status == "ok"``."""

    score: float | None
    status: str  # "ok" | "failed"
    reason: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class EvalConfig:
    """How much work one candidate gets: BatchNorm re-estimation batches, fine-tune steps,
    their batch size and learning rate, and which channels a pruned layer inherits: ``keep``,
    a keep rule's name or a :class:`~autoprune.keep.KeepRule`, held as the rule (resolved
    here, once; KeepRuleError naming the known rules for an unknown name).

    ``None`` takes the device's default: on CUDA the setting that ranked best in the proof
    (40 BN batches and 100 steps at batch 512: Kendall τ 0.39, p 0.09, over 12 VGG16 vectors at
    10 % of the MACs against 25-epoch from-scratch accuracy; BN re-estimation alone and 25 or 50
    steps were at chance), on the CPU a scaled-down 8 / 20 / 128 so that a candidate takes
    seconds, not minutes (BENCHMARKS.md, "Proof run" and "Proof v2 (CPU study)").
    """

    bn_batches: int | None = None
    fine_tune_steps: int | None = None
    batch_size: int | None = None
    lr: float = 0.01
    keep: str | KeepRule = "l1"
    seed: int = 0

    GPU_DEFAULTS: ClassVar[dict] = {"bn_batches": 40, "fine_tune_steps": 100, "batch_size": 512}
    CPU_DEFAULTS: ClassVar[dict] = {"bn_batches": 8, "fine_tune_steps": 20, "batch_size": 128}

    def __post_init__(self):
        for name, shown, low in (("bn_batches", "bn-batches", 1), ("batch_size", "eval-batch-size", 1),
                                 ("fine_tune_steps", "fine-tune-steps", 0)):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low):
                what = "a positive integer" if low == 1 else f"an integer of at least {low}"
                raise SearchError(f"{shown} must be {what}, got {v!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, numbers.Real) or not (math.isfinite(self.lr)
                                                                                       and self.lr > 0):
            raise SearchError(f"lr must be a positive number, got {self.lr!r}")
        object.__setattr__(self, "keep", get_keep_rule(self.keep))

    def to_dict(self) -> dict:
        """The settings as JSON, the keep rule by its name."""
        return {**asdict(self), "keep": self.keep.name}

    def resolved(self, device) -> "EvalConfig":
        """This config with every unset field taken from ``device``'s defaults."""
        defaults = self.GPU_DEFAULTS if torch.device(device).type == "cuda" else self.CPU_DEFAULTS
        return replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})

    @classmethod
    def for_device(cls, device, **overrides) -> "EvalConfig":
        return cls(**{k: v for k, v in overrides.items() if v is not None}).resolved(device)


class Evaluator:
    """Score = the task's score (validation accuracy for a dataset) of the inherited,
    recalibrated, briefly fine-tuned model.

    ``data``: a :class:`~autoprune.task.Task`, or loaded data for its classification task.
    Called once per candidate by the search driver. Any failure (non-finite loss, out of
    memory, a RuntimeError from an odd shape) is returned as a failed result with its reason;
    the search goes on. The keep rule is fitted to the base once, here: a data-driven rule
    (``hrank``, ``activation``, ``apoz``, ``reconstruct``) measures a seeded sample of
    ``data`` (read from / written to ``cache`` when given, see :mod:`autoprune.keep`).
    """

    def __init__(self, base_model: torch.nn.Module, space, data, *, config: EvalConfig | None = None,
                 device="cpu", cache: ScoreCache | None = None):
        self.base = base_model
        self.space = space
        self.task = as_task(data)
        self.device = torch.device(device)
        self.config = (config or EvalConfig()).resolved(device)
        sample = self.task.data if isinstance(self.task, ClassificationTask) else self.task
        self.keep = self.config.keep.fit(base_model, space.graph, sample, seed=self.config.seed, device=self.device,
                                         cache=cache)

    def __call__(self, widths: Sequence[int]) -> EvalResult:
        widths = tuple(int(w) for w in widths)
        c = self.config
        start = time.perf_counter()
        model = None
        try:
            model = materialise(self.base, self.space, widths, keep=self.keep, seed=c.seed).to(self.device)
            if c.bn_batches > 0:
                recalibrate_bn(model, self.task, batches=c.bn_batches, batch_size=c.batch_size,
                               device=self.device, seed=c.seed)
            if c.fine_tune_steps > 0:
                fine_tune(model, self.task, steps=c.fine_tune_steps, lr=c.lr, batch_size=c.batch_size,
                          device=self.device, seed=c.seed)
            score = score_model(model, self.task, self.device)
            if not math.isfinite(score):
                raise RuntimeError(f"non-finite score {score}")
            return EvalResult(score, "ok", "", time.perf_counter() - start)
        except (RuntimeError, ValueError, torch.cuda.OutOfMemoryError) as exc:
            reason = f"{type(exc).__name__}: {one_line(exc)}"[:300]
            return EvalResult(None, "failed", reason, time.perf_counter() - start)
        finally:
            del model
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data, *, batches: int = 40, batch_size: int = 256, device="cpu",
                   seed: int = 0) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from training batches.

    After surgery the inherited statistics describe channels that no longer feed each layer;
    re-estimating them is what makes a pruned model's accuracy a usable proxy (EagleEye, Li et
    al. 2020). Statistics are reset and then averaged cumulatively (``momentum=None``) over
    ``batches`` un-augmented training batches of ``data`` (a :class:`~autoprune.task.Task`, or
    a dataset for its classification task), with no gradient. The modules' train/eval modes
    and momenta are restored afterwards.

    A dataset's batches are the first ``batches`` of a :func:`~autoprune.toolkit.batch_stream`
    seeded ``seed`` that draws every pass from one generator (``reseed=False``), the order
    candidates have always been scored with.
    """
    device = torch.device(device)
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    if not bns:
        return model
    task = as_task(data)
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    stream = task.batches(batch_size=batch_size, seed=seed, steps=batches, device=device, augment=False)
    try:
        with rng_scope(device), autocast(device):
            for step, batch in enumerate(stream):
                if step >= batches:
                    break
                seed_step(seed, step)
                model(task.inputs(batch))
    finally:
        for m in bns:
            m.momentum = momenta[m]
        for m, mode in modes.items():
            m.training = mode
    return model


def fine_tune(model: nn.Module, data, *, steps: int, lr: float = 0.01, batch_size: int = 256, device="cpu",
              seed: int = 0, momentum: float = 0.9, weight_decay: float = 5e-4) -> float:
    """A few augmented SGD steps on the task's loss (``data``: a :class:`~autoprune.task.Task`,
    or a dataset for its classification task); returns the mean training loss.

    The learning rate decays from ``lr`` to zero along a half cosine, so the last steps do
    not leave the weights in a noisy spot. A dataset's batches come from a
    :func:`~autoprune.toolkit.batch_stream` seeded ``seed`` that draws every pass from one
    generator (``reseed=False``), so that candidate scores stay what they have always been.
    Raises :class:`TrainingError` when the loss is not finite (the caller may treat the
    candidate as failed).
    """
    return train_steps(model, as_task(data), steps=steps, lr=lr, batch_size=batch_size, device=device, seed=seed,
                       momentum=momentum, weight_decay=weight_decay)


class SyntheticObjective:
    """A deterministic score with a non-uniform optimum under a MACs budget.

    ``score = Σ_g a_g · log(w_g / W_g) / Σ a_g`` (squashed into (0, 1)), with per-group
    weights ``a_g`` drawn from ``seed``: groups differ in how
    much width is worth, so the best vector at a budget is not the uniform one and a search
    that learns finds better vectors than random draws. ``calls`` counts evaluations.
    """

    def __init__(self, space, *, seed: int = 0, fail: Sequence[tuple[int, ...]] = ()):
        rng = np.random.default_rng(seed)
        self.space = space
        self.weights = rng.uniform(0.1, 1.0, len(space.choices)) ** 2
        self.max_widths = np.array(space.max_widths(), dtype=float)
        self.fail = {tuple(w) for w in fail}
        self.calls = 0
        self.evaluated: list[tuple[int, ...]] = []

    def __call__(self, widths: Sequence[int]) -> EvalResult:
        key = tuple(int(w) for w in widths)
        self.calls += 1
        self.evaluated.append(key)
        if key in self.fail:
            return EvalResult(None, "failed", "RuntimeError: synthetic failure")
        r = np.array(key, dtype=float) / self.max_widths
        score = float((self.weights * np.log(r)).sum() / self.weights.sum())
        # Squash to (0, 1) like an accuracy; monotone, so rankings are unchanged.
        return EvalResult(1.0 / (1.0 + math.exp(-4.0 * score - 2.0)), "ok")

    def macs_ratio(self, widths) -> float:
        return cost.macs(self.space, widths) / cost.macs(self.space, self.space.max_widths())
