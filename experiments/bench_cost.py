"""Analytic cost vs. materialise + thop: how much cheaper is it to cost a width vector?

    python experiments/bench_cost.py [--models vgg16 tv:resnet50] [--analytic-reps 2000] [--thop-reps 5]

Prints a table: per-vector time of autoprune.cost.macs (pure arithmetic on the traced layer
list) and of building the pruned model and counting it with thop, and their ratio.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import numpy as np
import thop
import torch

from autoprune.cost import macs
from autoprune.keep import First
from autoprune.models import create_model, default_input_size
from autoprune.space import SearchSpace
from autoprune.surgery import materialise


def bench(name: str, analytic_reps: int, thop_reps: int, seed: int = 0) -> dict:
    size = default_input_size(name)
    model = create_model(name).eval()
    space = SearchSpace.from_model(model, (3, size, size))
    rng = np.random.default_rng(seed)
    vectors = [space.sample(rng) for _ in range(max(analytic_reps, thop_reps))]

    t0 = time.perf_counter()
    analytic = [macs(space, w) for w in vectors[:analytic_reps]]
    t_analytic = (time.perf_counter() - t0) / analytic_reps

    times, rel = [], []
    x = torch.zeros(1, 3, size, size)
    for w, a in zip(vectors[:thop_reps], analytic):
        t0 = time.perf_counter()
        pruned = materialise(model, space, w, keep=First()).eval()
        with torch.no_grad():
            ops, _ = thop.profile(pruned, inputs=(x,), verbose=False)
        times.append(time.perf_counter() - t0)
        rel.append(ops / a - 1)
    t_thop = statistics.median(times)
    return {"model": name, "input": size, "groups": len(space), "analytic_us": t_analytic * 1e6,
            "thop_ms": t_thop * 1e3, "ratio": t_thop / t_analytic, "thop_extra": statistics.median(rel)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg16", "tv:resnet50"])
    p.add_argument("--analytic-reps", type=int, default=2000)
    p.add_argument("--thop-reps", type=int, default=5)
    args = p.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, {datetime.date.today()}")
    print("| model | input | free groups | analytic per vector | materialise+thop per vector (median) | ratio "
          "| thop's extra ops (BN, ReLU, pools) |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        r = bench(name, args.analytic_reps, args.thop_reps)
        print(f"| {r['model']} | {r['input']} | {r['groups']} | {r['analytic_us']:.0f} µs | {r['thop_ms']:.0f} ms | "
              f"{r['ratio']:,.0f}× | +{r['thop_extra']:.1%} |")


if __name__ == "__main__":
    main()
