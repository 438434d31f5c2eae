"""Finishing a searched architecture from inherited weights: :func:`finetune`, with optional
knowledge distillation from the unpruned base.

``retrain`` trains an architecture from scratch; most users instead keep the weights the pruned
model inherits from its base (by the architecture's keep rule, as the search scored it) and
fine-tune them, often with the base as a teacher (Hinton et al., 2015): the loss is the task's
cross-entropy plus ``distill_weight · T² · KL(softmax(teacher / T) ‖ softmax(student / T))``.
The training is :func:`autoprune.train.train`'s loop (resume, DDP, bf16 on CUDA); the
divergence is its ``extra_loss``. The checkpoint written records the architecture, so
``eval``, ``export`` and ``retrain`` read it as they read a retrained one.

>>> result = finetune("runs/r20/arch.json", "runs/base/model.pt", "cifar10", distill=True)  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from autoprune.arch import arch_space, load_arch
from autoprune.checkpoint import file_sha1, load_checkpoint, load_weights, save_checkpoint
from autoprune.data import Dataset
from autoprune.dataspec import DataSpec, check_loaded
from autoprune.errors import ArchError, CheckpointError, DataError, TrainingError
from autoprune.files import check_out_dir, write_json
from autoprune.keep import ScoreCache, get_keep_rule
from autoprune.models import create_pretrained
from autoprune.runtime import autocast, log, resolve_device
from autoprune.surgery import materialise
from autoprune.task import ClassificationTask, Task, score_model, train_steps
from autoprune.train import TrainConfig, prepare_model, split_accuracy, train

DEFAULT_TEMPERATURE = 4.0


@dataclass
class FinetuneResult:
    """What :func:`finetune` wrote and measured: the fine-tuned ``model``, its accuracies on the
    validation and test splits (for a :class:`~autoprune.task.Task`: its score, and no test
    accuracy), the ``checkpoint`` file and the run's ``metrics``."""

    model: nn.Module
    val_acc: float | None
    test_acc: float | None
    checkpoint: Path | None
    metrics: dict = field(default_factory=dict)


def distillation_loss(teacher: nn.Module, *, temperature: float = DEFAULT_TEMPERATURE, weight: float = 1.0,
                      device="cpu"):
    """``extra_loss(x, logits, y)`` for :func:`~autoprune.train.train`: ``weight · T² ·
    KL(teacher ‖ student)`` at temperature ``T`` (the T² keeps its gradients on the scale of the
    cross-entropy's; :meth:`ClassificationTask.distill`). The teacher runs in eval mode without
    gradients, under the same autocast."""
    distill = task_distillation(ClassificationTask(None), teacher, temperature=temperature, weight=weight,
                                device=device)
    return lambda x, logits, y: distill(x, logits, (x, y))


def inherit(arch: dict, base=None, *, pretrained: bool = False, data: Dataset | None = None,
            device="cpu") -> tuple[nn.Module, nn.Module, dict]:
    """(pruned model, base model, base record): the base (a checkpoint or any state dict file, or
    the library's pretrained weights) and the pruned model that inherits its weights by the keep
    rule the architecture was scored with (``search.evaluator.keep``; data-driven rules score
    on ``data``, cached beside the base file)."""
    if "stripes" in arch:
        raise ArchError("finetune takes channel-pruned architectures; a stripe search writes its fine-tuned "
                        "model.pt itself")
    _check_base(base, pretrained)
    if pretrained:
        made = create_pretrained(arch["model"]["name"], **arch["model"].get("kwargs", {}))
        if made.note:
            log(f"autoprune: note: {made.note}")
        model, space = arch_space(arch, made.model)
        record = made.record()
    else:
        model, space = arch_space(arch)
        record = load_weights(model, base)
    evaluator = (arch.get("search") or {}).get("evaluator") or {}
    keep, seed = get_keep_rule(evaluator.get("keep", "l1")), int(evaluator.get("seed", 0) or 0)
    record["keep"] = keep.name
    model.to(device)
    if keep.needs_data and data is None:
        raise DataError(f"keep rule '{keep.name}' scores channels on training images; give the data")
    cache = ScoreCache.beside(record["path"], record["sha1"]) if record.get("sha1") else None
    keep = keep.fit(model, space.graph, data, seed=seed, device=device, cache=cache)
    pruned = materialise(model, space, arch["widths"], keep=keep, seed=seed)
    return pruned, model, record


def finetune(arch, base=None, data=None, *, pretrained: bool = False, distill: bool = False,
             temperature: float = DEFAULT_TEMPERATURE, distill_weight: float = 1.0, config: TrainConfig | None = None,
             out=None, device=None, resume: bool = True, progress: bool = False, seed: int = 0) -> FinetuneResult:
    """Fine-tune the pruned model of ``arch`` (a dict or an ARCH.json path) from the weights it
    inherits from ``base`` (or the ``pretrained`` library weights; neither: the base the
    search recorded, if its file is unchanged), optionally distilled from
    the base (``distill``, ``temperature``, ``distill_weight``); writes ``OUT/model.pt``,
    ``OUT/checkpoint.pt`` (resumable) and ``OUT/metrics.json`` when ``out`` is given.

    ``data``: a dataset name or path, a :class:`~autoprune.dataspec.DataSpec` or loaded data;
    unset settings take what an autoprune base checkpoint records, so the validation split is
    images the base never trained on. Or a :class:`~autoprune.task.Task`: the model is trained
    ``config.epochs`` passes of :meth:`~autoprune.task.Task.epoch_steps` on the task's loss (one
    cosine, no resuming), distilled through :meth:`~autoprune.task.Task.distill`, and scored by it.
    ``config``: the training (default: 5 epochs of cosine from lr 0.01 without warm-up, the
    device's batch size).
    """
    source = str(arch) if not isinstance(arch, dict) else "architecture"
    arch = load_arch(arch) if not isinstance(arch, dict) else arch
    device = resolve_device(device)
    out = check_out_dir(out, "out") if out is not None else None
    if base is None and not pretrained:
        base, pretrained = recorded_base(arch, source)
    _check_base(base, pretrained)  # before any data are loaded
    if isinstance(data, Task):
        settings = {"distill": bool(distill), "temperature": temperature if distill else None,
                    "distill_weight": distill_weight if distill else None}
        return _finetune_task(arch, source, data, base, pretrained, settings, config, out, device, seed)
    recorded = _recorded_dataset(base)
    loaded = _load(data, recorded, base, seed, device)
    _check_fit(loaded, arch, source)
    config = config or TrainConfig.for_device(device, epochs=5, lr=0.01, schedule="cosine", warmup=0.0, seed=seed)
    torch.manual_seed(config.seed)
    model, teacher, record = inherit(arch, base, pretrained=pretrained, data=loaded, device=device)
    settings = {"distill": bool(distill), "temperature": temperature if distill else None,
                "distill_weight": distill_weight if distill else None, "base": record.get("path"),
                "base_sha1": record.get("sha1"), "keep": record["keep"]}
    extra_loss = None
    if distill:
        extra_loss = distillation_loss(prepare_model(teacher, device), temperature=temperature,
                                       weight=distill_weight, device=device)
    _check_resumable(out, settings, resume)
    extra = {"model_name": arch["model"]["name"], "model_kwargs": arch["model"].get("kwargs", {}),
             "input_shape": list(loaded.input_shape), "dataset": loaded.meta, "mode": "finetune", "finetune": settings}
    history = train(model, loaded, config, device=device, out_dir=out, resume=resume, progress=progress, arch=arch,
                    extra=extra, extra_loss=extra_loss)
    return _finish(model, loaded, config, history, out, arch, extra, device)


def _finetune_task(arch: dict, source: str, task: Task, base, pretrained: bool, settings: dict, config, out,
                   device, seed: int) -> FinetuneResult:
    """:func:`finetune` on a task: the task's loss for the configured epochs, its teacher signal,
    its score; ``OUT/model.pt`` and ``OUT/metrics.json``."""
    if tuple(arch["input_shape"]) != tuple(task.input_shape):
        raise DataError(f"{source} is for {'x'.join(map(str, arch['input_shape']))} inputs but task '{task.name}' "
                        f"has {'x'.join(map(str, task.input_shape))} inputs")
    config = config or TrainConfig.for_device(device, epochs=5, lr=0.01, schedule="cosine", warmup=0.0, seed=seed)
    torch.manual_seed(config.seed)
    model, teacher, record = inherit(arch, base, pretrained=pretrained, data=task, device=device)
    settings = {**settings, "base": record.get("path"), "base_sha1": record.get("sha1"), "keep": record["keep"]}
    extra_loss = None
    if settings["distill"]:
        extra_loss = task_distillation(task, prepare_model(teacher, device), temperature=settings["temperature"],
                                       weight=settings["distill_weight"], device=device)
    steps = config.epochs * task.epoch_steps(config.batch_size)
    start = time.perf_counter()
    loss = train_steps(model, task, steps=steps, lr=config.lr, batch_size=config.batch_size, device=device,
                       seed=config.seed, momentum=config.momentum, weight_decay=config.weight_decay,
                       extra_loss=extra_loss)
    score = score_model(model, task, device)
    summary = {"score": score, "task": task.describe(), "epochs": config.epochs, "steps": steps, "mean_loss": loss,
               "seconds": round(time.perf_counter() - start, 2)}
    path = None
    if out is not None:
        path = Path(out) / "model.pt"
        save_checkpoint(path, model, config=asdict(config), arch=arch, metrics=summary, model_name=arch["model"]["name"],
                        model_kwargs=arch["model"].get("kwargs", {}), input_shape=list(task.input_shape),
                        mode="finetune", finetune=settings)
        write_json({**summary, "out": str(out), "device": str(device), "torch": torch.__version__,
                    "config": asdict(config), "finetune": settings}, Path(out) / "metrics.json")
    return FinetuneResult(model, score, None, path, summary)


def task_distillation(task: Task, teacher: nn.Module, *, temperature: float, weight: float, device):
    """``extra_loss(inputs, outputs, batch)`` of :func:`~autoprune.task.train_steps`: ``weight`` times
    the task's teacher signal between the student's outputs and the teacher's (eval mode, no gradient)."""
    _check_distill(temperature, weight)
    device = torch.device(device)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss(x, outputs, batch):
        with torch.no_grad(), autocast(device):
            target = teacher(x)
        return weight * task.distill(outputs, target, batch, temperature=temperature)

    return loss


def _check_distill(temperature: float, weight: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise TrainingError(f"temperature must be a positive number, got {temperature}")
    if not (math.isfinite(weight) and weight >= 0):
        raise TrainingError(f"distill weight must be a number >= 0, got {weight}")


def recorded_base(arch: dict, source: str) -> tuple[str | None, bool]:
    """(base file, pretrained) the architecture's search recorded, for a fine-tune given neither:
    the library's weights for a search from ``--pretrained``, else the recorded file, which must
    still have the recorded SHA-1. CheckpointError when nothing usable is recorded."""
    search = arch.get("search") or {}
    if search.get("base_kind") == "pretrained":
        return None, True
    path = search.get("base")
    if not path or not Path(path).is_file():
        raise CheckpointError(f"give the base to inherit from: --base FILE or --pretrained ({source} records "
                              + (f"base '{path}', which is not there)" if path else "no base)"))
    if search.get("base_sha1") and file_sha1(path) != search["base_sha1"]:
        raise CheckpointError(f"base '{path}' has changed since {source} was searched (SHA-1 differs); "
                              "give --base FILE")
    return path, False


def _check_base(base, pretrained: bool) -> None:
    """CheckpointError unless exactly one base is given and a given file exists."""
    if (base is None) == (not pretrained):
        raise CheckpointError("give the base to inherit from: --base FILE or --pretrained (one of them)")
    if base is not None and not Path(base).is_file():
        raise CheckpointError(f"base checkpoint '{base}' not found")


def _recorded_dataset(base) -> dict | None:
    """The ``dataset`` an autoprune base checkpoint records (None for other files)."""
    if base is None:
        return None
    try:
        return load_checkpoint(base).get("dataset")
    except CheckpointError:  # another tool's file: no record; load_weights reports real problems
        return None


def _load(data, recorded, base, seed: int, device) -> Dataset:
    """The data to fine-tune on, split as the base checkpoint records (see :mod:`autoprune.dataspec`)."""
    source = f"base checkpoint '{base}'"
    if data is not None and not isinstance(data, (str, DataSpec)):
        check_loaded(data, recorded, source)
        return data.to(device)
    spec = data if isinstance(data, DataSpec) else DataSpec(name=data, seed=seed)
    return spec.against(recorded, source).load(device, recorded)


def _check_fit(data: Dataset, arch: dict, source: str) -> None:
    """DataError unless the data have the architecture's classes and image shape."""
    name = data.meta.get("name", "given")
    classes = arch.get("num_classes")
    if classes is not None and classes != data.num_classes:
        raise DataError(f"{source} has {classes} classes but dataset '{name}' has {data.num_classes}")
    shape, got = tuple(arch["input_shape"]), tuple(data.input_shape)
    if shape != got:
        raise DataError(f"{source} is for {'x'.join(map(str, shape))} inputs but dataset '{name}' has "
                        f"{'x'.join(map(str, got))} images")


def _check_resumable(out, settings: dict, resume: bool) -> None:
    """CheckpointError when OUT holds a fine-tune of another base or distillation setting
    (train() compares the training configuration; these it cannot see)."""
    ckpt = Path(out) / "checkpoint.pt" if out is not None else None
    if not resume or ckpt is None or not ckpt.is_file():
        return
    saved = load_checkpoint(ckpt).get("finetune")
    if saved != settings:
        diff = {k: (saved.get(k) if isinstance(saved, dict) else None, v) for k, v in settings.items()
                if not isinstance(saved, dict) or saved.get(k) != v}
        raise CheckpointError(f"'{ckpt}' was written by another fine-tune ({diff}); use a new output directory or "
                              "turn resuming off")


def _finish(model, data, config, history, out, arch, extra, device) -> FinetuneResult:
    """Test accuracy, then (rank 0, with ``out``) model.pt and metrics.json."""
    test_acc = split_accuracy(model, data, "test", device=device)
    val = history["val_acc"]
    summary = {"val_acc": val if math.isfinite(val) else None, "test_acc": test_acc, "epochs": config.epochs,
               "steps": history["steps"], "resumed_from": history["resumed_from"]}
    path = None
    if out is not None and int(os.environ.get("RANK", "0")) == 0:
        path = Path(out) / "model.pt"
        save_checkpoint(path, model, config=asdict(config), arch=arch, metrics=summary, **extra)
        write_json({**summary, "out": str(out), "device": str(device), "torch": torch.__version__,
                    "config": asdict(config), "dataset": data.meta, "finetune": extra["finetune"],
                    "history": [{k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in r.items()}
                                for r in history["epochs"]]}, Path(out) / "metrics.json")
    return FinetuneResult(model, summary["val_acc"], test_acc, path, summary)
