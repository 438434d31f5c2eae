"""Does a latency budget hold where a MACs budget at the same MACs does not?

    python experiments/bench_latency_budget.py [--models resnet56 mobilenetv2] [--device cpu]
        [--batch-size 8] [--latency-budget 0.5] [--trials 40] [--out FILE.json]

For each model: measure its latency table on this device, search with ``--latency-budget``
alone (the table's prediction is the constraint, and the search's hold times its winner and
tightens the limit where the winner runs over; the hold's measurements are printed), then search again with a MACs budget equal
to the latency winner's MACs ratio and no latency budget, and add the uniform-fill vector at
that MACs ratio. Every winner is materialised and measured end to end, in ``--rounds`` rounds
that time the base and the three winners back to back; a winner's latency ratio is the median
over rounds of its time over the base's in the same round (a drift of the machine between
rounds cancels).
The searches score candidates with the cheap synthetic objective: the question is which
widths each constraint admits, not which one is most accurate, so no training is needed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench_latency import start

from autoprune.api import LatencyConfig, StudyConfig, search
from autoprune.cost import base_macs, macs
from autoprune.errors import BudgetError, one_line
from autoprune.files import write_json
from autoprune.latency import predict
from autoprune.models import create_model, default_input_size
from autoprune.profile import STATISTICS, TableConfig, Timer, latency_table, measure_rounds, paired_ratio
from autoprune.runtime import resolve_device
from autoprune.space import SearchSpace


def winner(name: str, out: Path, args, seed: int, **kw):
    return search(name, method=kw.pop("method", args.method), objective="synthetic", out=out, seed=seed,
                  device=args.device, study=StudyConfig(trials=args.trials), **kw)


def bench(name: str, args, tmp: Path) -> dict:
    size = default_input_size(name)
    model = create_model(name).eval()
    space = SearchSpace.from_model(model, (3, size, size), model_name=name)
    config = TableConfig(device=args.device, batch_size=args.batch_size, dtype=args.dtype, grid=args.grid,
                         repeats=args.repeats, statistic=args.statistic, rounds=args.table_rounds,
                         cache_dir=args.cache_dir or tmp / "tables")
    table, _ = latency_table(model, space, config, progress=True)
    full = base_macs(space)
    held = winner(name, tmp / f"{name}-lat", args, args.seed, budget=None,
                  latency=LatencyConfig(args.latency_budget, table))
    hold = held.arch["search"]["latency"]["hold"]  # the search's own measurements of its winner
    vectors = {"latency": list(held.widths)}
    ratio = macs(space, vectors["latency"]) / full
    # The same MACs as the latency winner (a hair above, so that the same vector is admissible);
    # another seed, or the sampler would propose the latency search's candidates again.
    same = min(1.0, ratio * 1.0001)
    vectors["macs"] = list(winner(name, tmp / f"{name}-macs", args, args.seed + 1, budget=same).widths)
    vectors["uniform-fill"] = list(winner(name, tmp / f"{name}-uni", args, args.seed, budget=same,
                                          method="uniform-fill").widths)
    timer = Timer(resolve_device(args.device), warmup=3, repeats=args.repeats, statistic=args.statistic)
    names = ["base", *vectors]
    runs = dict(zip(names, measure_rounds(table, model, space, [space.max_widths(), *vectors.values()],
                                          rounds=args.rounds, timer=timer)))
    keep = STATISTICS[args.statistic]
    base_ms = keep(runs["base"])
    rows = []
    for k, w in vectors.items():
        # The ratio as the search's hold judges it: the median over rounds of vector / base timed back to back.
        ratio = paired_ratio(runs[k], runs["base"])
        rows.append({"search": k, "widths": w, "macs_ratio": macs(space, w) / full,
                     "predicted_ms": float(predict(table, space, w)), "measured_ms": keep(runs[k]),
                     "latency_ratio": ratio, "within": ratio <= args.latency_budget})
    for r in rows:
        print(f"{name:<12} {r['search']:<13} MACs {r['macs_ratio']:.3f}  predicted {r['predicted_ms']:8.3f} ms  "
              f"measured {r['measured_ms']:8.3f} ms  latency ratio {r['latency_ratio']:.3f}  "
              f"{'within' if r['within'] else 'OVER'} {args.latency_budget}", flush=True)
    for h in hold:
        print(f"{name:<12} hold: limit {h['max_ms']:8.3f} ms  predicted {h['predicted_ms']:8.3f} ms  measured "
              f"{h['measured_ms']:8.3f} ms of {h['measured_max_ms']:8.3f} ms allowed", flush=True)
    return {"model": name, "base_ms": base_ms, "table": table.id, "rows": rows, "hold": hold}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet56", "mobilenetv2"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latency-budget", type=float, default=0.5)
    p.add_argument("--method", default="random")
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--grid", type=int, default=6)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--statistic", default="median", choices=["median", "min"],
                   help="what is kept of the timed runs (min: steadier on a machine shared with other jobs)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved measurements of every vector")
    p.add_argument("--table-rounds", type=int, default=1, help="times the latency table is measured over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="table cache (default: a temporary folder)")
    p.add_argument("--out", default=None, help="JSON file for every row")
    args = p.parse_args()
    header = start(args, latency_budget=args.latency_budget, method=args.method, trials=args.trials)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            try:
                results.append(bench(name, args, Path(tmp)))
            except BudgetError as exc:  # the budget is below the smallest network the space holds
                print(f"{name:<12} {one_line(exc)}", flush=True)
                results.append({"model": name, "unreachable": one_line(exc)})
            if args.out:  # after every model: a time limit keeps what finished
                write_json({**header, "results": results}, args.out)


if __name__ == "__main__":
    main()
