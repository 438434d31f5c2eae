"""What a candidate is scored by: a :class:`Task` brings the data, the loss and the score.

The evaluator does the same four things for every task: it inherits the base's weights, re-
estimates BatchNorm statistics on the task's batches, fine-tunes a few steps on the task's
loss, and takes the task's score (higher is better: top-1, mIoU, mAP). A task says only what
differs between a classifier, a segmenter and a detector:

* :meth:`Task.batches`: training batches, in any structure the task's loss understands;
* :meth:`Task.inputs`: what the model is called with, taken from a batch;
* :meth:`Task.loss`: the training loss of the model's outputs on a batch (the user's loss);
* :meth:`Task.score`: the model's score on held-out data;
* :meth:`Task.distill` (optional): the teacher signal, a loss between the student's and the
  unpruned teacher's outputs, used by ``autoprune finetune --distill``.

:class:`ClassificationTask` is the built-in recipe (cross-entropy, top-1 on the validation
split) over an :class:`autoprune.data.Dataset`. Other tasks plug in by ``--task
package.module:callable`` on the command line and as ``data=`` in Python (a task brings its
own data); :func:`load_task` resolves the former. ``examples/tasks/`` holds a segmentation and
a detection task.

>>> from autoprune.data import load_data
>>> task = ClassificationTask(load_data("synthetic", num_classes=3, image_size=8, n_train=32, n_test=8, val_size=8))
>>> task.name, task.input_shape
('classification', (3, 8, 8))
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from autoprune.errors import SearchError, TrainingError
from autoprune.imports import import_callable
from autoprune.runtime import autocast
from autoprune.toolkit import batch_stream, lr_schedule, param_groups, prepare_model, rng_scope, seed_step, set_lr
from autoprune.train import split_accuracy

__all__ = ["ClassificationTask", "Task", "as_task", "index_batches", "load_task", "score_model", "task_step", "train_steps"]


class Task:
    """A task the evaluator scores candidates on. Subclass it and give ``name``, ``input_shape``,
    :meth:`batches`, :meth:`loss` and :meth:`score`; :meth:`inputs`, :meth:`distill` and
    :meth:`epoch_steps` have defaults.

    ``name`` is recorded in the trials database and ``arch.json``; ``input_shape`` is the
    ``(channels, height, width)`` of one input image, the shape the model is traced at.
    """

    name: str = "task"
    input_shape: Sequence[int] = ()

    def batches(self, *, batch_size: int, seed: int, steps: int, device, augment: bool = True) -> Iterable:
        """``steps`` training batches of ``batch_size``, in an order fixed by ``seed``, on ``device``
        (``augment=False``: the batches BatchNorm statistics are re-estimated on)."""
        raise NotImplementedError

    def inputs(self, batch):
        """What the model is called with: the batch's first item by default."""
        return batch[0]

    def loss(self, outputs, batch, *, model: nn.Module) -> torch.Tensor:
        """The scalar training loss of ``model``'s ``outputs`` on ``batch``."""
        raise NotImplementedError

    def score(self, model: nn.Module, *, device) -> float:
        """``model``'s score on held-out data, higher is better. The model is in eval mode."""
        raise NotImplementedError

    def distill(self, outputs, teacher_outputs, batch, *, temperature: float) -> torch.Tensor:
        """A loss pulling the student's ``outputs`` towards the teacher's (the unpruned base's)."""
        raise TrainingError(f"task '{self.name}' defines no teacher signal (Task.distill), so it cannot distill")

    def epoch_steps(self, batch_size: int) -> int:
        """Batches in one pass over the training data: how many steps an epoch of pre-training is."""
        raise SearchError(f"task '{self.name}' does not say how long an epoch is (Task.epoch_steps), so no base "
                          "can be pre-trained on it; give the base (--base, --weights or --pretrained)")

    def describe(self) -> dict:
        """The task as ``arch.json`` and the trials database record it."""
        return {"name": self.name, "input_shape": list(self.input_shape)}


class ClassificationTask(Task):
    """The built-in recipe: cross-entropy on a dataset's training split, top-1 accuracy on its
    validation split, and for distillation the KL divergence between softened logits (Hinton
    et al., 2015). The batches are the evaluator's: one seeded generator for the whole stream,
    so scores are what they have always been."""

    name = "classification"

    def __init__(self, data, *, label_smoothing: float = 0.0):
        self.data = data
        self.label_smoothing = label_smoothing

    @property
    def input_shape(self):
        return tuple(self.data.input_shape)

    def batches(self, *, batch_size, seed, steps, device, augment=True):
        device = torch.device(device)
        for _, x, y in batch_stream(self.data, batch_size=batch_size, seed=seed, stop=steps, device=device,
                                    augment=augment, channels_last=device.type == "cuda", reseed=False):
            yield x, y

    def loss(self, outputs, batch, *, model):
        return F.cross_entropy(outputs.float(), batch[1], label_smoothing=self.label_smoothing)

    def score(self, model, *, device):
        return float(split_accuracy(model, self.data, "val", device=device))

    def distill(self, outputs, teacher_outputs, batch, *, temperature):
        student = F.log_softmax(outputs.float() / temperature, dim=1)
        teacher = F.log_softmax(teacher_outputs.float() / temperature, dim=1)
        return temperature ** 2 * F.kl_div(student, teacher, log_target=True, reduction="batchmean")

    def epoch_steps(self, batch_size):
        return self.data.num_batches("train", batch_size=batch_size, train=True)

    def describe(self):
        return {**super().describe(), "dataset": str(self.data.meta.get("name"))}


def index_batches(n: int, *, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """``steps`` batches of indices into ``n`` examples, for a task's :meth:`Task.batches`: passes
    in the orders ``generator`` shuffles, each pass's ragged end dropped (a ``batch_size`` over
    ``n`` takes all ``n``). The generator may be drawn from between batches (augmentation)."""
    batch_size = min(batch_size, n)
    step = 0
    while step < steps:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - batch_size + 1, batch_size):
            if step >= steps:
                return
            yield order[start:start + batch_size]
            step += 1


def as_task(data) -> Task:
    """``data`` as a task: a task as it is, loaded data as its :class:`ClassificationTask`."""
    return data if isinstance(data, Task) else ClassificationTask(data)


def load_task(spec: str, **kwargs) -> Task:
    """The task ``package.module:callable`` returns when called with ``kwargs``; SearchError
    (one line) when it cannot be imported or does not return a :class:`Task`."""
    make = import_callable(spec, "task", SearchError)
    task = make(**kwargs)
    if not isinstance(task, Task):
        raise SearchError(f"task '{spec}' returned {type(task).__name__}, not an autoprune.Task")
    if len(tuple(task.input_shape)) != 3:
        raise SearchError(f"task '{spec}': input_shape must be (channels, height, width), got {task.input_shape!r}")
    return task


def score_model(model: nn.Module, task: Task, device) -> float:
    """The task's score of ``model``, in eval mode without gradients; the model's mode restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(task.score(model, device=device))
    finally:
        model.train(was_training)


def task_step(model: nn.Module, task: Task, batch, sgd: torch.optim.Optimizer, device, extra_loss=None):
    """One step of ``sgd`` on the task's loss (bf16 autocast on CUDA); the loss, detached.
    ``extra_loss(inputs, outputs, batch)``, when given, is added (distillation)."""
    x = task.inputs(batch)
    with autocast(device):
        outputs = model(x)
    loss = task.loss(outputs, batch, model=model)
    if extra_loss is not None:
        loss = loss + extra_loss(x, outputs, batch)
    sgd.zero_grad(set_to_none=True)
    loss.backward()
    sgd.step()
    return loss.detach()


def train_steps(model: nn.Module, task: Task, *, steps: int, lr: float, batch_size: int, device, seed: int = 0,
                momentum: float = 0.9, weight_decay: float = 5e-4, extra_loss=None) -> float:
    """``steps`` SGD steps on the task's loss, the learning rate decaying from ``lr`` to zero
    along a half cosine; the mean loss. TrainingError when it is not finite."""
    device = torch.device(device)
    prepare_model(model, device)
    model.train()
    opt = torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=momentum > 0)
    loss_sum = torch.zeros((), device=device)
    with rng_scope(device):
        for step, batch in enumerate(_take(task.batches(batch_size=batch_size, seed=seed, steps=steps,
                                                        device=device), steps)):
            seed_step(seed, step)
            set_lr(opt, lr * lr_schedule(step, steps))
            loss_sum += task_step(model, task, batch, opt, device, extra_loss)
    mean = (loss_sum / max(1, steps)).item()
    if not math.isfinite(mean):
        raise TrainingError(f"fine-tuning diverged (mean loss {mean}) at lr {lr}; use a lower lr")
    return mean


def _take(batches: Iterable, n: int) -> Iterator:
    """The first ``n`` of ``batches`` (a task may hand out an endless stream)."""
    for i, batch in enumerate(batches):
        if i >= n:
            return
        yield batch
