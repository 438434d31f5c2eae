"""``autoprune eval``: accuracy of a checkpoint on the validation or test split."""

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
from autoprune.train import split_accuracy


def register(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of a checkpoint (model.pt or checkpoint.pt)")
    p.add_argument("--checkpoint", required=True, help="file written by pretrain or retrain")
    add_data_args(p, dataset_default=None)
    p.add_argument("--split", choices=["test", "val"], default="test", help="(default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=1024, help="(default %(default)s)")
    p.set_defaults(func=run, seed=None)


def run(args) -> int:
    device = resolve_device(args.device)
    model, ckpt = model_from_checkpoint(args.checkpoint, device=device)
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
