"""Which CNNs autoprune can trace and prune: every torchvision classification CNN and a list
of timm CNNs, each in its own process with a time limit.

For each model: does it trace, how many free channel groups, how many conv layers are frozen
(their output channels not searchable), which submodules the tracer could not look into
(frozen leaves), are the analytic MACs exact (full and at uniform(0.5), against a hook count
that reads the pruned model's weight shapes), does the pruned model run and keep its output
shape, and what fraction of the MACs uniform(0.5) keeps. ``--train`` traces the models in
training mode (GoogLeNet and Inception then return namedtuples with auxiliary outputs).

A model that traces only by freezing submodules counts as traced when at least half of all its
conv layers (those inside the frozen leaves included) keep a searchable output width.

Where Torch-Pruning is installed, the same child process also prunes a fresh copy of the model
with its ``MagnitudePruner`` (L1, per layer, ratio 0.5, the classifier left alone) and reports
whether the result runs and keeps its output shape, and its MACs ratio, for comparison.

    python experiments/coverage.py --size 64 --timeout 240 > coverage.md
    python experiments/coverage.py --models tv:resnet50 timm:efficientnet_b0
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import subprocess
import sys
import time

import torch
import torch.nn as nn

from autoprune.cost import macs
from autoprune.keep import First
from autoprune.models import create_model
from autoprune.space import SearchSpace
from autoprune.surgery import materialise

HAVE_TP = importlib.util.find_spec("torch_pruning") is not None

# Transformers and hybrids are out of scope for channel search.
TV_SKIP = ("vit_", "swin_", "maxvit_")
TIMM_MODELS = (
    "resnet50", "resnext50_32x4d", "seresnext50_32x4d", "efficientnet_b0", "mobilenetv3_large_100",
    "regnety_016", "regnetx_016", "cspdarknet53", "cspresnet50", "repvgg_a2", "densenet121",
    "inception_v3", "convnext_tiny", "ghostnet_100", "dla34", "dpn68", "hrnet_w18_small",
    "mixnet_s", "rexnet_100", "tf_efficientnet_b0",
)
# Inception v3's stride-2 stem and reductions leave no pixel below this input size.
MIN_SIZE = {"tv:inception_v3": 75, "timm:inception_v3": 75}


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
    """The autoprune columns of one model; an error after the trace is reported in ``broke``."""
    torch.set_num_threads(1)
    shape = (3, size, size)
    row = {"model": name, "size": size}
    model = create_model(name).train(train)
    t = time.perf_counter()
    try:
        space = SearchSpace.from_model(model, shape)
    except Exception as exc:  # the row says why
        row["error"] = _line(exc)
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
    # The convs inside frozen leaves are not in the graph; all of them count against the model.
    row["all_convs"] = len(convs) + sum(sum(isinstance(m, nn.modules.conv._ConvNd) for m in
                                            model.get_submodule(f.path).modules()) for f in graph.frozen)
    try:
        full, half = space.max_widths(), space.uniform(0.5)
        meta = copy.deepcopy(model).to("meta")
        row["exact_full"] = hook_macs(meta, shape) == macs(space, full)
        pruned = materialise(meta, space, half, keep=First())
        row["exact_pruned"] = hook_macs(pruned, shape) == macs(space, half)
        x = torch.randn(1, *shape)
        with torch.no_grad():  # eval: the pruned model's BatchNorm uses its running statistics
            row["runs"] = _first(materialise(model, space, half).eval()(x)).shape == _first(model.eval()(x)).shape
        row["half"] = round(macs(space, half) / macs(space, full), 3)
    except Exception as exc:  # the row says where
        row["broke"] = _line(exc)
    return row


def _line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines() or [""]
    return f"{type(exc).__name__}: {lines[0][:160]}"


def classifier(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """The layers that produce the class scores: every Linear or conv with ``num_classes`` outputs
    (auxiliary heads included), else the last Linear."""
    heads = [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
             or (isinstance(m, nn.modules.conv._ConvNd) and m.out_channels == num_classes)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return heads or linears[-1:]


def tp_row(name: str, size: int, train: bool = False) -> dict:
    """Torch-Pruning's L1 magnitude pruner at ratio 0.5 per layer, on a fresh copy of the model."""
    # Deferred on purpose: Torch-Pruning is an optional comparison, not a dependency of the sweep.
    import torch_pruning as tp

    torch.set_num_threads(1)
    model = create_model(name).train(train)
    x = torch.randn(1, 3, size, size)
    try:
        with torch.no_grad():
            before = _first(model.eval()(x)).shape
        model.train(train)
        ops = tp.utils.count_ops_and_params(model, x)[0]
        pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                           global_pruning=False, pruning_ratio=0.5,
                                           ignored_layers=classifier(model, before[-1]))
        pruner.step()
        with torch.no_grad():
            after = _first(model.eval()(x)).shape
        model.train(train)
        ratio = tp.utils.count_ops_and_params(model, x)[0] / ops
    except Exception as exc:  # Torch-Pruning's failures are its own column's
        return {"tp_error": _line(exc)}
    return {"tp_runs": after == before, "tp_half": round(ratio, 3)}


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
        cmd = [sys.executable, __file__, "--one", name, "--size", str(max(size, MIN_SIZE.get(name, 0)))]
        cmd += ["--train"] if train else []
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            row = _merge(name, done.stdout, done.stderr)
        except subprocess.TimeoutExpired as exc:  # keep what the child finished in time
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            row = _merge(name, out, f"over the {timeout:.0f} s limit")
            if "tp_runs" not in row:
                row.setdefault("tp_error", f"over the {timeout:.0f} s limit")
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _merge(name: str, stdout: str, stderr: str) -> dict:
    """One row from the child's JSON lines (autoprune's, then Torch-Pruning's)."""
    row = {"model": name}
    for line in stdout.splitlines():
        if line.startswith("{"):
            row.update(json.loads(line))
    if "trace_s" not in row and "error" not in row:
        row["error"] = stderr.strip().splitlines()[-1][:160] if stderr.strip() else "no output"
    elif "trace_s" in row and "runs" not in row and "broke" not in row:
        row["broke"] = stderr.strip().splitlines()[-1][:160] if stderr.strip() else "no output"
    return row


def counted(r: dict) -> bool:
    """Traced, and where submodules were frozen, at least half of all conv layers still searchable."""
    return "error" not in r and (not r["leaves"] or 2 * (r["convs"] - r["frozen"]) >= r["all_convs"])


def table(rows: list[dict]) -> str:
    tp_on = any("tp_runs" in r or "tp_error" in r for r in rows)
    head = ["model", "traces", "free groups", "frozen convs", "frozen leaves", "searchable convs",
            "MACs exact (full / pruned)", "pruned runs", "MACs at uniform(0.5)"]
    head += ["TP prunes and runs", "TP MACs ratio"] if tp_on else []
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        size = f" ({r['size']} px)" if "size" in r and r["size"] != rows[0].get("size") else ""
        cells = [r["model"] + size]
        if "error" in r:
            cells += [f"no: {r['error']}"] + [""] * 7
        else:
            ok = "runs" in r
            exact = f"{'yes' if r['exact_full'] else 'NO'} / {'yes' if r['exact_pruned'] else 'NO'}" if ok else ""
            searchable = r["convs"] - r["frozen"]
            cells += ["yes" if counted(r) else "yes, but under half searchable", str(r["free"]),
                      f"{r['frozen']} of {r['convs']}", ", ".join(r["leaves"]) or "-",
                      f"{searchable} of {r['all_convs']}", exact,
                      ("yes" if r["runs"] else "NO") if ok else f"NO: {r['broke']}",
                      f"{r['half']:.3f}" if ok else ""]
        if tp_on:
            cells += ([f"no: {r['tp_error']}", ""] if "tp_error" in r else
                      ["yes" if r["tp_runs"] else "NO (output shape)", f"{r['tp_half']:.3f}"]) if (
                "tp_error" in r or "tp_runs" in r) else ["", ""]
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    out += ["", counts(rows, tp_on)]
    return "\n".join(out)


def counts(rows: list[dict], tp_on: bool) -> str:
    traced = [r for r in rows if "error" not in r]
    done = [r for r in traced if "runs" in r]
    half_frozen = len(traced) - sum(map(counted, rows))
    line = (f"{sum(map(counted, rows))} of {len(rows)} trace"
            + (f" ({half_frozen} more with under half of their convs searchable); " if half_frozen else "; ")
            + f"{len(done)} of those run the checks without an exception; "
            f"{sum(r['exact_full'] and r['exact_pruned'] for r in done)} exact; "
            f"{sum(r['runs'] for r in done)} pruned models run; "
            f"{sum(r['half'] <= 0.35 for r in done)} at or under 0.35 of the MACs at uniform(0.5)")
    if tp_on:
        tp = [r for r in rows if r.get("tp_runs")]
        line += (f". Torch-Pruning: {len(tp)} of {len(rows)} prune and run; "
                 f"{sum(r['tp_half'] <= 0.35 for r in tp)} at or under 0.35 of the MACs")
    return line


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
        # One line per part, each flushed, so a time limit in the second keeps the first.
        print(json.dumps(one(args.one, args.size, args.train)), flush=True)
        if HAVE_TP:
            print(json.dumps(tp_row(args.one, args.size, args.train)), flush=True)
        return
    names = args.models or models(not args.no_tv, not args.no_timm)
    print(table(run_all(names, args.size, args.timeout, args.train)))


if __name__ == "__main__":
    main()
