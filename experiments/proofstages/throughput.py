"""Stage throughput: training img/s, fast path vs a per-sample DataLoader."""

from __future__ import annotations

import os
import statistics
from types import SimpleNamespace

from bench_train import bench_conventional, bench_fast

from .common import free, log
from .runner import Proof


def stage_throughput(p: Proof) -> dict:
    t = p.s["throughput"]
    x, y = p.data.train_x.cpu(), p.data.train_y.cpu()
    workers = min(t["loader_workers"], os.cpu_count() or 1)
    args = SimpleNamespace(batch_size=t["batch_size"], warmup=t["warmup"], steps=t["steps"], repeats=t["repeats"],
                           workers=workers, data_only=False)
    rows = []
    for name in p.s["throughput_models"]:
        for pipe, fn in (("fast", bench_fast), ("conventional", bench_conventional)):
            est = 2 * (t["warmup"] + t["steps"] * t["repeats"]) * t["batch_size"] / (
                20000 if p.device.type == "cuda" else 200) + 5
            p.clock.check(est, f"throughput {name} {pipe}")
            rates = fn(name, x, y, p.device, args)
            rows.append({"model": name, "pipeline": pipe, "macs_ratio": 1.0, "img_per_s_median": statistics.median(rates),
                         "img_per_s": rates})
            log(f"throughput {name} {pipe}: {statistics.median(rates):,.0f} img/s")
            free(p.device)
    return {"rows": rows, "batch_size": t["batch_size"], "steps": t["steps"], "repeats": t["repeats"],
            "loader_workers": workers, "images": len(y)}
