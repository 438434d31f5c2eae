"""``autoprune show``: a table of an architecture's widths, optionally a bar chart."""

from __future__ import annotations

from autoprune.arch import arch_space, build, frozen_line, load_arch
from autoprune.checks import check_count
from autoprune.commands.common import pyplot, save_figure
from autoprune.cost import human
from autoprune.profile import DTYPES, STATISTICS, Timer, measure_model, set_threads
from autoprune.runtime import resolve_device


def register(sub) -> None:
    p = sub.add_parser("show", help="table of an architecture JSON's widths")
    p.add_argument("arch", help="architecture JSON")
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw kept vs original widths per group")
    p.add_argument("--latency", action="store_true",
                   help="also measure the pruned model against the base on this device, beside the MACs ratio")
    p.add_argument("--device", default=None, help="with --latency: cuda or cpu (default: cuda when available)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64], metavar="B",
                   help="with --latency: batch sizes to time at (default 1 64)")
    p.add_argument("--dtype", default=None, choices=list(DTYPES),
                   help="with --latency: dtype (default bf16 on CUDA, fp32 on the CPU)")
    p.add_argument("--threads", type=int, default=None, help="with --latency: CPU threads (default torch's)")
    p.add_argument("--repeats", type=int, default=9, help="with --latency: timed runs (default 9)")
    p.add_argument("--statistic", default="median", choices=list(STATISTICS),
                   help="with --latency: what is kept of the timed runs, median (default) or min")
    p.set_defaults(func=run)


def run(args) -> int:
    arch = load_arch(args.arch)
    name_w = max([len(g["name"]) for g in arch["groups"]] + [5])
    print(f"{arch['model']['name']}  method={arch.get('method')}  seed={arch.get('seed')}  score={arch.get('score')}")
    print(f"{'group':<{name_w}}  {'orig':>6}  {'kept':>6}  {'ratio':>6}")
    for g in arch["groups"]:
        print(f"{g['name']:<{name_w}}  {g['width']:>6}  {g['kept']:>6}  {g['kept'] / g['width']:>6.2f}")
    m, p = arch["macs"], arch["params"]
    print(f"MACs   {human(m['pruned'])} / {human(m['base'])} = {m['pruned'] / m['base']:.1%}")
    print(f"params {human(p['pruned'])} / {human(p['base'])} = {p['pruned'] / p['base']:.1%}")
    for f in arch.get("frozen", []):
        print(f"frozen {frozen_line(f)}")
    if args.latency:
        report_latency(arch, args)
    if args.plot:
        plot_widths(arch, args.plot)
        print(f"wrote {args.plot}")
    return 0


def report_latency(arch: dict, args) -> None:
    """Base and pruned model timed end to end at each batch size, with the ratio beside the MACs ratio."""
    for b in args.batch_sizes:
        check_count(b, "--batch-sizes")
    set_threads(args.threads)
    device = resolve_device(args.device)
    dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    base, pruned = arch_space(arch)[0], build(arch)
    timer = Timer(device, repeats=args.repeats, statistic=args.statistic)
    macs_ratio = arch["macs"]["pruned"] / arch["macs"]["base"]
    shape = arch["input_shape"]
    print(f"latency on {device} ({dtype}), {args.statistic} of {args.repeats}:")
    print(f"{'batch':>6}  {'base ms':>10}  {'pruned ms':>10}  {'latency':>8}  {'MACs':>6}")
    for b in args.batch_sizes:
        ms = [measure_model(m, shape, device=device, batch_size=b, dtype=dtype, timer=timer) for m in (base, pruned)]
        print(f"{b:>6}  {ms[0]:>10.3f}  {ms[1]:>10.3f}  {ms[1] / ms[0]:>8.3f}  {macs_ratio:>6.3f}")


def plot_widths(arch: dict, path: str) -> None:
    plt = pyplot()
    groups = arch["groups"]
    x = range(len(groups))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(groups)), 4))
    ax.bar(x, [g["width"] for g in groups], color="#d0d0d0", label="original")
    ax.bar(x, [g["kept"] for g in groups], color="#3a6ea5", label="kept")
    ax.set_xticks(list(x), [g["name"] for g in groups], rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ratio = arch["macs"]["pruned"] / arch["macs"]["base"]
    ax.set_title(f"{arch['model']['name']}: {ratio:.1%} of base MACs ({arch.get('method')})")
    ax.legend()
    save_figure(plt, fig, path)
