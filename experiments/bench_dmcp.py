"""Benchmark of DMCP: the derived architecture retrained from scratch, next to uniform.

Full run (one GPU; the rows join the search table of BENCHMARKS.md):

    python experiments/bench_dmcp.py --models vgg16,resnet56 --budgets 0.4,0.1 \
        --pretrain-epochs 30 --search-epochs 30 --retrain-epochs 25

For every model it trains (or loads with ``--base``) a base, then at every budget runs DMCP on
it, retrains the derived architecture from scratch for ``--retrain-epochs`` and, as the
reference every search method must beat, the uniform-width network at the same budget for
the same epochs. It reports MACs ratio (derived, and the expectation DMCP converged to),
params, test accuracy, search wall time and CPU latency ratio. Every flag scales down for a
CPU run (see BENCHMARKS.md, "## DMCP"). Writes OUT/bench.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_search import add_common_args, base_model, latency_ms, retrain, setup, test_acc  # noqa: E402

from autoprune import cost  # noqa: E402
from autoprune.arch import make_arch  # noqa: E402
from autoprune.budget import (
    Limits,  # noqa: E402
    parse_budget,  # noqa: E402
    uniform_at_budget,  # noqa: E402
)
from autoprune.models import model_kwargs  # noqa: E402
from autoprune.optimizers.dmcp import DMCPConfig, search_dmcp  # noqa: E402
from autoprune.space import SearchSpace  # noqa: E402
from autoprune.train import split_accuracy  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="vgg16,resnet56")
    add_common_args(p)
    p.add_argument("--base", default=None, help="trained base checkpoint of the (single) model")
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--search-epochs", type=float, default=30, help="DMCP epochs over the training split")
    p.add_argument("--search-steps", type=int, default=None, help="DMCP weight steps (overrides epochs)")
    p.add_argument("--search-batch-size", type=int, default=None, help="DMCP batch (GPU 256, CPU 64)")
    p.add_argument("--search-lr", type=float, default=0.05)
    p.add_argument("--arch-lr", type=float, default=0.02)
    p.add_argument("--penalty", type=float, default=1.0)
    p.add_argument("--derive", default="expected", choices=["expected", "direct"])
    p.add_argument("--no-uniform", action="store_true", help="skip the uniform reference rows")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--out", default="runs/bench_dmcp")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    device, out, data = setup(args)
    shape = tuple(data.input_shape)
    search_batch = args.search_batch_size or (256 if device.type == "cuda" else 64)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        kwargs = model_kwargs(name, num_classes=data.num_classes)
        base = base_model(name, kwargs, data, args, device, out / name)
        space = SearchSpace.from_model(base, shape, model_name=name)
        base_macs = cost.base_macs(space)
        base_cpu = latency_ms(base, shape, args.cpu_latency_batch, torch.device("cpu"))
        base = base.to(device)
        rows.append({"model": name, "budget": "1.0", "method": "base", "macs_ratio": 1.0,
                     "params": cost.params(space, space.max_widths()),
                     "val": split_accuracy(base, data, "val", device=device),
                     "test": test_acc(base, data, device, args.test_limit)})
        print(json.dumps(rows[-1]), flush=True)
        for text in [b.strip() for b in args.budgets.split(",") if b.strip()]:
            budget = parse_budget(text)
            max_macs = budget.max_macs(base_macs)
            t = time.perf_counter()
            config = DMCPConfig(steps=args.search_steps, epochs=args.search_epochs, batch_size=search_batch,
                                lr=args.search_lr, arch_lr=args.arch_lr, penalty=args.penalty, derive=args.derive,
                                seed=args.seed)
            widths, info = search_dmcp(base, space, data, config, limits=Limits(max_macs), device=device,
                                       out_dir=out / name / f"b{text}")
            wall = time.perf_counter() - t
            arch = make_arch(name, kwargs, space, widths, budget={**budget.to_dict(), "max_macs": int(max_macs)},
                             method="dmcp", seed=args.seed)
            found = {"dmcp": (arch, wall, info)}
            if not args.no_uniform:
                uniform = make_arch(name, kwargs, space, uniform_at_budget(space, Limits(max_macs)), budget=budget.to_dict(),
                                    method="uniform", seed=args.seed)
                found["uniform"] = (uniform, None, None)
            for method, (arch, wall, info) in found.items():
                model = retrain(arch, data, args, device, args.retrain_epochs)
                row = {"model": name, "budget": text, "method": method,
                       "macs_ratio": arch["macs"]["pruned"] / arch["macs"]["base"], "params": arch["params"]["pruned"],
                       "val": split_accuracy(model, data, "val", device=device),
                       "test": test_acc(model, data, device, args.test_limit),
                       "cpu_latency": latency_ms(model, shape, args.cpu_latency_batch, torch.device("cpu")) / base_cpu}
                if info is not None:
                    row.update({"expected_ratio": info["expected_ratio"], "search_steps": info["steps"],
                                "search_s": round(wall, 1), "widths": arch["widths"]})
                rows.append(row)
                print(json.dumps(row), flush=True)

    report = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "device": str(device),
              "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
              "args": vars(args), "rows": rows, "seconds": round(time.perf_counter() - t_all, 1)}
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))


def markdown(report) -> str:
    head = ("| model | budget | method | MACs ratio | E[MACs] ratio | params | val acc | test acc | search steps "
            "| search s | CPU latency ratio |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in report["rows"]:
        cells = [r["model"], r["budget"], r["method"], f"{r['macs_ratio']:.3f}",
                 f"{r['expected_ratio']:.3f}" if "expected_ratio" in r else "-", f"{r['params'] / 1e3:.1f}K",
                 f"{r['val']:.4f}", f"{r['test']:.4f}", str(r.get("search_steps", "-")), str(r.get("search_s", "-")),
                 "1.00" if r["method"] == "base" else f"{r['cpu_latency']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
