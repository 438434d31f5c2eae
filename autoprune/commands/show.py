"""``autoprune show``: a table of an architecture's widths, optionally a bar chart."""

from __future__ import annotations

from autoprune.arch import load_arch
from autoprune.cost import human
from autoprune.errors import AutopruneError
from autoprune.files import atomic_write


def register(sub) -> None:
    p = sub.add_parser("show", help="table of an architecture JSON's widths")
    p.add_argument("arch", help="architecture JSON")
    p.add_argument("--plot", default=None, metavar="PNG", help="also draw kept vs original widths per group")
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
        print(f"frozen {f['path']} ({f['class']}): {f['reason']}")
    if args.plot:
        plot_widths(arch, args.plot)
        print(f"wrote {args.plot}")
    return 0


def plot_widths(arch: dict, path: str) -> None:
    try:  # deferred on purpose: matplotlib is an optional extra, needed for --plot only
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AutopruneError("--plot needs matplotlib: pip install 'autoprune[plot]'") from None
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
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), binary=True)
    finally:
        plt.close(fig)
