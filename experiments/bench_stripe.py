"""Stripe-wise pruning (SP) against channel search at the same MACs.

For each budget: SP (``method="stripe"``) from a trained base, then channel pruning
(``l1-global``, one-shot) at the MACs SP reached; both architectures retrained from scratch
for the same epochs; test accuracy, params, MACs and measured latency (median of ``--reps``
forward passes, batch 1 and 64) beside the dense model. The base is pre-trained once (or
read from ``--base``) and shared by every budget.

    python experiments/bench_stripe.py --model resnet20 --data-dir PATH_TO_CIFAR10 --limit 4000 \\
        --base-epochs 4 --retrain-epochs 4 --out runs/bench-stripe

``--data-dir`` takes a torchvision CIFAR-10 folder or an ImageFolder tree / ``.tar.gz`` with
``train/`` and ``test/``. On a CPU, ``--threads 1 --test-limit 1000`` keeps a run small. A GPU
run is the same command with ``--device cuda`` and larger ``--limit`` and epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import autoprune
from autoprune.api import BaseConfig, MethodConfig
from autoprune.arch import build
from autoprune.data import load_data
from autoprune.train import TrainConfig, split_accuracy, train


def latency_ms(model, shape, batch: int, reps: int, device) -> float:
    model = model.eval().to(device)
    x = torch.randn(batch, *shape, device=device)
    times = []
    with torch.no_grad():
        for i in range(reps + 3):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:  # warm-up
                times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def retrain(arch, data, epochs, device, seed):
    torch.manual_seed(seed)
    model = build(arch)
    train(model, data, TrainConfig(epochs=epochs, batch_size=128, lr=0.1, seed=seed), device=device)
    return model, split_accuracy(model, data, "test", device=device)


def test_subset(data, n, seed=0):
    """The data with a seeded subset of ``n`` test images (all of them when ``n`` is None)."""
    if n is None or n >= data.num_examples("test"):
        return data
    idx = torch.randperm(data.num_examples("test"), generator=torch.Generator().manual_seed(seed))[:n]
    return dataclasses.replace(data, test_x=data.test_x[idx], test_y=data.test_y[idx])


def row(name, arch, model, acc, shape, reps, device):
    return {"model": name, "macs": arch["macs"]["pruned"], "macs_ratio": round(arch["macs"]["pruned"] / arch["macs"]["base"], 4),
            "params": arch["params"]["pruned"], "test_acc": round(acc, 4),
            "latency_ms_b1": round(latency_ms(model, shape, 1, reps, device), 3),
            "latency_ms_b64": round(latency_ms(model, shape, 64, max(3, reps // 4), device), 3)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--limit", type=int, default=4000)
    p.add_argument("--val-size", type=int, default=500)
    p.add_argument("--budgets", type=float, nargs="+", default=[0.4, 0.3])
    p.add_argument("--base-epochs", type=int, default=4)
    p.add_argument("--stripe-epochs", type=int, default=1)
    p.add_argument("--retrain-epochs", type=int, default=4)
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--test-limit", type=int, default=None, help="a seeded subset of the test split")
    p.add_argument("--base", default=None, help="a trained base checkpoint (default: pre-train one)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/bench-stripe")
    args = p.parse_args(argv)
    device, out = torch.device(args.device), Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = load_data("cifar10", args.data_dir, limit=args.limit, val_size=args.val_size, device=device)
    data = test_subset(data, args.test_limit)
    shape = tuple(data.input_shape)
    start = time.perf_counter()
    rows, base, sp_info = [], args.base, {}
    for budget in args.budgets:
        sp = autoprune.search(args.model, budget, MethodConfig("stripe", {"epochs": args.stripe_epochs}), data,
                              base=BaseConfig(base, args.base_epochs), out=out / f"stripe-{budget}",
                              device=args.device)
        base = base or out / f"stripe-{budget}" / "base" / "model.pt"
        info = sp.arch["search"]["stripe"]
        sp_info[budget] = {"val_score_inherited": sp.arch["score"], "empty_filters": info["empty_filters"],
                           "removed_channels": info["removed_channels"], "skeleton_training": info["training"]}
        ch = autoprune.search(args.model, sp.arch["macs"]["pruned"], "l1-global", data, base=base,
                              out=out / f"channel-{budget}", device=args.device, objective="synthetic",
                              study=autoprune.StudyConfig(trials=1))
        if not rows:  # the dense model, once
            dense = dict(ch.arch, macs={**ch.arch["macs"], "pruned": ch.arch["macs"]["base"]},
                         params={**ch.arch["params"], "pruned": ch.arch["params"]["base"]})
            model = autoprune.create_model(args.model, **ch.arch["model"]["kwargs"])
            model.load_state_dict(torch.load(base, weights_only=True)["model"])
            rows.append(row("dense (base)", dense, model, split_accuracy(model.to(device), data, "test", device=device),
                            shape, args.reps, device))
        for name, arch in ((f"SP {budget}", sp.arch), (f"channel (l1-global) at SP's MACs, {budget}", ch.arch)):
            model, acc = retrain(arch, data, args.retrain_epochs, device, 0)
            rows.append(row(name, arch, model, acc, shape, args.reps, device))
            print(json.dumps(rows[-1]), flush=True)
    result = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "device": str(device),
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "args": vars(args), "seconds": round(time.perf_counter() - start, 1), "rows": rows,
              "stripe": sp_info}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
