"""``autoprune latency-table``: measure (or read from the cache) a model's latency table on
this device."""

from __future__ import annotations

import json

from autoprune.commands.common import add_model_args, model_and_space, pyplot, save_figure
from autoprune.latency import predict
from autoprune.profile import DTYPES, STATISTICS, TableConfig, latency_table, set_threads, staircase


def register(sub) -> None:
    p = sub.add_parser("latency-table", help="measure per-layer latency on this device (cached; used by "
                                             "search --latency-budget)")
    add_model_args(p)
    p.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when available)")
    add_table_args(p)
    p.add_argument("--force", action="store_true", help="measure again even when the cache holds the table")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--staircase", default=None, metavar="LAYER",
                   help="instead of the table, time one conv/linear layer at every --step-th output width")
    p.add_argument("--step", type=int, default=None, help="with --staircase: width step (default: about 64 widths)")
    p.add_argument("--plot", default=None, metavar="PNG", help="with --staircase: draw latency against width")
    p.set_defaults(func=run)


def add_table_args(p, prefix: str = "") -> None:
    """The measurement settings, shared with ``search`` (there prefixed ``latency-``)."""
    p.add_argument(f"--{prefix}batch-size", type=int, default=1, help="batch size to time at (default 1)")
    p.add_argument(f"--{prefix}dtype", default=None, choices=list(DTYPES),
                   help="dtype to time in (default bf16 on CUDA, fp32 on the CPU)")
    p.add_argument(f"--{prefix}channels-last", action="store_true", help="time in channels-last memory format")
    p.add_argument(f"--{prefix}grid", type=int, default=6,
                   help="widths timed per axis of a layer; more allowed widths are interpolated (default 6)")
    p.add_argument(f"--{prefix}repeats", type=int, default=9, help="timed runs per entry (default 9)")
    p.add_argument(f"--{prefix}statistic", default="median", choices=list(STATISTICS),
                   help="what is kept of the timed runs: median (default) or min, the steadier on a machine "
                        "shared with other jobs")
    p.add_argument(f"--{prefix}rounds", type=int, default=1,
                   help="measure the whole table this many times over, keeping the statistic of all runs of an "
                        "entry (default 1; 3 with min rides out a busy machine's slow seconds)")
    p.add_argument(f"--{prefix}threads", type=int, default=None,
                   help="CPU threads to time with (default torch's; 1 gives stable numbers on a busy machine)")
    p.add_argument(f"--{prefix}cache-dir", default=None,
                   help="where tables are cached (default $AUTOPRUNE_CACHE/latency or ~/.cache/autoprune/latency)")


def run(args) -> int:
    _, _, model, space = model_and_space(args)
    set_threads(args.threads)
    config = TableConfig(device=args.device, batch_size=args.batch_size, dtype=args.dtype,
                         channels_last=args.channels_last, grid=args.grid, repeats=args.repeats,
                         statistic=args.statistic, rounds=args.rounds, cache_dir=args.cache_dir, force=args.force)
    if args.staircase:
        return run_staircase(args, model, space, config)
    table, path = latency_table(model, space, config, progress=not (args.json or args.no_progress))
    k = table.key
    row = {"model": args.model, "table": table.id, "file": str(path), "device": k["device"],
           "device_name": k["device_name"], "dtype": k["dtype"], "batch_size": k["batch_size"],
           "model_ms": table.model_ms, "overhead_ms": table.overhead_ms, "scale": table.scale,
           "knots": [list(kn) for kn in table.knots],
           "predicted_full_ms": predict(table, space, space.max_widths()),
           "predicted_min_ms": predict(table, space, space.min_widths()),
           "layers": len(table.entries), "measurements": sum(len(e.ms) * len(e.ms[0]) for e in table.entries)}
    if args.json:
        print(json.dumps(row))
        return 0
    print(f"table       {table.id} ({path})")
    print(f"device      {k['device']} ({k['device_name']}), {k['dtype']}, batch {k['batch_size']}"
          + (", channels-last" if k["channels_last"] else ""))
    print(f"model       {args.model}: {table.model_ms:.3f} ms measured; a model takes {table.overhead_ms:.3f} ms + "
          f"{table.scale:.3f} x its layers' times"
          + (f", bent through a middle model ({len(table.knots)} knots)" if len(table.knots) > 2 else ""))
    print(f"smallest    {row['predicted_min_ms']:.3f} ms predicted "
          f"({row['predicted_min_ms'] / table.model_ms:.3f} of the full model)")
    print(f"entries     {row['layers']} layers, {row['measurements']} timings")
    return 0


def run_staircase(args, model, space, config: TableConfig) -> int:
    rows = staircase(model, space, args.staircase, config, step=args.step,
                     progress=not (args.json or args.no_progress))
    if args.json:
        print(json.dumps({"model": args.model, "layer": args.staircase, "batch_size": config.batch_size,
                          "widths": [w for w, _ in rows], "ms": [ms for _, ms in rows]}))
    else:
        print(f"{'width':>6}  {'ms':>10}")
        for w, ms in rows:
            print(f"{w:>6}  {ms:>10.4f}")
    if args.plot:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.step([w for w, _ in rows], [ms for _, ms in rows], where="post")
        ax.set_xlabel("output channels")
        ax.set_ylabel("ms")
        ax.set_title(f"{args.model} {args.staircase}, batch {config.batch_size}")
        save_figure(plt, fig, args.plot)
        if not args.json:
            print(f"wrote {args.plot}")
    return 0
