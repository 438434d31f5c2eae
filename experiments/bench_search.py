"""Benchmark of the search: does searching beat uniform and random at equal cost?

Full run (one GPU):

    python experiments/bench_search.py --model vgg16 --budgets 0.4,0.1 --methods abc,tpe,random \
        --candidates 100 --pretrain-epochs 30 --retrain-epochs 25 --tau-vectors 12

For every budget it runs each method for the same number of candidates on one trained base,
retrains each winner and the uniform-width network from scratch (same epochs), and reports
validation score, test accuracy, MACs/params, latency ratio to the base (GPU batch 256 and
CPU), search wall time and candidates per minute. Evaluator fidelity: Kendall τ between the
evaluator's score and from-scratch test accuracy over ``--tau-vectors`` equal-MACs vectors at
one budget. Every flag scales down for a CPU smoke run (see BENCHMARKS.md, "## Search").
Writes OUT/bench.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from autoprune import cost  # noqa: E402
from autoprune.api import StudyConfig, search  # noqa: E402
from autoprune.arch import build  # noqa: E402
from autoprune.budget import Limits, parse_budget, repair  # noqa: E402
from autoprune.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from autoprune.data import load_data  # noqa: E402
from autoprune.evaluator import EvalConfig, Evaluator  # noqa: E402
from autoprune.models import create_model, model_kwargs  # noqa: E402
from autoprune.runtime import resolve_device  # noqa: E402
from autoprune.space import SearchSpace  # noqa: E402
from autoprune.train import TrainConfig, accuracy, split_accuracy, train  # noqa: E402


def add_common_args(p) -> None:
    """Data, budgets and retraining options shared with bench_dmcp.py."""
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--limit", type=int, default=None, help="training images (default all)")
    p.add_argument("--val-size", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=None, help="test images used (default all)")
    p.add_argument("--budgets", default="0.4,0.1")
    p.add_argument("--retrain-epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=None, help="training batch size (GPU 512, CPU 128)")
    p.add_argument("--lr", type=float, default=None, help="training peak lr (GPU 0.2, CPU 0.05)")
    p.add_argument("--cpu-latency-batch", type=int, default=32)
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vgg16")
    add_common_args(p)
    p.add_argument("--methods", default="abc,tpe,random")
    p.add_argument("--candidates", type=int, default=100, help="candidates per method and budget")
    p.add_argument("--base", default=None, help="trained base checkpoint (else pre-trained here)")
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--fine-tune-steps", type=int, default=None)
    p.add_argument("--bn-batches", type=int, default=None)
    p.add_argument("--eval-batch-size", type=int, default=None)
    p.add_argument("--tau-vectors", type=int, default=12)
    p.add_argument("--tau-budget", type=float, default=None, help="budget of the fidelity study (default: last)")
    p.add_argument("--tau-epochs", type=int, default=None, help="from-scratch epochs there (default retrain)")
    p.add_argument("--latency-batch", type=int, default=256, help="GPU latency batch")
    p.add_argument("--out", default="runs/bench_search")
    return p.parse_args(argv)


def train_config(args, epochs, device):
    return TrainConfig.for_device(device, epochs=epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr)


def test_acc(model, data, device, limit):
    """Test accuracy, on a seeded random subset of ``limit`` images: the test split of an
    ImageFolder source is ordered by class, so its first images are all of one class."""

    x, y = test_subset(data, limit).split("test")
    return accuracy(model, x, y, data=data, device=device)


def test_subset(data, limit):
    """``data`` with its test split cut to the seeded subset of ``limit`` images that
    :func:`test_acc` measures (``data`` itself where ``limit`` is unset or covers it all)."""
    x, y = data.split("test")
    if not limit or limit >= len(y):
        return data
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:limit].sort().values
    return replace(data, test_x=x[idx.to(x.device)], test_y=y[idx.to(y.device)])


@torch.no_grad()
def latency_ms(model, shape, batch, device, reps=10):
    model = model.to(device).eval()
    x = torch.randn(batch, *shape, device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16)
    else:
        import contextlib

        ctx = contextlib.nullcontext()
    with ctx:
        for _ in range(3):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def retrain(arch, data, args, device, epochs):
    torch.manual_seed(args.seed)
    model = build(arch)
    train(model, data, train_config(args, epochs, device), device=device, progress=False)
    return model


def base_model(name, kwargs, data, args, device, out):
    """The trained base: ``--base``, or the one kept in OUT/base, or pre-trained there now."""
    path = Path(args.base) if args.base else out / "base" / "model.pt"
    torch.manual_seed(args.seed)
    model = create_model(name, **kwargs)
    if path.is_file():
        load_checkpoint(path, model)
    else:
        config = train_config(args, args.pretrain_epochs, device)
        train(model, data, config, device=device, out_dir=out / "base", progress=False)
        # The recorded config lets retrain default Scratch-E/B to the base's epochs.
        save_checkpoint(path, model, model_name=name, model_kwargs=kwargs, config=asdict(config))
    return model.to(device)


def setup(args):
    """(device, output folder, data) from the common arguments."""
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args.dataset, args.data_dir, val_size=args.val_size, seed=args.seed, device=device,
                     limit=args.limit)
    return device, out, data


def main(argv=None):
    args = parse_args(argv)
    t_all = time.perf_counter()
    device, out, data = setup(args)
    kwargs = model_kwargs(args.model, num_classes=data.num_classes)
    shape = tuple(data.input_shape)

    # -- the trained base ----------------------------------------------------------------------
    base_path = Path(args.base) if args.base else out / "base" / "model.pt"
    base = base_model(args.model, kwargs, data, args, device, out)
    space = SearchSpace.from_model(base, shape, model_name=args.model)
    base_macs = cost.macs(space, space.max_widths())
    base_row = {"budget": "1.0", "method": "base", "macs_ratio": 1.0,
                "params": cost.params(space, space.max_widths()),
                "val": split_accuracy(base, data, "val", device=device),
                "test": test_acc(base, data, device, args.test_limit)}
    base_cpu = latency_ms(base, shape, args.cpu_latency_batch, torch.device("cpu"))
    base_gpu = latency_ms(base, shape, args.latency_batch, device) if device.type == "cuda" else None
    base = base.to(device)
    rows = [base_row]
    common = dict(data=data, base=str(base_path), seed=args.seed, device=str(device),
                  objective=EvalConfig(fine_tune_steps=args.fine_tune_steps, bn_batches=args.bn_batches,
                                        batch_size=args.eval_batch_size, seed=args.seed))

    # -- search at every budget, then retrain the winners and uniform -----------------------------
    for budget in [b.strip() for b in args.budgets.split(",") if b.strip()]:
        for method in [m.strip() for m in args.methods.split(",") if m.strip()] + ["uniform"]:
            t = time.perf_counter()
            res = search(args.model, budget, method, study=StudyConfig(trials=args.candidates),
                         out=out / f"b{budget}-{method}", **common)
            wall = time.perf_counter() - t
            s = res.summary()
            model = retrain(res.arch, data, args, device, args.retrain_epochs)
            row = {"budget": budget, "method": method, "macs_ratio": s["macs_ratio"], "params": s["params"],
                   "val": s["score"], "test": test_acc(model, data, device, args.test_limit),
                   "candidates": s["candidates"], "search_s": round(wall, 1),
                   "cand_per_min": round(s["candidates"] / wall * 60, 1),
                   "cpu_latency": latency_ms(model, shape, args.cpu_latency_batch, torch.device("cpu")) / base_cpu}
            if base_gpu:
                row["gpu_latency"] = latency_ms(model, shape, args.latency_batch, device) / base_gpu
            rows.append(row)
            print(json.dumps(row), flush=True)

    # -- evaluator fidelity: proxy score vs from-scratch accuracy ---------------------------------
    tau = None
    if args.tau_vectors >= 2:
        from scipy.stats import kendalltau

        from autoprune.arch import make_arch

        tb = args.tau_budget or float(args.budgets.split(",")[-1])
        max_macs = parse_budget(tb).max_macs(base_macs)
        rng = np.random.default_rng(args.seed + 1)
        vectors, seen = [], set()
        while len(vectors) < args.tau_vectors:
            w = repair(space, space.sample(rng), Limits(max_macs), rng=rng)
            if w not in seen:
                seen.add(w)
                vectors.append(w)
        config = EvalConfig.for_device(device, fine_tune_steps=args.fine_tune_steps, bn_batches=args.bn_batches,
                                       batch_size=args.eval_batch_size, seed=args.seed)
        evaluator = Evaluator(base, space, data, config=config, device=device)
        proxy, scratch = [], []
        for w in vectors:
            proxy.append(evaluator(w).score)
            arch = make_arch(args.model, kwargs, space, w)
            scratch.append(test_acc(retrain(arch, data, args, device, args.tau_epochs or args.retrain_epochs),
                                    data, device, args.test_limit))
        stat = kendalltau(proxy, scratch)
        tau = {"budget": tb, "vectors": len(vectors), "tau": float(stat.statistic), "p": float(stat.pvalue),
               "proxy": proxy, "scratch": scratch}
        print(json.dumps({"tau": tau["tau"], "p": tau["p"]}), flush=True)

    report = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "device": str(device),
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "args": vars(args), "rows": rows, "tau": tau, "seconds": round(time.perf_counter() - t_all, 1)}
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report) -> str:
    gpu = any("gpu_latency" in r for r in report["rows"])
    head = ("| budget | method | MACs ratio | params | val score | test acc | candidates | search s | cand/min "
            "| CPU latency ratio |")
    head += " GPU latency ratio |" if gpu else ""
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in report["rows"]:
        cells = [r["budget"], r["method"], f"{r['macs_ratio']:.3f}", f"{r['params'] / 1e3:.1f}K",
                 "-" if r.get("val") is None else f"{r['val']:.4f}", f"{r['test']:.4f}",
                 str(r.get("candidates", "-")), str(r.get("search_s", "-")), str(r.get("cand_per_min", "-")),
                 "1.00" if r["method"] == "base" else f"{r['cpu_latency']:.2f}"]
        if gpu:
            cells.append("1.00" if r["method"] == "base" else f"{r.get('gpu_latency', float('nan')):.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    if report["tau"]:
        t = report["tau"]
        lines.append("")
        lines.append(f"Evaluator fidelity at budget {t['budget']}: Kendall τ = {t['tau']:.2f} (p = {t['p']:.2f}) "
                     f"over {t['vectors']} equal-MACs width vectors (proxy score vs from-scratch test accuracy).")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
