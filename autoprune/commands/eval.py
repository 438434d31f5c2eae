"""``autoprune eval``: accuracy of a checkpoint on the validation or test split, or its score on a task."""

from __future__ import annotations

import json

from autoprune.checkpoint import model_from_checkpoint
from autoprune.commands._training import (
    add_data_args,
    check_classes,
    check_input_shape,
    load_data_from_args,
    positive_int,
    resolve_device,
)
from autoprune.commands.common import add_task_args, data_or_task
from autoprune.errors import DataError
from autoprune.task import score_model
from autoprune.train import split_accuracy


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of a checkpoint (model.pt or checkpoint.pt)")
    p.add_argument("--checkpoint", required=True, help="file written by pretrain or retrain")
    add_data_args(p, dataset_default=None)
    add_task_args(p)
    p.add_argument("--split", choices=["test", "val"], default="test", help="(default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="(default %(default)s)")
    p.set_defaults(func=run, seed=None)


def run(args) -> int:
    device = resolve_device(args.device)
    model, ckpt = model_from_checkpoint(args.checkpoint, device=device)
    if args.task is not None:
        return _task_score(args, model, ckpt, device)
    # Without --dataset, the recorded dataset, split seed and validation size are reused so
    # that --split val measures the same held-out images as during training.
    data = load_data_from_args(args, device, recorded=ckpt.get("dataset"), source=f"checkpoint '{args.checkpoint}'")
    check_classes(data, (ckpt.get("model_kwargs") or {}).get("num_classes"), f"checkpoint '{args.checkpoint}'")
    check_input_shape(data, ckpt.get("input_shape") or (ckpt.get("arch") or {}).get("input_shape"),
                      f"checkpoint '{args.checkpoint}'")
    acc = split_accuracy(model, data, args.split, device=device, batch_size=args.batch_size)
    row = {"checkpoint": str(args.checkpoint), "dataset": data.meta["name"], "split": args.split,
           "images": data.meta["sizes"][args.split], "accuracy": acc}
    if args.json:
        print(json.dumps(row))
    else:
        print(f"{args.split} accuracy {acc:.4f} on {row['images']} images of {row['dataset']}")
    return 0


def _task_score(args, model, ckpt, device) -> int:
    """The score ``--task`` gives the checkpoint's model (its own held-out data; no split to choose)."""
    task = data_or_task(args)
    shape = ckpt.get("input_shape") or (ckpt.get("arch") or {}).get("input_shape")
    if shape is not None and tuple(shape) != tuple(task.input_shape):
        raise DataError(f"checkpoint '{args.checkpoint}' is for {'x'.join(map(str, shape))} inputs but task "
                        f"'{task.name}' has {'x'.join(map(str, task.input_shape))} inputs")
    score = score_model(model, task, device)
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "task": task.name, "score": score}))
    else:
        print(f"{task.name} score {score:.4f}")
    return 0
