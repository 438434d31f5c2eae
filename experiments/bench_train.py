"""Training throughput: autoprune's resident-uint8 fast path vs a conventional DataLoader.

Both pipelines train the same model with the same optimizer on CIFAR-shaped data in one run:

* fast: images resident on the device as uint8, batches cut from one permutation, random
  crop + flip + normalisation as batched tensor ops (``autoprune.data.iterate``), bf16
  autocast and channels_last on CUDA;
* conventional: a per-sample ``torchvision`` pipeline (PIL image → RandomCrop(32, padding=4)
  → RandomHorizontalFlip → ToTensor → Normalize) through a DataLoader with workers, fp32.

Pixel values do not change throughput, so random images are used unless ``--data`` names a
dataset. Prints one row per model and pipeline: median img/s over ``--repeats`` timed
windows of ``--steps`` optimizer steps, after ``--warmup`` untimed steps.

    python experiments/bench_train.py --device cuda --models vgg16,resnet56 --steps 50
    python experiments/bench_train.py --device cpu --models resnet20 --batch-size 64 --steps 3
    python experiments/bench_train.py --device cpu --data-only --steps 20   # input pipelines alone
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import time

import torch
import torch.nn as nn

from autoprune.data import iterate, load_data
from autoprune.models import create_model
from autoprune.profile import device_name
from autoprune.runtime import autocast
from autoprune.toolkit import param_groups

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return device_name(device)
    return f"{device_name(device)}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, batches, device, warmup, steps, repeats, batch_size) -> list[float]:
    """img/s of ``repeats`` windows of ``steps`` steps, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step(*next(batches))
    rates = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(*next(batches))
        _sync(device)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return rates


def _make_step(model, device, fast: bool, data_only: bool = False):
    if data_only:
        # Input pipeline alone: batches delivered to the device, no model work.
        def feed(x, y):
            x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        return feed
    opt = torch.optim.SGD(param_groups(model, 5e-4), lr=0.05, momentum=0.9, nesterov=True)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    def step(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if fast and device.type == "cuda":
            with autocast(device):
                logits = model(x)
        else:
            logits = model(x)
        loss = criterion(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _forever(make_epoch):
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def bench_fast(name, x, y, device, args) -> list[float]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=int(y.max()) + 1).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    model.train()
    xd, yd = x.to(device), y.to(device)
    batches = _forever(lambda e: iterate(xd, yd, batch_size=args.batch_size, train=True, mean=MEAN, std=STD,
                                         generator=torch.Generator().manual_seed(e),
                                         channels_last=device.type == "cuda"))
    return _timed(_make_step(model, device, True, args.data_only), batches, device, args.warmup, args.steps, args.repeats,
                  args.batch_size)


class _PerSample(torch.utils.data.Dataset):
    """What torchvision's CIFAR10 does: a uint8 HWC array, one PIL image per __getitem__."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        from torchvision import transforms as T

        self.x = x.permute(0, 2, 3, 1).contiguous().numpy()
        self.y = y.tolist()
        self.tf = T.Compose([T.RandomCrop(tuple(self.x.shape[1:3]), padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                             T.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        from PIL import Image

        return self.tf(Image.fromarray(self.x[i])), self.y[i]


def bench_conventional(name, x, y, device, args) -> list[float]:
    torch.manual_seed(0)
    model = create_model(name, num_classes=int(y.max()) + 1).to(device).train()
    loader = torch.utils.data.DataLoader(_PerSample(x, y), batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         persistent_workers=args.workers > 0)
    batches = _forever(lambda e: iter(loader))
    return _timed(_make_step(model, device, False, args.data_only), batches, device, args.warmup, args.steps, args.repeats,
                  args.batch_size)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="vgg16,resnet56", help="comma-separated registry names")
    p.add_argument("--pipelines", default="fast,conventional")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50, help="timed steps per window")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--images", type=int, default=50000, help="size of the random dataset")
    p.add_argument("--data", default=None, help="dataset name/path for load_data instead of random images")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (on a shared VM, 1 can be several times faster than 2)")
    p.add_argument("--data-only", action="store_true", help="time the input pipelines alone, without a model")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data:
        d = load_data(args.data, args.data_dir, val_size=0)
        x, y = d.train_x, d.train_y
    else:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (args.images, 3, 32, 32), generator=g, dtype=torch.uint8)
        y = torch.randint(0, 10, (args.images,), generator=g)
    runners = {"fast": bench_fast, "conventional": bench_conventional}
    rows = []
    for name in args.models.split(","):
        if args.data_only and rows:
            break  # the model plays no part
        for pipe in args.pipelines.split(","):
            rates = runners[pipe](name, x, y, device, args)
            rows.append({"model": "-" if args.data_only else name, "pipeline": pipe, "img_per_s_median": statistics.median(rates),
                         "img_per_s": rates})
    header = {"what": "input pipeline only" if args.data_only else "training step",
              "hardware": hardware(device), "torch": torch.__version__, "device": str(device),
              "date": datetime.date.today().isoformat(), "batch_size": args.batch_size, "steps": args.steps,
              "repeats": args.repeats, "workers": args.workers}
    if args.json:
        print(json.dumps({**header, "rows": rows}, indent=2))
        return 0
    print(f"# {header['what']} | {header['hardware']} | torch {header['torch']} | {header['date']} | batch {args.batch_size}, "
          f"{args.repeats} x {args.steps} steps, {args.workers} workers")
    print(f"{'model':<12} {'pipeline':<13} {'img/s (median)':>15}  runs")
    for r in rows:
        runs = ", ".join(f"{v:,.0f}" for v in r["img_per_s"])
        print(f"{r['model']:<12} {r['pipeline']:<13} {r['img_per_s_median']:>15,.0f}  [{runs}]")
    for name in args.models.split(","):
        by = {r["pipeline"]: r["img_per_s_median"] for r in rows if r["model"] == name}
        if "fast" in by and "conventional" in by:
            print(f"{name}: fast path {by['fast'] / by['conventional']:.2f}x the conventional pipeline")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
