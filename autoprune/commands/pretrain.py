"""``autoprune pretrain``: train a base model from scratch, resumably."""

from __future__ import annotations

import torch

from autoprune.commands._training import (
    add_data_args,
    add_train_args,
    load_data_from_args,
    resolve_device,
    run_training,
    train_config,
)
from autoprune.commands.common import add_model_arg_option, add_weights_args, model_args, model_with_weights
from autoprune.dataspec import kwargs_for_data
from autoprune.files import check_out_dir
from autoprune.models import merge_kwargs


def register(sub) -> None:
    p = sub.add_parser("pretrain", help="train a base model (writes OUT/model.pt, checkpoint.pt, metrics.json)")
    p.add_argument("--model", required=True, help="registry name, tv:NAME, timm:NAME or package.module:callable")
    add_weights_args(p)
    add_model_arg_option(p)
    add_data_args(p)
    add_train_args(p)
    p.set_defaults(func=run, out_default="runs/base")


def run(args) -> int:
    given = model_args(args)  # bad --model-arg before anything is loaded
    out = check_out_dir(args.out or args.out_default)  # before any data are loaded or trained on
    device = resolve_device(args.device)
    data = load_data_from_args(args, device)
    kwargs = merge_kwargs(kwargs_for_data(args.model, data), given)
    torch.manual_seed(args.seed)
    model = model_with_weights(args, args.model, kwargs)
    extra = {"model_name": args.model, "model_kwargs": kwargs, "input_shape": list(data.input_shape),
             "dataset": data.meta}
    run_training(args, model, data, train_config(args, args.epochs), device, out, extra=extra)
    return 0
