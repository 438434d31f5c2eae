"""Training, evaluation and the short procedures the search evaluator relies on.

One readable loop (:func:`train`) serves pre-training the base model and retraining a pruned
architecture from scratch. On CUDA it runs under bf16 autocast with channels_last tensors; on
the CPU in fp32. Every epoch ends with a validation pass and an atomic checkpoint, from which
an interrupted run resumes to the same final state. Under ``torchrun`` (``WORLD_SIZE > 1``)
the same loop runs data-parallel: each rank takes a disjoint slice of one shared permutation.
Batches, seeding, the schedule's shape, the SGD step and the progress bar are the training
toolkit's (:mod:`autoprune.toolkit`); what is this loop's own is the run around them.

Measurement lives here too: :func:`accuracy` on resident tensors and :func:`split_accuracy`
on a split of any dataset. Checkpoint files are :mod:`autoprune.checkpoint`'s; the proxy
steps of the search (BatchNorm recalibration, a short fine-tune) are the evaluator's.

>>> from autoprune.data import load_data
>>> from autoprune.models import create_model
>>> data = load_data("synthetic", val_size=128)
>>> model = create_model("resnet20", num_classes=data.num_classes)
>>> history = train(model, data, TrainConfig(epochs=1, batch_size=128), progress=False)
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from autoprune.checkpoint import load_checkpoint, save_checkpoint
from autoprune.checks import check_counts
from autoprune.data import iterate
from autoprune.errors import CheckpointError, DataError, TrainingError
from autoprune.files import check_out_dir
from autoprune.runtime import autocast, log
from autoprune.toolkit import (
    batch_stream,
    lr_schedule,
    param_groups,
    prepare_model,
    progress_bar,
    rng_scope,
    seed_step,
    sgd_step,
)

# Scratch-B trains a pruned model for the base model's compute, but Liu et al. (ICLR 2019) cap
# the extra epochs at 2x: "if the pruned model saves more than 2x FLOPs, we just double the
# number of epochs".
SCRATCH_B_CAP = 2.0
_LOG_EVERY = 20  # steps between loss read-backs: each one is a device sync


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run; saved into every checkpoint.

    ``lr`` is the peak learning rate for ``batch_size`` (global, over all ranks). ``warmup``
    is the fraction of steps spent ramping up linearly; after it ``onecycle`` decays linearly
    to zero and ``cosine`` along a half cosine. Weight decay skips BatchNorm and bias
    parameters. ``l1_gamma`` adds an L1 penalty on BatchNorm scales (network slimming, Liu et
    al. 2017). ``max_steps`` stops early, for smoke tests and benchmarks.
    """

    epochs: int = 25
    batch_size: int = 512
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    schedule: str = "onecycle"
    warmup: float = 0.15
    seed: int = 0
    l1_gamma: float = 0.0
    max_steps: int | None = None
    pad_mode: str = "reflect"

    def __post_init__(self):
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise TrainingError(f"unknown schedule '{self.schedule}'; expected onecycle, cosine or constant")
        check_counts(epochs=self.epochs, batch_size=self.batch_size, error=TrainingError)
        if not 0 <= self.warmup < 1:
            raise TrainingError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainingError(f"lr must be a positive finite number, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise TrainingError(f"weight decay must be a finite number >= 0, got {self.weight_decay}")
        if not 0 <= self.label_smoothing < 1:
            raise TrainingError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if not (math.isfinite(self.l1_gamma) and self.l1_gamma >= 0):
            raise TrainingError(f"l1 gamma must be a finite number >= 0, got {self.l1_gamma}")

    @classmethod
    def for_device(cls, device, **overrides) -> "TrainConfig":
        """The defaults for ``device``: batch 512 at lr 0.2 on CUDA, batch 128 at lr 0.05 on the
        CPU (where a step of 512 images takes seconds); ``overrides`` win."""
        gpu = torch.device(device).type == "cuda"
        base = {"batch_size": 512, "lr": 0.2} if gpu else {"batch_size": 128, "lr": 0.05}
        return cls(**{**base, **{k: v for k, v in overrides.items() if v is not None}})

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def scratch_b_epochs(base_epochs: int, base_macs: int, pruned_macs: int, cap: float = SCRATCH_B_CAP) -> int:
    """Epochs that give a pruned model the base model's training compute (Scratch-B).

    ``round(base_epochs * base_macs / pruned_macs)``, at most ``cap * base_epochs`` and never
    fewer than ``base_epochs``.
    """
    if base_macs <= 0 or pruned_macs <= 0:
        raise TrainingError(f"Scratch-B needs positive MACs, got base {base_macs} and pruned {pruned_macs}")
    ratio = min(max(base_macs / pruned_macs, 1.0), cap)
    return int(round(base_epochs * ratio))


# A TrainConfig schedule is a warm-up followed by one of the toolkit's decays.
_DECAY = {"onecycle": "linear", "cosine": "cosine", "constant": "constant"}


def lr_factor(step: int, total: int, schedule: str, warmup: float) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` of ``total`` under a
    :class:`TrainConfig` ``schedule`` with a ``warmup`` fraction of the steps."""
    return lr_schedule(step, total, warmup=int(round(warmup * total)), decay=_DECAY[schedule])


def _bn_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, _BatchNorm) and m.weight is not None]


# --------------------------------------------------------------------------------------------
# Evaluation and the evaluator's helpers.
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, data, device="cpu", batch_size: int = 1024,
             max_batches: int | None = None) -> float:
    """Top-1 accuracy (0..1) of ``model`` on resident uint8 images ``x``, normalised like ``data``.

    ``max_batches`` caps the pass at that many batches (the first ones, in order). Raises
    :class:`~autoprune.errors.DataError` when there are no images: an accuracy of nothing is
    not a number to report.
    """
    if len(y) == 0:
        raise DataError("cannot measure accuracy on 0 images (is the validation split empty? pass --val-size > 0)")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)
    total = 0
    cl = device.type == "cuda"
    batches = iterate(x, y, batch_size=batch_size, train=False, mean=data.mean, std=data.std, channels_last=cl)
    with autocast(device):
        for i, (xb, yb) in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            correct += (model(xb.to(device, non_blocking=True)).argmax(1) == yb.to(device)).sum()
            total += len(yb)
    model.train(was_training)
    return correct.item() / total


@torch.no_grad()
def split_accuracy(model: nn.Module, data, split: str = "val", *, device="cpu", batch_size: int = 1024,
                   max_batches: int | None = None) -> float:
    """Accuracy on a split of a resident or streamed dataset (see :func:`accuracy`).

    Raises :class:`~autoprune.errors.DataError` when the split holds no images.
    """
    if data.resident:
        x, y = data.split(split)
        if len(y) == 0:
            raise DataError(f"the {split} split of '{data.meta.get('name', 'the dataset')}' is empty; "
                            + ("pass --val-size > 0 to hold out validation images" if split == "val"
                               else "there is nothing to evaluate"))
        return accuracy(model, x, y, data=data, device=device, batch_size=batch_size, max_batches=max_batches)
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct, total = 0, 0
    with autocast(device):
        for i, (xb, yb) in enumerate(data.batches(split, batch_size=batch_size, train=False,
                                                  channels_last=device.type == "cuda")):
            if max_batches is not None and i >= max_batches:
                break
            correct += (model(xb.to(device)).argmax(1) == yb.to(device)).sum().item()
            total += len(yb)
    model.train(was_training)
    if total == 0:
        raise DataError(f"the {split} split of '{data.meta.get('name', 'the dataset')}' is empty; "
                        "there is nothing to evaluate")
    return correct / total


# --------------------------------------------------------------------------------------------
# The training loop.
# --------------------------------------------------------------------------------------------


def _setup_distributed(device: torch.device) -> tuple[int, int, torch.device, bool]:
    """Join the process group torchrun describes; returns (rank, world, device, created)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device, False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device, True


def train(model: nn.Module, data, config: TrainConfig | None = None, *, device="cpu", out_dir=None,
          resume: bool = True, progress: bool = True, arch: dict | None = None, extra: dict | None = None,
          extra_loss=None) -> dict:
    """Train ``model`` on ``data``'s training split; returns the history.

    Evaluates on the validation split after every epoch (when ``data`` has one; with an empty
    validation split the ``val_acc`` entries are NaN). With ``out_dir``, writes
    ``out_dir/checkpoint.pt`` atomically after every epoch (model, optimizer, scheduler,
    config, ``arch``, ``extra`` fields) and, when ``resume`` is true and such a checkpoint
    exists, continues from it: batches and the global RNG of every step follow from
    (``config.seed``, step) (:mod:`autoprune.toolkit`), so the resumed run ends where the
    uninterrupted one would; the caller's global random state is left as it was. Raises
    :class:`TrainingError` on a non-finite loss; the last checkpoint (from the last finished
    epoch) is left as it was.

    The returned dict has ``epochs`` (one record per epoch: train_loss, train_acc, val_acc,
    lr, seconds, img_per_s), ``val_acc``, ``best_val_acc``, ``steps``, ``img_per_s`` and
    ``resumed_from`` (the epoch training started at).

    ``extra_loss(x, logits, y) -> scalar tensor``, when given, is added to the cross-entropy of
    every training step (knowledge distillation adds its divergence from a teacher's outputs
    here); it is not saved, so a resumed run must be given the same one.
    """
    config = config or TrainConfig()
    if out_dir is not None:
        check_out_dir(out_dir, "out_dir")
    device = torch.device(device)
    rank, world, device, created_group = _setup_distributed(device)
    try:
        return _train(model, data, config, device, rank, world, out_dir, resume, progress, arch, extra or {},
                      extra_loss)
    finally:
        if created_group:
            dist.destroy_process_group()


@dataclass
class _TrainingRun:
    """One pre-training or retraining run's moving parts: the (possibly DDP-wrapped) net, SGD,
    schedule, loss."""

    model: nn.Module
    net: nn.Module
    sgd: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    criterion: nn.Module
    bn_weights: list | None
    device: torch.device
    rank: int
    world: int
    local_bs: int
    steps_per_epoch: int
    total: int
    extra_loss: object = None


def _start(model, data, config, device, rank, world) -> _TrainingRun:
    if config.batch_size % world:
        raise TrainingError(f"batch size {config.batch_size} does not split evenly over {world} processes")
    local_bs = config.batch_size // world
    prepare_model(model, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # shapes are fixed for the whole run
    sgd = torch.optim.SGD(param_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum,
                          nesterov=config.nesterov and config.momentum > 0)
    steps_per_epoch = data.num_batches("train", batch_size=local_bs, train=True, world_size=world)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: lr_factor(s, total, config.schedule, config.warmup))
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return _TrainingRun(model, net, sgd, scheduler, nn.CrossEntropyLoss(label_smoothing=config.label_smoothing),
                        _bn_weights(model) if config.l1_gamma else None, device, rank, world, local_bs, steps_per_epoch, total)


def _resume(run: _TrainingRun, config, ckpt_path: Path | None, resume: bool) -> tuple[int, int, list]:
    """(start epoch, step, history) from ``ckpt_path`` when resuming, else a fresh start."""
    if ckpt_path is None or not resume or not ckpt_path.is_file():
        return 0, 0, []
    ckpt = load_checkpoint(ckpt_path, run.model, sgd=run.sgd, scheduler=run.scheduler, map_location=run.device)
    saved = ckpt.get("config", {})
    if saved != asdict(config):
        diff = {k: (saved.get(k), v) for k, v in asdict(config).items() if saved.get(k) != v}
        raise CheckpointError(f"'{ckpt_path}' was written with another configuration ({diff}); "
                              "use a new output directory or turn resuming off")
    return int(ckpt["epoch"]), int(ckpt["step"]), list(ckpt.get("history", []))


def _train(model, data, config, device, rank, world, out_dir, resume, progress, arch, extra, extra_loss=None) -> dict:
    run = _start(model, data, config, device, rank, world)
    run.extra_loss = extra_loss
    ckpt_path = Path(out_dir) / "checkpoint.pt" if out_dir is not None else None
    start_epoch, step, history = _resume(run, config, ckpt_path, resume)
    show = progress and rank == 0
    if show and start_epoch:
        log(f"resuming from {ckpt_path} at epoch {start_epoch + 1}")
    for epoch in range(start_epoch, config.epochs):
        if step >= run.total:
            break
        record = _epoch(run, data, config, epoch, step, ckpt_path, show)
        step = record["step"]
        history.append(record)
        if show:
            log(f"epoch {epoch + 1}/{config.epochs}  loss {record['train_loss']:.4f}  train acc "
                f"{record['train_acc']:.4f}  val acc {record['val_acc']:.4f}  {record['img_per_s']:,.0f} img/s")
        _check_weights(model, epoch, ckpt_path)  # a checkpoint on disk is always a finite one
        if ckpt_path is not None and rank == 0:
            save_checkpoint(ckpt_path, model, sgd=run.sgd, scheduler=run.scheduler, epoch=epoch + 1, step=step,
                            config=asdict(config), arch=arch, history=history, **extra)
        if world > 1:
            dist.barrier()
    vals = [r["val_acc"] for r in history if math.isfinite(r["val_acc"])]
    rates = [r["img_per_s"] for r in history[start_epoch:]] or [float("nan")]
    return {"epochs": history, "val_acc": vals[-1] if vals else float("nan"),
            "best_val_acc": max(vals, default=float("nan")), "steps": step,
            "img_per_s": sorted(rates)[len(rates) // 2], "resumed_from": start_epoch, "world_size": world}


def _epoch(run: _TrainingRun, data, config, epoch: int, step: int, ckpt_path, show: bool) -> dict:
    """One pass over the training split, then validation; the epoch's record."""
    device, world = run.device, run.world
    run.net.train()
    first, stop = step, min(step + run.steps_per_epoch, run.total)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = 0
    start = time.perf_counter()
    batches = batch_stream(data, batch_size=run.local_bs, seed=config.seed, start=step, stop=stop, device=device,
                           rank=run.rank, world_size=world, channels_last=device.type == "cuda")
    with rng_scope(device), progress_bar(stop - first, f"epoch {epoch + 1}/{config.epochs}", show) as bar:
        for step, x, y in batches:
            seed_step(config.seed, step)
            loss, logits = sgd_step(run.net, x, y, run.sgd, run.criterion, device, run.bn_weights, config.l1_gamma,
                                    run.extra_loss)
            run.scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if (step + 1 - first) % _LOG_EVERY == 0 or step + 1 == stop:
                mean_loss = (loss_sum / seen).item()
                _check_finite(mean_loss, epoch, step + 1, run.sgd, ckpt_path)
                rate = seen * world / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{correct.item() / seen:.3f}", img_s=f"{rate:,.0f}")
            bar.update()
    train_loss = (loss_sum / max(1, seen)).item()
    _check_finite(train_loss, epoch, stop, run.sgd, ckpt_path)
    seconds = time.perf_counter() - start
    if world > 1:
        # DDP syncs gradients, not BatchNorm buffers: take rank 0's so every rank evaluates
        # and saves the same model.
        for buf in run.model.buffers():
            dist.broadcast(buf, 0)
    has_val = data.num_examples("val") > 0
    val_acc = split_accuracy(run.model, data, "val", device=device) if has_val else float("nan")
    return {"epoch": epoch + 1, "step": stop, "train_loss": train_loss, "train_acc": correct.item() / max(1, seen),
            "val_acc": val_acc, "lr": run.sgd.param_groups[0]["lr"], "seconds": seconds,
            "img_per_s": seen * world / seconds}


def _check_weights(model: nn.Module, epoch: int, ckpt_path) -> None:
    """TrainingError when a weight or BatchNorm statistic is not finite (a loss can stay finite
    while the weights are already inf or NaN, e.g. with a huge learning rate)."""
    bad = sum(int((~torch.isfinite(t)).sum()) for t in model.state_dict().values() if t.is_floating_point())
    if bad:
        kept = (f"; the last finite checkpoint is kept at {ckpt_path}"
                if ckpt_path is not None and Path(ckpt_path).is_file() else "")
        raise TrainingError(f"the weights became non-finite ({bad} values) in epoch {epoch + 1}{kept}; "
                            "lower the learning rate")


def _check_finite(loss: float, epoch: int, step: int, sgd, ckpt_path) -> None:
    if math.isfinite(loss):
        return
    kept = f"; the last finite checkpoint is kept at {ckpt_path}" if ckpt_path is not None and ckpt_path.is_file() else ""
    raise TrainingError(f"training loss became non-finite ({loss}) in epoch {epoch + 1} (step {step}, lr "
                        f"{sgd.param_groups[0]['lr']:.3g}){kept}; lower the learning rate")


