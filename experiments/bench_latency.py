"""Predicted vs. measured latency: is the latency table good enough to budget on?

    python experiments/bench_latency.py [--models vgg16 resnet56 mobilenetv2] [--device cpu]
        [--batch-size 8] [--threads 1] [--vectors 20] [--out FILE.json]

For each model: measure its latency table on this device (autoprune.profile, cached in
--cache-dir), then for ``--vectors`` random width vectors build the pruned model, measure it
end to end (median, or with ``--statistic min`` the fastest, of repeats) and compare with
``autoprune.latency.predict``. Prints the median and 90th-percentile absolute error in per
cent of the measured time, and the median error of the latency ratio to the base model
(the median over ``--rounds`` of the vector's time over the base's, timed back to back), and
writes every pair to ``--out``. Aims: median error at most 15 % on the CPU, 10 % on a GPU.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

from autoprune.files import write_json
from autoprune.latency import predict
from autoprune.models import create_model, default_input_size
from autoprune.profile import (
    STATISTICS,
    TableConfig,
    Timer,
    device_name,
    latency_table,
    measure_rounds,
    paired_ratio,
    set_threads,
)
from autoprune.runtime import resolve_device
from autoprune.space import SearchSpace


def bench(name: str, args, cache_dir: str) -> dict:
    size = default_input_size(name)
    model = create_model(name).eval()
    space = SearchSpace.from_model(model, (3, size, size), model_name=name)
    config = TableConfig(device=args.device, batch_size=args.batch_size, dtype=args.dtype, grid=args.grid,
                         repeats=args.repeats, statistic=args.statistic, rounds=args.table_rounds, cache_dir=cache_dir)
    t0 = time.perf_counter()
    table, _ = latency_table(model, space, config, progress=True)
    table_s = time.perf_counter() - t0
    timer = Timer(resolve_device(args.device), warmup=3, repeats=args.repeats, statistic=args.statistic)
    rng = np.random.default_rng(args.seed)
    rows = []
    for _ in range(args.vectors):
        widths = space.sample(rng)
        pred = float(predict(table, space, widths))
        # the base timed beside the vector: the ratio is what a --latency-budget 0.5 compares,
        # and it does not move with the machine's load between the table's measurement and now
        # (the median over rounds of vector / base, the two timed back to back, as the search's hold judges it)
        runs = measure_rounds(table, model, space, [widths, space.max_widths()], rounds=args.rounds, timer=timer)
        meas, base = (STATISTICS[args.statistic](r) for r in runs)
        ratio = paired_ratio(*runs)
        ratio_error = abs(pred / table.model_ms - ratio) / ratio
        rows.append({"widths": list(widths), "predicted_ms": pred, "measured_ms": meas, "base_now_ms": base,
                     "measured_ratio": ratio, "error": abs(pred - meas) / meas, "ratio_error": ratio_error})
    errors = sorted(r["error"] for r in rows)
    ratio_errors = sorted(r["ratio_error"] for r in rows)
    out = {"model": name, "base_ms": table.model_ms, "overhead_ms": table.overhead_ms,
           "scale": table.scale, "knots": [list(k) for k in table.knots],
           "table": table.id,
           "table_seconds": round(table_s, 1), "median_error": statistics.median(errors),
           "p90_error": errors[int(0.9 * (len(errors) - 1))], "max_error": errors[-1],
           "median_ratio_error": statistics.median(ratio_errors), "vectors": rows}
    print(f"{name:<12} base {table.model_ms:9.3f} ms  median error {100 * out['median_error']:5.1f} %  "
          f"p90 {100 * out['p90_error']:5.1f} %  max {100 * out['max_error']:5.1f} %  "
          f"ratio error {100 * out['median_ratio_error']:5.1f} %  (table {table_s:.0f} s)", flush=True)
    return out


def start(args, **settings) -> dict:
    """Set the thread count and print (and return) where and with what the run measures."""
    set_threads(args.threads)
    device = resolve_device(args.device)
    header = {"date": datetime.date.today().isoformat(), "device": str(device), "device_name": device_name(device),
              "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
              "batch_size": args.batch_size, **settings}
    print(json.dumps(header), flush=True)
    return header


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vgg16", "resnet56", "mobilenetv2"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grid", type=int, default=6)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--statistic", default="median", choices=["median", "min"],
                   help="what is kept of the timed runs (min: steadier on a machine shared with other jobs)")
    p.add_argument("--vectors", type=int, default=20)
    p.add_argument("--rounds", type=int, default=1, help="interleaved measurements of each vector and the base")
    p.add_argument("--table-rounds", type=int, default=1, help="times the latency table is measured over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="table cache (default: a temporary folder)")
    p.add_argument("--out", default=None, help="JSON file for every predicted/measured pair")
    args = p.parse_args()
    header = start(args, grid=args.grid, vectors=args.vectors)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            results.append(bench(name, args, args.cache_dir or tmp))
            if args.out:  # after every model: a time limit keeps what finished
                write_json({**header, "results": results}, args.out)


if __name__ == "__main__":
    main()
