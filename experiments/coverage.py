"""Which CNNs autoprune can trace and prune: every torchvision classification CNN and a list
of timm CNNs, each in its own process with a time limit.

For each model: does it trace, how many free channel groups, how many conv layers are frozen
(their output channels not searchable), which submodules the tracer could not look into
(frozen leaves), are the analytic MACs exact (full and at uniform(0.5), against a hook count
that reads the pruned model's weight shapes), does the pruned model run and keep its output
shape, and what fraction of the MACs uniform(0.5) keeps. ``--train`` traces the models in
training mode (GoogLeNet and Inception then return namedtuples with auxiliary outputs).

    python experiments/coverage.py --size 64 --timeout 120 > coverage.md
    python experiments/coverage.py --models tv:resnet50 timm:efficientnet_b0
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time

import torch
import torch.nn as nn

from autoprune.cost import macs
from autoprune.models import create_model
from autoprune.space import SearchSpace
from autoprune.surgery import materialise

# Transformers and hybrids are out of scope for channel search.
TV_SKIP = ("vit_", "swin_", "maxvit_")
TIMM_MODELS = (
    "resnet50", "resnext50_32x4d", "seresnext50_32x4d", "efficientnet_b0", "mobilenetv3_large_100",
    "regnety_016", "regnetx_016", "cspdarknet53", "cspresnet50", "repvgg_a2", "densenet121",
    "inception_v3", "convnext_tiny", "ghostnet_100", "dla34", "dpn68", "hrnet_w18_small",
    "mixnet_s", "rexnet_100", "tf_efficientnet_b0",
)


def hook_macs(model: nn.Module, shape) -> int:
    """Conv/Linear MACs of one sample, from the output sizes and the weights' shapes."""
    total = []

    def hook(m, inp, out):
        per_out = m.weight[0].numel()  # in_channels / groups x kernel, or in_features
        total.append(out[0].numel() * per_out)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    # A model in training mode runs its auxiliary heads; its norms, on one sample, must not.
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape, device=next(model.parameters()).device))
    for h in handles:
        h.remove()
    for m in norms:
        m.train()
    return sum(total)


def _first(out) -> torch.Tensor:
    """The main output of a model that may return a namedtuple or a dict (training mode)."""
    if isinstance(out, dict):
        return next(iter(out.values()))
    return out[0] if isinstance(out, tuple) else out


def one(name: str, size: int, train: bool = False) -> dict:
    torch.set_num_threads(1)
    shape = (3, size, size)
    row = {"model": name}
    model = create_model(name).train(train)
    t = time.perf_counter()
    try:
        space = SearchSpace.from_model(model, shape)
    except Exception as exc:  # the row says why
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        return row
    row["trace_s"] = round(time.perf_counter() - t, 2)
    graph = space.graph
    # A conv is frozen when its output channels never shrink: neither free nor following a free group.
    narrowest = space.full_widths(space.min_widths())
    convs = [l for l in graph.layers if l.kind == "conv"]
    row["free"] = len(space)
    row["convs"] = len(convs)
    out_group = [l.in_layout[0] if l.depthwise else l.out_group for l in convs]
    row["frozen"] = sum(1 for g in out_group if narrowest[g] == graph.groups[g].width)
    row["leaves"] = [f"{f.path} ({f.kind})" for f in graph.frozen]
    full, half = space.max_widths(), space.uniform(0.5)
    meta = copy.deepcopy(model).to("meta")
    row["exact_full"] = hook_macs(meta, shape) == macs(space, full)
    pruned = materialise(meta, space, half, keep="first")
    row["exact_pruned"] = hook_macs(pruned, shape) == macs(space, half)
    x = torch.randn(1, *shape)
    with torch.no_grad():  # eval: the pruned model's BatchNorm uses its running statistics
        row["runs"] = _first(materialise(model, space, half).eval()(x)).shape == _first(model.eval()(x)).shape
    row["half"] = round(macs(space, half) / macs(space, full), 3)
    return row


def models(tv: bool, timm_too: bool) -> list[str]:
    names = []
    if tv:
        # Deferred on purpose: only the listing needs torchvision's registry.
        import torchvision.models as tvm

        names += [f"tv:{n}" for n in tvm.list_models(module=tvm) if not n.startswith(TV_SKIP)]
    if timm_too:
        names += [f"timm:{n}" for n in TIMM_MODELS]
    return names


def run_all(names: list[str], size: int, timeout: float, train: bool = False) -> list[dict]:
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--size", str(size)] + (["--train"] if train else [])
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"model": name, "error": done.stderr.strip()[-160:]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "error": f"over the {timeout:.0f} s limit"}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| model | traces | free groups | frozen convs | frozen leaves | MACs exact (full / pruned) | pruned runs | "
           "MACs at uniform(0.5) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['model']} | no: {r['error'].replace('|', '/')} | | | | | | |")
            continue
        exact = f"{'yes' if r['exact_full'] else 'NO'} / {'yes' if r['exact_pruned'] else 'NO'}"
        leaves = ", ".join(r.get("leaves", [])) or "-"
        out.append(f"| {r['model']} | yes | {r['free']} | {r['frozen']} of {r['convs']} | {leaves} | {exact} | "
                   f"{'yes' if r['runs'] else 'NO'} | {r['half']:.3f} |")
    traced = [r for r in rows if "error" not in r]
    out.append("")
    out.append(f"{len(traced)} of {len(rows)} trace; "
               f"{sum(r['exact_full'] and r['exact_pruned'] for r in traced)} exact; "
               f"{sum(r['runs'] for r in traced)} pruned models run; "
               f"{sum(r['half'] <= 0.35 for r in traced)} at or under 0.35 of the MACs at uniform(0.5)")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="input height and width")
    p.add_argument("--timeout", type=float, default=120, help="seconds per model")
    p.add_argument("--models", nargs="*", help="registry names (default: every tv: CNN and the timm list)")
    p.add_argument("--no-timm", action="store_true")
    p.add_argument("--no-tv", action="store_true")
    p.add_argument("--train", action="store_true", help="trace the models in training mode")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.size, args.train)))
        return
    names = args.models or models(not args.no_tv, not args.no_timm)
    print(table(run_all(names, args.size, args.timeout, args.train)))


if __name__ == "__main__":
    main()
