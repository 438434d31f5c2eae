"""The training toolkit: what every loop that trains a network shares, written once.

Five loops train: pre-training and retraining (:mod:`autoprune.train`), the evaluator's
BatchNorm re-estimation and short fine-tune (:mod:`autoprune.evaluator`), DMCP's supernet,
the Filter Skeleton of stripe pruning and SSL's group-lasso run (in :mod:`autoprune.optimizers`).
Each keeps only its own step and takes the rest from here:

- **the batch stream** (:func:`batch_stream`): augmented training batches as slices of a seeded
  permutation, epoch after epoch, numbered by step, from any step to any other;
- **the seeding**: every seed of a run seeded ``s`` is :func:`derive_seed` ``(s, index,
  purpose)``. Epoch ``e`` is shuffled and augmented by :func:`epoch_generator` ``(s, e)``
  (purpose 0), and step ``k`` seeds the global RNG (dropout and the like) by :func:`seed_step`
  ``(s, k)`` (purpose 1) inside :func:`rng_scope`. What a step sees depends on (seed, step)
  only, so a run resumed at any step goes on as the uninterrupted one would. The evaluator's
  proxy steps alone draw every pass from one generator seeded once (``reseed=False``), the
  order candidate scores have always been measured with;
- **the schedule** (:func:`lr_schedule`): a linear warm-up, then a half cosine to zero (or a
  linear decay, or a constant);
- **the step**: :func:`sgd_step`, :func:`param_groups` (no weight decay on norms and biases)
  and :func:`prepare_model`;
- **the progress bar**: :func:`autoprune.runtime.progress_bar`, a bar that does nothing when
  progress is off, so loops update it without asking.

>>> from autoprune.data import load_data
>>> data = load_data("synthetic", val_size=0, n_train=64, image_size=8)
>>> [step for step, x, y in batch_stream(data, batch_size=16, seed=0, start=2, stop=9)]
[2, 3, 4, 5, 6, 7, 8]
>>> round(lr_schedule(5, 10), 3), lr_schedule(0, 10, warmup=4)
(0.5, 0.25)
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from autoprune.errors import DataError, TrainingError
from autoprune.runtime import autocast, progress_bar

__all__ = ["batch_stream", "derive_seed", "epoch_generator", "lr_schedule", "param_groups", "prepare_model",
           "progress_bar", "rng_scope", "seed_step", "set_lr", "sgd_step"]

DECAYS = ("cosine", "linear", "constant")


# --------------------------------------------------------------------------------------------
# Seeding.
# --------------------------------------------------------------------------------------------


EPOCH, STEP = 0, 1  # the purposes of derive_seed's seeds; a loop's own draws take others (DMCP: 2, 3)


def derive_seed(*ints: int) -> int:
    """A 63-bit seed from a tuple of ints, ``(seed, index, purpose)`` by convention: the same
    tuple gives the same seed on every platform, and neighbouring tuples give unrelated ones."""
    return int(np.random.SeedSequence([int(i) & 0xFFFFFFFF for i in ints]).generate_state(2, np.uint64)[0] >> 1)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that shuffles and augments epoch ``epoch`` of a stream seeded ``seed``."""
    return torch.Generator().manual_seed(derive_seed(seed, epoch, EPOCH))


def seed_step(seed: int, step: int) -> None:
    """Seed the global RNG for step ``step`` of a run seeded ``seed`` (dropout, stochastic depth);
    call it inside :func:`rng_scope`, so the caller's random state is left as it was."""
    torch.manual_seed(derive_seed(seed, step, STEP))


@contextlib.contextmanager
def rng_scope(device: torch.device):
    """Restores the global RNG (and ``device``'s, on CUDA) on exit: per-step seeding must not
    leak into the caller's random state."""
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


# --------------------------------------------------------------------------------------------
# The batch stream.
# --------------------------------------------------------------------------------------------


def batch_stream(data, *, batch_size: int, seed: int, stop: int, start: int = 0, device=None, augment: bool = True,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False,
                 reseed: bool = True) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(step, images, labels)`` for steps ``start`` to ``stop - 1`` of a training stream.

    Epoch ``e`` is one pass over ``data``'s training split in the order of
    :func:`epoch_generator` ``(seed, e)``, augmented from the same generator (``augment=False``:
    shuffled only), its ragged last batch dropped. A stream that starts at step ``k`` draws the
    batches before ``k`` in its epoch too, unused (augmentation consumes the generator), so it
    yields exactly the batches steps ``k...`` of a stream started at 0 yield. Under data
    parallelism every rank passes its ``rank``: each takes its own slice of the same
    permutation. With ``device`` the tensors are moved there.

    ``reseed=False`` draws every epoch from one generator, ``manual_seed(seed)``: the order
    the evaluator's proxy steps have always scored candidates with, kept so that scores stay
    bit-identical. Such a stream cannot skip to an epoch; it replays the steps before
    ``start``. Raises :class:`~autoprune.errors.DataError` when the split holds no images.
    """
    per_epoch = data.num_batches("train", batch_size=batch_size, train=True, world_size=world_size)
    if per_epoch < 1:
        raise DataError("the training split holds no images to train on")
    epoch = start // per_epoch if reseed else 0
    step = epoch * per_epoch
    once = None if reseed else torch.Generator().manual_seed(seed)
    while step < stop:
        generator = epoch_generator(seed, epoch) if reseed else once
        for x, y in data.batches("train", batch_size=batch_size, train=True, generator=generator, augment=augment,
                                 rank=rank, world_size=world_size, channels_last=channels_last):
            if step >= start:
                if device is not None:
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                yield step, x, y
            step += 1
            if step >= stop:
                return
        epoch += 1


# --------------------------------------------------------------------------------------------
# The schedule and the step.
# --------------------------------------------------------------------------------------------


def lr_schedule(step: int, total: int, *, warmup: int = 0, decay: str = "cosine") -> float:
    """The multiplier of the peak learning rate before optimizer step ``step`` of ``total``.

    The first ``warmup`` steps ramp up linearly (``(step + 1) / warmup``); then ``cosine``
    decays along a half cosine from 1 to 0 at ``total``, ``linear`` in a straight line, and
    ``constant`` stays at 1. Past ``total`` the decay stays at 0.
    """
    if step < warmup:
        return (step + 1) / warmup
    if decay == "constant":
        return 1.0
    span = max(1, total - warmup)
    done = min(step - warmup, span)
    if decay == "linear":
        return 1.0 - done / span
    if decay != "cosine":
        raise TrainingError(f"unknown decay '{decay}'; expected one of {', '.join(DECAYS)}")
    return 0.5 * (1.0 + math.cos(math.pi * done / span))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group of ``optimizer`` to learning rate ``lr``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv / linear weights only: decaying BN scales and biases only hurts."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``, channels_last on CUDA (where bf16 convolutions want it)."""
    model.to(device)
    if torch.device(device).type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def sgd_step(model, x, y, sgd, criterion, device, bn_weights=None, l1_gamma: float = 0.0, extra_loss=None):
    """One step of ``sgd`` on ``criterion(model(x), y)`` (bf16 autocast on CUDA); (loss, logits).
    ``extra_loss(x, logits, y)``, when given, is added to the criterion's loss (distillation).

    With ``l1_gamma`` the subgradient of ``l1_gamma · Σ|γ|`` over ``bn_weights`` is added
    (network slimming's sparsity on BatchNorm scales).
    """
    with autocast(device):
        logits = model(x)
    loss = criterion(logits.float(), y)
    if extra_loss is not None:
        loss = loss + extra_loss(x, logits, y)
    sgd.zero_grad(set_to_none=True)
    loss.backward()
    if l1_gamma and bn_weights:
        # Subgradient of l1_gamma * sum|gamma|, added after backward so it costs no graph.
        for w in bn_weights:
            if w.grad is not None:
                w.grad.add_(torch.sign(w.detach()), alpha=l1_gamma)
    sgd.step()
    return loss, logits
