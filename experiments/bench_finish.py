"""Finishing one searched architecture four ways: Scratch-E, fine-tune, fine-tune + distillation, Scratch-B.

A base is trained (or given with ``--base``), one width vector is searched under ``--budget``
with :func:`autoprune.search` and the real evaluator, and the pruned architecture is finished
with each seed in four ways:

* **scratch-e** — :func:`autoprune.build` then :func:`autoprune.train.train` from its own
  initialisation for ``--epochs`` E (what ``autoprune retrain --epochs E`` runs);
* **finetune** — :func:`autoprune.finetune` from the weights inherited from the base, E epochs;
* **finetune+distill** — the same with the base as the teacher (KL at temperature 4, weight 1);
* **scratch-b** — from scratch for :func:`autoprune.train.scratch_b_epochs` epochs: the
  compute of E epochs of the base (``--scratch-b-base-epochs`` N: of N epochs of the base, as
  ``autoprune retrain --scratch-b --base-epochs N``), at most 2 × E.

The first three train for the same epochs; only Scratch-B trains longer. Scratch runs use the
library's from-scratch recipe (one-cycle, ``--scratch-lr``), fine-tunes its fine-tuning recipe
(cosine from ``--finetune-lr``, no warm-up); all at ``--batch-size``. Prints one markdown row per
way (test accuracy as mean ± std over ``--seeds``) and writes a JSON file of every run.

The full setting (full CIFAR-10, a base of real length; a GPU):

    python experiments/bench_finish.py --data-dir ../shared/datasets/cifar10-jpg.tar.gz

``--cpu-scale`` shrinks everything so that the whole comparison runs in about 20 minutes on two
CPU cores (1,500 training images, a 4-epoch base, 8 random candidates, E = 3, 2,000 test images,
one seed): its accuracies only indicate. Any setting of either preset can be given explicitly.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoprune import BaseConfig, EvalConfig, StudyConfig, build, finetune, search  # noqa: E402
from autoprune.checkpoint import load_checkpoint, load_weights, save_checkpoint  # noqa: E402
from autoprune.dataspec import DataSpec  # noqa: E402
from autoprune.files import write_json  # noqa: E402
from autoprune.models import create_model  # noqa: E402
from autoprune.train import TrainConfig, scratch_b_epochs, split_accuracy, train  # noqa: E402

WAYS = ("scratch-e", "finetune", "finetune+distill", "scratch-b")

# Unset flags take these. FULL is the setting the comparison is meant for (a GPU); CPU_SCALE
# fits two shared CPU cores in about 20 minutes.
FULL = {"limit": None, "val_size": 5000, "test_limit": None, "base_epochs": 100, "method": "abc", "trials": 100,
        "eval_bn_batches": None, "eval_steps": None, "eval_batch_size": None, "epochs": 40, "seeds": [0, 1, 2],
        "threads": None}
CPU_SCALE = {"limit": 1500, "val_size": 500, "test_limit": 2000, "base_epochs": 4, "method": "random", "trials": 8,
             "eval_bn_batches": 4, "eval_steps": 5, "eval_batch_size": 64, "epochs": 3, "seeds": [0],
             "threads": 1}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-scale", action="store_true", help="the small setting (see the module docstring)")
    p.add_argument("--out", default="runs/bench-finish", help="base checkpoint, search study and architecture")
    p.add_argument("--results", default=None,
                   help="JSON to write (default: experiments/results/finish-{cpu-scale|DEVICE}-MODEL.json)")
    p.add_argument("--model", default="resnet56")
    p.add_argument("--budget", type=float, default=0.4, help="MACs of the pruned model / the base's")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default="../shared/datasets/cifar10-jpg.tar.gz")
    p.add_argument("--limit", type=int, default=None, help="training images kept")
    p.add_argument("--val-size", type=int, default=None, help="training images held out to score candidates")
    p.add_argument("--test-limit", type=int, default=None, help="test images kept (a seeded subset)")
    p.add_argument("--base", default=None, help="a trained base checkpoint (default: train one into OUT/base.pt)")
    p.add_argument("--base-epochs", type=int, default=None)
    p.add_argument("--method", default=None, help="search method (uniform: no search, the uniform vector)")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--eval-bn-batches", type=int, default=None)
    p.add_argument("--eval-steps", type=int, default=None, help="fine-tune steps per candidate")
    p.add_argument("--eval-batch-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="E: epochs of scratch-e, finetune, finetune+distill")
    p.add_argument("--scratch-b-base-epochs", type=int, default=None,
                   help="Scratch-B gets the compute of this many base epochs (default: E)")
    p.add_argument("--batch-size", type=int, default=None, help="default: 512 on CUDA, 128 on the CPU")
    p.add_argument("--scratch-lr", type=float, default=None, help="peak lr from scratch (default: 0.2 CUDA, 0.05 CPU)")
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--max-steps", type=int, default=None, help="stop every training run early (smoke tests)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--search-seed", type=int, default=0, help="seed of the base, the split and the search")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 on a shared VM, where two threads spin-wait on each other)")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    for key, value in (CPU_SCALE if args.cpu_scale else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def load(args, device: torch.device):
    """The data, split with ``--search-seed``; the test split thinned to ``--test-limit`` images."""
    spec = DataSpec(name=args.dataset, data_dir=args.data_dir, limit=args.limit, val_size=args.val_size,
                    seed=args.search_seed)
    data = spec.against(None, "").load(device)
    if data.resident and args.test_limit is not None and args.test_limit < data.num_examples("test"):
        x, y = data.split("test")
        g = torch.Generator().manual_seed(args.search_seed)
        keep = torch.randperm(len(y), generator=g)[: args.test_limit].sort().values.to(y.device)
        data = replace(data, test_x=x[keep], test_y=y[keep], meta={**data.meta, "test_limit": args.test_limit})
    return data


def make_base(args, data, out: Path, device: torch.device) -> tuple[Path, dict]:
    """The base checkpoint (trained into OUT/base.pt unless ``--base`` names one) and its accuracies."""
    kwargs = {"num_classes": data.num_classes}
    model = create_model(args.model, **kwargs)
    start = time.perf_counter()
    if args.base is not None:
        path = Path(args.base)
        epochs = (load_checkpoint(path).get("config") or {}).get("epochs")
        load_weights(model, path)
    else:
        torch.manual_seed(args.search_seed)
        epochs = args.base_epochs
        config = _config(args, device, args.base_epochs, args.search_seed, scratch=True)
        train(model, data, config, device=device, progress=False)
        path = save_checkpoint(out / "base.pt", model.cpu(), model_name=args.model, model_kwargs=kwargs,
                               dataset=data.meta, input_shape=list(data.input_shape), config=asdict(config))
    model.to(device)
    return path, {"path": str(path), "epochs": epochs,
                  "val_acc": split_accuracy(model, data, "val", device=device),
                  "test_acc": split_accuracy(model, data, "test", device=device),
                  "seconds": round(time.perf_counter() - start, 1)}


def search_arch(args, data, base: Path, out: Path, device: torch.device):
    """One width vector under the budget, scored by the library's evaluator."""
    evaluation = EvalConfig.for_device(device, bn_batches=args.eval_bn_batches, fine_tune_steps=args.eval_steps,
                                       batch_size=args.eval_batch_size, seed=args.search_seed)
    trials = 1 if args.method == "uniform" else args.trials
    return search(args.model, budget=args.budget, method=args.method, data=data, base=BaseConfig(path=base),
                  out=out / "search", seed=args.search_seed, device=str(device), study=StudyConfig(trials=trials),
                  objective=evaluation)


def finish(way: str, arch: dict, base: Path, data, epochs: int, seed: int, args, device: torch.device) -> dict:
    """One finishing run of ``arch``: its accuracies and wall time (training and the test pass)."""
    start = time.perf_counter()
    if way in ("scratch-e", "scratch-b"):
        config = _config(args, device, epochs, seed, scratch=True)
        torch.manual_seed(seed)
        model = build(arch)
        history = train(model, data, config, device=device, progress=False)
        val, test = history["val_acc"], split_accuracy(model, data, "test", device=device)
    else:
        config = _config(args, device, epochs, seed, scratch=False)
        r = finetune(arch, base, data, distill=way == "finetune+distill", config=config, device=device, seed=seed)
        val, test = r.val_acc, r.test_acc
    return {"way": way, "seed": seed, "epochs": epochs, "lr": config.lr, "schedule": config.schedule,
            "val_acc": val if val is not None and math.isfinite(val) else None, "test_acc": test,
            "seconds": round(time.perf_counter() - start, 1)}


def _config(args, device, epochs: int, seed: int, *, scratch: bool) -> TrainConfig:
    """From scratch: the library's one-cycle recipe; fine-tuning: cosine from --finetune-lr, no warm-up."""
    common = {"epochs": epochs, "seed": seed, "batch_size": args.batch_size, "max_steps": args.max_steps}
    if scratch:
        return TrainConfig.for_device(device, lr=args.scratch_lr, **common)
    return TrainConfig.for_device(device, lr=args.finetune_lr, schedule="cosine", warmup=0.0, **common)


def summarise(rows: list[dict]) -> list[dict]:
    """Per way: epochs, mean and std (None for one seed) of the accuracies, mean wall time."""
    out = []
    for way in WAYS:
        mine = [r for r in rows if r["way"] == way]
        if not mine:
            continue
        test = [r["test_acc"] for r in mine]
        vals = [r["val_acc"] for r in mine if r["val_acc"] is not None]
        out.append({"way": way, "epochs": mine[0]["epochs"], "n": len(mine), "test_mean": statistics.fmean(test),
                    "test_std": statistics.stdev(test) if len(test) > 1 else None,
                    "val_mean": statistics.fmean(vals) if vals else None,
                    "seconds_mean": statistics.fmean(r["seconds"] for r in mine)})
    return out


def table(summary: list[dict]) -> str:
    """The markdown table of :func:`summarise`'s rows."""
    lines = ["| way | epochs | test acc | val acc | wall s (per run) |", "|---|---:|---:|---:|---:|"]
    for s in summary:
        test = f"{s['test_mean']:.4f}" + (f" ± {s['test_std']:.4f}" if s["test_std"] is not None else "")
        val = f"{s['val_mean']:.4f}" if s["val_mean"] is not None else "-"
        lines.append(f"| {s['way']} | {s['epochs']} | {test} | {val} | {s['seconds_mean']:.0f} |")
    return "\n".join(lines)


def run(args) -> dict:
    """The whole comparison; returns the record that main() writes."""
    start, load_before = time.perf_counter(), _load_average()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load(args, device)
    sizes = {s: data.num_examples(s) for s in ("train", "val", "test")}
    print(f"data: {sizes}", flush=True)
    base, base_info = make_base(args, data, out, device)
    print(f"base: val {base_info['val_acc']:.4f} test {base_info['test_acc']:.4f} ({base_info['seconds']} s)",
          flush=True)
    result = search_arch(args, data, base, out, device)
    arch = result.arch
    ratio = arch["macs"]["pruned"] / arch["macs"]["base"]
    print(f"search: {args.method}, {len(result.trials)} candidates, {ratio:.3f} of the base MACs, "
          f"score {result.score} ({result.seconds:.0f} s)", flush=True)
    epochs_b = scratch_b_epochs(args.scratch_b_base_epochs or args.epochs, arch["macs"]["base"], arch["macs"]["pruned"])
    rows = []
    for seed in args.seeds:
        for way in WAYS:
            row = finish(way, arch, base, data, epochs_b if way == "scratch-b" else args.epochs, seed, args, device)
            rows.append(row)
            print(f"  seed {seed} {way}: test {row['test_acc']:.4f} ({row['seconds']} s)", flush=True)
    summary = summarise(rows)
    return {"args": vars(args), "data": {**sizes, "meta": {k: v for k, v in data.meta.items() if k != "classes"}},
            "base": base_info,
            "search": {"method": args.method, "candidates": len(result.trials), "score": result.score,
                       "seconds": round(result.seconds, 1), "widths": result.widths, "macs": arch["macs"],
                       "macs_ratio": ratio, "arch": str(out / "search" / "arch.json")},
            "rows": rows, "summary": summary, "table": table(summary),
            "seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(time.process_time(), 1),
            "load_average": {"start": load_before, "end": _load_average()}, "torch": torch.__version__,
            "device": str(device), "threads": torch.get_num_threads(), "platform": platform.platform(), "processor": _processor(),
            "date": datetime.date.today().isoformat()}


def _load_average() -> list[float] | None:
    """The 1/5/15-minute load averages: on a shared machine, how much of it the run had."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _processor() -> str:
    """The CPU's model name where /proc/cpuinfo says it, else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None) -> None:
    args = parse_args(argv)
    record = run(args)
    print(record["table"])
    seeds = len(args.seeds)
    print(f"{'one seed' if seeds == 1 else f'mean ± std over {seeds} seeds'}; total {record['seconds']:.0f} s")
    kind = "cpu-scale" if args.cpu_scale else record["device"].split(":")[0]
    path = Path(args.results or Path(__file__).resolve().parent / "results" / f"finish-{kind}-{args.model}.json")
    write_json(record, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
