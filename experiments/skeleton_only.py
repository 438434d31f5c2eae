"""Train only the Filter Skeleton of a randomly initialised network, its weights frozen.

Meng et al. (NeurIPS 2020) report 80.58 % CIFAR-10 test accuracy for a ResNet-56 trained
this way: the skeleton alone (one scalar per stripe) carries much of what training finds.

    python experiments/skeleton_only.py --data-dir PATH_TO_CIFAR10 --epochs 160 --device cuda

``--data-dir`` takes a torchvision CIFAR-10 folder or an ImageFolder tree / ``.tar.gz``. The
test accuracy of the same random network before training is printed beside the result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

import autoprune
from autoprune.data import load_data
from autoprune.graph import trace
from autoprune.optimizers.stripe import StripeConfig, train_skeleton
from autoprune.stripe import insert_skeleton, stripe_layers
from autoprune.train import split_accuracy

PAPER = 0.8058


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet56")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--epochs", type=int, default=160)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--test-limit", type=int, default=None, help="a seeded subset of the test split")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data("cifar10", args.data_dir, limit=args.limit, val_size=0, device=device)
    if args.test_limit is not None and args.test_limit < data.num_examples("test"):
        idx = torch.randperm(data.num_examples("test"), generator=torch.Generator().manual_seed(0))[:args.test_limit]
        data = dataclasses.replace(data, test_x=data.test_x[idx], test_y=data.test_y[idx])
    torch.manual_seed(0)
    model = autoprune.create_model(args.model).to(device)
    layers = stripe_layers(model, trace(model, tuple(data.input_shape)))
    insert_skeleton(model, layers)
    before = split_accuracy(model, data, "test", device=device)
    start = time.perf_counter()
    # FS only; BatchNorm statistics still adapt in train mode, as in the paper's setting.
    info = train_skeleton(model, data, StripeConfig(epochs=args.epochs, lr=args.lr, penalty=0.0,
                                                    batch_size=args.batch_size, train_weights=False), device=device)
    acc = split_accuracy(model, data, "test", device=device)
    print(json.dumps({"model": args.model, "test_acc": round(acc, 4), "test_acc_before": round(before, 4),
                      "paper": PAPER, "training": info,
                      "seconds": round(time.perf_counter() - start, 1), "torch": torch.__version__,
                      "device": str(device), "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
