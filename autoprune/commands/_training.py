"""Arguments and steps shared by the training commands (pretrain, retrain, eval)."""

from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict
from pathlib import Path

import torch

from autoprune.checkpoint import save_checkpoint
from autoprune.dataspec import DataSpec
from autoprune.errors import DataError
from autoprune.files import write_json
from autoprune.runtime import resolve_device  # noqa: F401  (re-exported for the commands)
from autoprune.train import TrainConfig, split_accuracy, train


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (a batch size, a number of epochs or images)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got '{text}'") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def add_data_args(p, *, dataset_default: str | None = "cifar10") -> None:
    p.add_argument("--dataset", default=dataset_default,
                   help="cifar10 | cifar100 | fashion-mnist | synthetic | imagefolder:PATH | PATH to an ImageFolder "
                        "directory or .tar.gz with train/ and test/ (default %(default)s)")
    p.add_argument("--data-dir", default=None,
                   help="where torchvision-format data lives, or an ImageFolder directory / .tar.gz "
                        "(default $AUTOPRUNE_DATA or ./data)")
    p.add_argument("--val-size", type=non_negative_int, default=None,
                   help="training images held out for validation (default 5000)")
    p.add_argument("--limit", type=positive_int, default=None, help="keep only this many training images")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, initialisation and data order")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_train_args(p, *, epochs: int | None = 25) -> None:
    p.add_argument("--epochs", type=positive_int, default=epochs,
                   help="training epochs (default %(default)s)" if epochs else "training epochs (Scratch-E; default: "
                        "--base-epochs)")
    p.add_argument("--batch-size", type=positive_int, default=512, help="global batch size (default %(default)s)")
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="(default %(default)s)")
    p.add_argument("--label-smoothing", type=float, default=0.1, help="(default %(default)s)")
    p.add_argument("--schedule", choices=["onecycle", "cosine", "constant"], default="onecycle")
    p.add_argument("--warmup", type=float, default=0.15, help="fraction of steps to warm up (default %(default)s)")
    p.add_argument("--l1-gamma", type=float, default=0.0,
                   help="L1 penalty on BatchNorm scales, for network slimming (default 0)")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--out", default=None, help="output directory (checkpoint.pt, model.pt, metrics.json)")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT holds a checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def load_data_from_args(args, device: torch.device, *, recorded: dict | None = None, source: str = "the checkpoint"):
    """The dataset named on the command line, resolved against what a checkpoint ``recorded``
    by the one rule of :mod:`autoprune.dataspec` (the search uses the same)."""
    spec = DataSpec(name=args.dataset, data_dir=args.data_dir, limit=args.limit, val_size=args.val_size,
                    seed=args.seed if args.seed is not None else 0)
    return spec.against(recorded, source).load(device, recorded)


def train_config(args, epochs: int):
    return TrainConfig(epochs=epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       label_smoothing=args.label_smoothing, schedule=args.schedule, warmup=args.warmup,
                       seed=args.seed, l1_gamma=args.l1_gamma, max_steps=args.max_steps)


def check_classes(data, num_classes: int | None, what: str) -> None:
    if num_classes is not None and num_classes != data.num_classes:
        raise DataError(f"{what} has {num_classes} classes but dataset '{data.meta['name']}' has {data.num_classes}")


def check_input_shape(data, input_shape, what: str) -> None:
    """Raise :class:`DataError` unless ``data``'s images have the shape the model was built for.

    Channels must match for the first conv to run at all; the spatial size must match too,
    because an architecture's MACs, and for some models the classifier's input, were
    computed at that size.
    """
    if input_shape is None:
        return
    expected, got = tuple(int(v) for v in input_shape), tuple(int(v) for v in data.input_shape)
    if expected != got:
        c, h, w = expected
        raise DataError(f"{what} is for {c}x{h}x{w} inputs but dataset '{data.meta['name']}' has "
                        f"{got[0]}x{got[1]}x{got[2]} images; channels and image size must match "
                        f"(search again with --in-channels {got[0]} --input-size {got[1]}, or use a matching dataset)")


def run_training(args, model, data, config, device, out: Path, *, extra: dict, arch: dict | None = None) -> dict:
    """Train with checkpoints in ``out``, then write model.pt and metrics.json and print a summary."""
    history = train(model, data, config, device=device, out_dir=out, resume=not args.no_resume,
                    progress=not args.quiet, arch=arch, extra=extra)
    if int(os.environ.get("RANK", "0")) != 0:
        return history  # under torchrun, rank 0 reports and writes the final files
    test_acc = split_accuracy(model, data, "test", device=device)
    summary = {"val_acc": _finite(history["val_acc"]), "best_val_acc": _finite(history["best_val_acc"]),
               "test_acc": test_acc, "epochs": config.epochs, "steps": history["steps"],
               "img_per_s": _finite(history["img_per_s"]), "resumed_from": history["resumed_from"]}
    save_checkpoint(out / "model.pt", model, config=asdict(config), arch=arch, metrics=summary, **extra)
    metrics = {**summary, "out": str(out), "device": str(device), "torch": torch.__version__,
               "config": asdict(config), "dataset": data.meta, "history": [_clean(r) for r in history["epochs"]],
               **{k: v for k, v in extra.items() if k != "dataset"}}
    write_json(metrics, out / "metrics.json")
    if args.json:
        print(json.dumps({**summary, "checkpoint": str(out / "model.pt")}))
    else:
        val = "n/a" if summary["val_acc"] is None else f"{summary['val_acc']:.4f}"
        print(f"val acc {val}  test acc {test_acc:.4f}  ({history['steps']} steps)")
        print(f"wrote {out / 'model.pt'}, {out / 'checkpoint.pt'}, {out / 'metrics.json'}")
    return metrics


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _clean(record: dict) -> dict:
    return {k: (_finite(v) if isinstance(v, float) else v) for k, v in record.items()}


