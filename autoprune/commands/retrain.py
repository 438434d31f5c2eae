"""``autoprune retrain``: train a pruned architecture from scratch (Scratch-E or Scratch-B)."""

from __future__ import annotations

from pathlib import Path

import torch

from autoprune.commands._training import (add_data_args, add_train_args, check_classes, load_data_from_args,
                                          resolve_device, run_training, train_config)


def register(sub) -> None:
    p = sub.add_parser("retrain", help="train an architecture JSON from scratch (Scratch-E, or Scratch-B)")
    p.add_argument("arch", metavar="ARCH.json", help="architecture file written by `autoprune search`")
    add_data_args(p)
    add_train_args(p, epochs=None)
    p.add_argument("--scratch-b", action="store_true",
                   help="train for the base model's compute: base epochs x base/pruned MACs, at most 2x "
                        "(Liu et al., ICLR 2019)")
    p.add_argument("--base-epochs", type=int, default=25, help="epochs of the base model's training (default 25)")
    p.set_defaults(func=run)


def run(args) -> int:
    from autoprune.arch import build, load_arch
    from autoprune.errors import AutopruneError
    from autoprune.train import scratch_b_epochs

    if args.scratch_b and args.epochs is not None:
        raise AutopruneError("give either --epochs (Scratch-E) or --scratch-b with --base-epochs, not both")
    arch = load_arch(args.arch)
    if args.scratch_b:
        epochs = scratch_b_epochs(args.base_epochs, arch["macs"]["base"], arch["macs"]["pruned"])
        mode = "scratch-b"
    else:
        epochs = args.epochs if args.epochs is not None else args.base_epochs
        mode = "scratch-e"
    device = resolve_device(args.device)
    data = load_data_from_args(args, device)
    check_classes(data, arch.get("num_classes"), f"architecture '{args.arch}'")
    torch.manual_seed(args.seed)
    model = build(arch)
    out = Path(args.out) if args.out else Path(args.arch).resolve().parent / f"retrain-{mode}"
    if not args.json:
        print(f"{mode}: {epochs} epochs of {arch['model']['name']} at "
              f"{arch['macs']['pruned'] / arch['macs']['base']:.1%} of base MACs -> {out}")
    extra = {"model_name": arch["model"]["name"], "model_kwargs": arch["model"].get("kwargs", {}),
             "input_shape": list(data.input_shape), "dataset": data.meta, "mode": mode}
    run_training(args, model, data, train_config(args, epochs), device, out, extra=extra, arch=arch)
    return 0
