"""``autoprune retrain``: train a pruned architecture from scratch (Scratch-E or Scratch-B)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from autoprune.arch import build, load_arch, validate_arch
from autoprune.checkpoint import load_checkpoint
from autoprune.commands._training import (
    add_data_args,
    add_train_args,
    check_classes,
    check_input_shape,
    load_data_from_args,
    positive_int,
    resolve_device,
    run_training,
    train_config,
)
from autoprune.errors import ArchError, AutopruneError
from autoprune.files import check_out_dir
from autoprune.train import scratch_b_epochs

DEFAULT_BASE_EPOCHS = 25


def register(sub) -> None:
    p = sub.add_parser("retrain", help="train an architecture JSON from scratch (Scratch-E, or Scratch-B)")
    p.add_argument("arch", metavar="ARCH.json",
                   help="architecture file written by `autoprune search`, or a model.pt that records one")
    add_data_args(p)
    add_train_args(p, epochs=None)
    p.add_argument("--scratch-b", action="store_true",
                   help="train for the base model's compute: base epochs x base/pruned MACs, at most 2x "
                        "(Liu et al., ICLR 2019)")
    p.add_argument("--base-epochs", type=positive_int, default=None,
                   help="epochs of the base model's training (default: the base epochs the architecture file "
                        f"records, else {DEFAULT_BASE_EPOCHS})")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.scratch_b and args.epochs is not None:
        raise AutopruneError("give either --epochs (Scratch-E) or --scratch-b with --base-epochs, not both")
    arch = arch_of(args.arch)
    base_epochs, source = base_epochs_of(arch, args.base_epochs, args.arch)
    if args.scratch_b:
        epochs = scratch_b_epochs(base_epochs, arch["macs"]["base"], arch["macs"]["pruned"])
        mode = "scratch-b"
    else:
        epochs = args.epochs if args.epochs is not None else base_epochs
        mode = "scratch-e"
    out = check_out_dir(Path(args.out) if args.out else Path(args.arch).resolve().parent / f"retrain-{mode}")
    device = resolve_device(args.device)
    data = load_data_from_args(args, device)
    check_classes(data, arch.get("num_classes"), f"architecture '{args.arch}'")
    check_input_shape(data, arch.get("input_shape"), f"architecture '{args.arch}'")
    torch.manual_seed(args.seed)
    model = build(arch)
    if args.scratch_b or args.epochs is None:
        print(f"base epochs {base_epochs} ({source})", file=sys.stderr if args.json else sys.stdout)
    if not args.json:
        print(f"{mode}: {epochs} epochs of {arch['model']['name']} at "
              f"{arch['macs']['pruned'] / arch['macs']['base']:.1%} of base MACs -> {out}")
    extra = {"model_name": arch["model"]["name"], "model_kwargs": arch["model"].get("kwargs", {}),
             "input_shape": list(data.input_shape), "dataset": data.meta, "mode": mode,
             "base_epochs": base_epochs, "base_epochs_source": source}
    run_training(args, model, data, train_config(args, epochs), device, out, extra=extra, arch=arch)
    return 0


def arch_of(path) -> dict:
    """The architecture in ``path``: an ARCH.json, or a checkpoint that records one (``model.pt``
    of finetune or retrain), so that a fine-tuned model's architecture is retrained by naming it."""
    if Path(path).suffix in (".pt", ".pth"):
        arch = load_checkpoint(path).get("arch")
        if not arch:
            raise ArchError(f"checkpoint '{path}' records no architecture; give the ARCH.json")
        return validate_arch(arch, f"checkpoint '{path}'")
    return load_arch(path)


def base_epochs_of(arch: dict, given: int | None, path) -> tuple[int, str]:
    """The base model's training epochs and where the number came from.

    ``--base-epochs`` wins; otherwise the ``search.base_epochs`` an architecture file records
    (the epochs its base model was trained for), otherwise the default of 25.
    """
    if given is not None:
        return given, "--base-epochs"
    recorded = (arch.get("search") or {}).get("base_epochs")
    if recorded is None:
        return DEFAULT_BASE_EPOCHS, "default; the architecture file records none"
    if isinstance(recorded, bool) or not isinstance(recorded, int) or recorded < 1:
        raise ArchError(f"architecture '{path}': search.base_epochs must be a positive integer, got {recorded!r}; "
                        "pass --base-epochs")
    return recorded, f"recorded in '{path}'"
