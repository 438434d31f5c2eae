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

``--real`` sweeps another family instead: third-party models built as their users build them
(ultralytics YOLO from its packaged yamls, transformers from a default config, segmentation-models-
pytorch without encoder weights, torchvision detection and segmentation models without weights),
with columns of their own: traced as built, the searchable share of the MACs, uniform(0.5)'s MACs
ratio, exact MACs, whether the pruned model runs with every output's shape kept, whether its ONNX
export is verified, and whether it still works through its framework's own entry point. Where
NVIDIA ModelOpt is installed, the child also converts a fresh copy with ModelOpt's FastNAS, sets
every searchable hparam to its middle choice, exports the subnet and reports its MACs ratio and
whether it runs. ``--only`` runs some of the parts (autoprune, tp, modelopt) and shows their columns.

    python experiments/coverage.py --size 64 --timeout 240 > coverage.md
    python experiments/coverage.py --models tv:resnet50 timm:efficientnet_b0
    python experiments/coverage.py --real --size 64 --timeout 600 > coverage-real.md
    python experiments/coverage.py --real --size 64 --timeout 300 --only modelopt
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

from autoprune.cost import layer_macs, macs
from autoprune.export import export_model, flatten_outputs
from autoprune.keep import First
from autoprune.models import create_model
from autoprune.space import SearchSpace
from autoprune.surgery import materialise

HAVE_TP = importlib.util.find_spec("torch_pruning") is not None
HAVE_MODELOPT = importlib.util.find_spec("modelopt") is not None
# What one child runs: autoprune's columns and the comparisons' (--only, with --real).
PARTS = ("autoprune", "tp", "modelopt")

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


def hook_macs(model: nn.Module, shape, x=None) -> int:
    """Conv/Linear MACs of one sample, from the output sizes and the weights' shapes, every row of
    a layer's output counted (a detector's box head runs once per proposal); ``x`` is the input
    where it is not a zero tensor of ``shape`` (a detector's list of images, batch 1)."""
    total = []

    def hook(m, inp, out):
        if isinstance(m, nn.modules.conv._ConvTransposeNd):  # every input element to out / groups x kernel
            total.append(inp[0].numel() * m.weight[0].numel())
        else:
            total.append(out.numel() * m.weight[0].numel())  # in_channels / groups x kernel, or in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    # A model in training mode runs its auxiliary heads; its norms, on one sample, must not.
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    for m in norms:
        m.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape, device=next(model.parameters()).device) if x is None else x)
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


# Third-party models as their users build them: name -> (family, constructor, kwargs); a kwarg
# value "module:Class" is a config object built with its defaults. Nothing downloads weights.
NO_WEIGHTS = {"weights": None, "weights_backbone": None}
REAL = {
    "yolov8n": ("ultralytics", "ultralytics.nn.tasks:DetectionModel", {"cfg": "yolov8n.yaml", "verbose": False}),
    "yolo11n": ("ultralytics", "ultralytics.nn.tasks:DetectionModel", {"cfg": "yolo11n.yaml", "verbose": False}),
    "yolov8n-seg": ("ultralytics", "ultralytics.nn.tasks:SegmentationModel",
                    {"cfg": "yolov8n-seg.yaml", "verbose": False}),
    "yolov8n-pose": ("ultralytics", "ultralytics.nn.tasks:PoseModel", {"cfg": "yolov8n-pose.yaml", "verbose": False}),
    "yolov8n-obb": ("ultralytics", "ultralytics.nn.tasks:OBBModel", {"cfg": "yolov8n-obb.yaml", "verbose": False}),
    "yolov8n-cls": ("ultralytics", "ultralytics.nn.tasks:ClassificationModel",
                    {"cfg": "yolov8n-cls.yaml", "verbose": False}),
    "hf-resnet": ("transformers", "transformers:ResNetForImageClassification", {"config": "transformers:ResNetConfig"}),
    "hf-convnext": ("transformers", "transformers:ConvNextForImageClassification",
                    {"config": "transformers:ConvNextConfig"}),
    "smp-deeplabv3plus": ("smp", "segmentation_models_pytorch:DeepLabV3Plus", {"encoder_weights": None}),
    "smp-unet": ("smp", "segmentation_models_pytorch:Unet", {"encoder_weights": None}),
    "tv-fasterrcnn_mobilenet_v3_large_fpn": ("tv-detection", "torchvision.models.detection:"
                                             "fasterrcnn_mobilenet_v3_large_fpn", NO_WEIGHTS),
    "tv-retinanet_resnet50_fpn": ("tv-detection", "torchvision.models.detection:retinanet_resnet50_fpn", NO_WEIGHTS),
    "tv-ssd300_vgg16": ("tv-detection", "torchvision.models.detection:ssd300_vgg16", NO_WEIGHTS),
    "tv-fcos_resnet50_fpn": ("tv-detection", "torchvision.models.detection:fcos_resnet50_fpn", NO_WEIGHTS),
    "tv-deeplabv3_mobilenet_v3_large": ("tv-segmentation", "torchvision.models.segmentation:"
                                        "deeplabv3_mobilenet_v3_large", NO_WEIGHTS),
}


def _resolve(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_real(name: str) -> nn.Module:
    """The third-party model ``name`` of :data:`REAL`, freshly built without weights."""
    _, path, kwargs = REAL[name]
    kwargs = {k: _resolve(v)() if isinstance(v, str) and ":" in v else v for k, v in kwargs.items()}
    torch.manual_seed(0)
    return _resolve(path)(**kwargs)


def example(name: str, size: int, batch: int = 1):
    """The input a model of ``name`` takes: a list of images for torchvision's detectors, else a batch."""
    x = torch.rand(batch, 3, size, size)
    return list(x) if REAL.get(name, ("",))[0] == "tv-detection" else x


def shapes(out) -> list:
    """(path, shape) of every tensor in an output structure."""
    return [(n, tuple(t.shape)) for n, t in flatten_outputs(out)]


def searchable_share(space: SearchSpace) -> float:
    """The share of the full model's MACs in layers whose MACs shrink at the narrowest widths."""
    full = space.full_widths(space.max_widths())
    narrow = space.full_widths(space.min_widths())
    shrink = sum(layer_macs(l, full) for l in space.graph.layers if layer_macs(l, narrow) < layer_macs(l, full))
    return shrink / macs(space, space.max_widths())


def in_framework(name: str, model: nn.Module, full: nn.Module, size: int) -> bool:
    """The pruned ``model`` through its framework's own entry point, its results shaped as ``full``'s."""
    family = REAL[name][0]
    x = example(name, size, batch=2)
    if family == "ultralytics":  # the YOLO wrapper's predictor (AutoBackend, fuse, NMS) on one image
        import numpy as np
        from ultralytics import YOLO

        def predict(net):
            yolo = YOLO(REAL[name][2]["cfg"], verbose=False)
            yolo.model = net
            return yolo.predict(np.zeros((size, size, 3), np.uint8), imgsz=size, verbose=False, device="cpu")

        return len(predict(copy.deepcopy(model))) == len(predict(copy.deepcopy(full))) == 1
    if family == "transformers":  # a training step through the model's own loss
        out = model.train()(pixel_values=x, labels=torch.tensor([0, 1]))
        out.loss.backward()
        return tuple(out.logits.shape) == tuple(full.eval()(pixel_values=x).logits.shape)
    if family == "smp":
        return tuple(model.predict(x).shape) == tuple(full.predict(x).shape)
    if family == "tv-detection":  # a training step on one box per image, then detection
        targets = [{"boxes": torch.tensor([[2.0, 2.0, size / 2, size / 2]]), "labels": torch.tensor([1])}] * 2
        losses = model.train()(x, targets)
        sum(losses.values()).backward()
        return [sorted(d) for d in model.eval()(x)] == [sorted(d) for d in full.eval()(x)]
    out = model.train()(x)  # torchvision segmentation: the reference's loss over out (and aux)
    sum(nn.functional.cross_entropy(v, torch.zeros(2, size, size, dtype=torch.long)) for v in out.values()).backward()
    return shapes(model.eval()(x)) == shapes(full.eval()(x))


def real_row(name: str, size: int, emit=lambda row: None) -> dict:
    """The columns of one third-party model; an error after the trace is reported where it happened.
    ``emit`` is called with the row so far after each step (a child past its time limit keeps those)."""
    torch.set_num_threads(1)
    shape = (3, size, size)
    row = {"model": name, "size": size}
    model = build_real(name).eval()
    t = time.perf_counter()
    try:
        space = SearchSpace.from_model(model, shape)
    except Exception as exc:  # the row says why
        row["error"] = _line(exc)
        emit(row)
        return row
    row["trace_s"] = round(time.perf_counter() - t, 2)
    row["free"] = len(space)
    row["leaves"] = [f"{f.path} ({f.kind})" for f in space.graph.frozen if f.path]
    row["in_parts"] = any(not f.path for f in space.graph.frozen)  # its own forward untraceable
    full, half = space.max_widths(), space.uniform(0.5)
    row["share"] = round(searchable_share(space), 3)
    row["half"] = round(macs(space, half) / macs(space, full), 3)
    emit(row)
    # A detector's boxes vary in number, with the batch too: its outputs' names are compared, and
    # its ONNX file has the example's batch (torchvision exports detectors so).
    detector = REAL[name][0] == "tv-detection"
    steps = [("exact_full", lambda: hook_macs(model, shape) == macs(space, full)),
             ("exact_pruned", lambda: hook_macs(materialise(copy.deepcopy(model), space, half, keep=First()).eval(),
                                                shape) == macs(space, half)),
             ("runs", lambda: _runs(model, space, half, shape, detector)),
             ("onnx", lambda: _onnx_ok(materialise(model, space, half).eval(), shape, static_batch=detector)),
             ("framework", lambda: in_framework(name, materialise(model, space, half), copy.deepcopy(model), size))]
    for key, step in steps:
        try:
            row[key] = bool(step())
        except Exception as exc:  # this column says what broke; the next ones still run
            row[key] = _line(exc)
        emit(row)
    return row


def _runs(model: nn.Module, space: SearchSpace, widths, shape, detector: bool = False) -> bool:
    x = torch.randn(1, *shape)
    what = (lambda out: [n for n, _ in shapes(out)]) if detector else shapes
    with torch.no_grad():
        return what(materialise(model, space, widths).eval()(x)) == what(model.eval()(x))


def _onnx_ok(model: nn.Module, shape, static_batch: bool = False) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, "onnx", Path(tmp) / "m.onnx", shape, batch_size=1, static_batch=static_batch)
    return True


def real_tp_row(name: str, size: int) -> dict:
    """Torch-Pruning's L1 magnitude pruner at ratio 0.5 per layer (output layers left alone), and
    whether every output keeps its shape."""
    # Deferred on purpose: Torch-Pruning is an optional comparison, not a dependency of the sweep.
    import torch_pruning as tp

    torch.set_num_threads(1)
    model = build_real(name).eval()
    x = example(name, size)
    detector = isinstance(x, list)  # its boxes vary in number: the outputs' names are compared, not shapes
    x = (x,) if detector else x  # Torch-Pruning calls model(*inputs) with a tuple
    try:
        with torch.no_grad():
            before = shapes(model(*x) if detector else model(x))
        heads = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))][-1:]
        ops = tp.utils.count_ops_and_params(model, x)[0]
        tp.pruner.MagnitudePruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), global_pruning=False,
                                  pruning_ratio=0.5, ignored_layers=heads).step()
        with torch.no_grad():
            after = shapes(model.eval()(*x) if detector else model.eval()(x))
        if detector:
            before, after = [n for n, _ in before], [n for n, _ in after]
        ratio = tp.utils.count_ops_and_params(model, x)[0] / ops
    except Exception as exc:  # Torch-Pruning's failures are its own column's
        return {"tp_error": _line(exc)}
    return {"tp_runs": after == before, "tp_half": round(ratio, 3)}


def middle_choices(model: nn.Module) -> dict:
    """Every searchable hparam of a converted ModelOpt search space at the choice nearest half its
    largest (the larger of two equally near): ModelOpt's analogue of uniform(0.5)."""
    # Deferred on purpose: ModelOpt is an optional comparison, not a dependency of the sweep.
    import modelopt.torch.nas as mtn
    from modelopt.torch.opt.utils import get_hparam

    middle = {}
    for name in mtn.get_subnet_config(model, configurable=True):
        hp = get_hparam(model, name)
        middle[name] = min(hp.choices, key=lambda c: (abs(c - hp.max / 2), -c))
    return middle


def real_modelopt_row(name: str, size: int, emit=lambda row: None) -> dict:
    """NVIDIA ModelOpt's FastNAS as its documentation sets it up: the model converted with mode
    "fastnas" (its default rules), the searchable hparams counted, each set to its middle choice
    (:func:`middle_choices`), the subnet exported with ``mtn.export``, its Conv/Linear MACs against the
    original's (:func:`hook_macs` on the same example), and whether it runs with every output kept.
    ``emit`` is called with the columns so far after each step."""
    # Deferred on purpose: ModelOpt is an optional comparison, not a dependency of the sweep.
    import modelopt.torch.nas as mtn

    torch.set_num_threads(1)
    shape = (3, size, size)
    model = build_real(name).eval()
    original = copy.deepcopy(model)  # the model converted has run no forward, as in ModelOpt's examples
    x = example(name, size)
    detector = isinstance(x, list)  # its boxes vary in number: the outputs' names are compared, not shapes
    row = {}
    with torch.no_grad():
        before = shapes(original(x))
    full = hook_macs(original, shape, x)
    t = time.perf_counter()
    try:
        model = mtn.convert(model, mode="fastnas")  # the conversion traces symbolically: it takes no input
    except Exception as exc:  # ModelOpt's failures are its own column's
        row["mo_error"] = _line(exc)
        emit(row)
        try:  # some models convert once a forward has run (torchvision's RoI pooling sets itself up then)
            model = mtn.convert(copy.deepcopy(original), mode="fastnas")
        except Exception:  # the first error is the one to report
            return row
    row["mo_hparams"] = len(mtn.get_subnet_config(model, configurable=True))
    row["mo_convert_s"] = round(time.perf_counter() - t, 2)
    emit(row)
    try:
        mtn.select(model, middle_choices(model), strict=False)  # the others follow the searchable ones
        model = mtn.export(model).eval()
        row["mo_half"] = round(hook_macs(model, shape, x) / full, 3)
        emit(row)
        with torch.no_grad():
            after = shapes(model(x))
        if detector:
            before, after = [n for n, _ in before], [n for n, _ in after]
        row["mo_runs"] = after == before
    except Exception as exc:  # the column says what broke after the conversion
        row["mo_broke"] = _line(exc)
    emit(row)
    return row


def _cell(value) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "NO"
    return "" if value is None else f"NO: {value}"


def real_table(rows: list[dict], parts=None) -> str:
    """The Markdown table of :func:`real_row` rows and the comparisons' columns, with a summary line.
    ``parts`` (of :data:`PARTS`) picks the column groups; by default those some row has."""
    keys = {k for r in rows for k in r}
    parts = parts or tuple(part for part, has in zip(PARTS, ({"trace_s", "error"}, {"tp_runs", "tp_error"},
                                                              {"mo_hparams", "mo_error"})) if keys & has)
    head = ["model", "built as"]
    if "autoprune" in parts:
        head += ["traced as built", "searchable share of MACs", "MACs at uniform(0.5)", "MACs exact (full / pruned)",
                 "pruned runs, every output shape kept", "ONNX verified", "works in its framework"]
    if "tp" in parts:
        head += ["TP prunes and runs", "TP MACs ratio"]
    if "modelopt" in parts:
        head += ["ModelOpt converts (searchable hparams)", "ModelOpt MACs at the middle choice",
                 "ModelOpt export runs, every output shape kept"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        family, path, kwargs = REAL.get(r["model"], ("", "?", {}))
        args = ", ".join(f"{k}={v.rpartition(':')[2] + '()' if isinstance(v, str) and ':' in v else v}"
                         for k, v in kwargs.items() if k != "verbose")
        cells = [r["model"], f"`{path.rpartition(':')[2]}({args})`"]
        if "autoprune" in parts and "error" in r:
            cells += [f"no: {r['error']}"] + [""] * 6
        elif "autoprune" in parts:
            frozen = f" ({len(r['leaves'])} frozen leaves)" if r.get("leaves") else ""
            how = ", in parts" if r.get("in_parts") else ""
            cells += [f"yes{how}, {r['free']} groups{frozen}", f"{r['share']:.3f}", f"{r['half']:.3f}",
                      f"{_cell(r.get('exact_full'))} / {_cell(r.get('exact_pruned'))}",
                      _cell(r.get("runs", r.get("broke"))),
                      _cell(r.get("onnx")), _cell(r.get("framework"))]
        if "tp" in parts:
            cells += ([f"no: {r['tp_error']}", ""] if "tp_error" in r else
                      [_cell(r["tp_runs"]) + ("" if r["tp_runs"] else " (output shape)"), f"{r['tp_half']:.3f}"]
                      if "tp_runs" in r else ["", ""])
        if "modelopt" in parts:
            converts = (f"yes ({r['mo_hparams']})" if "mo_hparams" in r else "") if "mo_error" not in r else (
                f"no: {r['mo_error']}" + (f"; after one forward, yes ({r['mo_hparams']})" if "mo_hparams" in r else ""))
            cells += ([converts, "", ""] if "mo_hparams" not in r else
                      [converts,
                       f"{r['mo_half']:.3f}" if "mo_half" in r else "",
                       _cell(r.get("mo_runs", r.get("mo_broke"))) + (" (output shape)" if r.get("mo_runs") is False
                                                                     else "")])
        out.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    lines = []
    if "autoprune" in parts:
        traced = [r for r in rows if "error" not in r]
        lines.append(f"{len(traced)} of {len(rows)} trace as built; "
                     f"{sum(r.get('exact_full') is True and r.get('exact_pruned') is True for r in traced)} exact; "
                     f"{sum(r.get('runs') is True for r in traced)} keep every output shape pruned; "
                     f"{sum(r.get('onnx') is True for r in traced)} export to ONNX; "
                     f"{sum(r.get('framework') is True for r in traced)} work in their framework")
    if "tp" in parts:
        lines.append(f"Torch-Pruning: {sum(r.get('tp_runs') is True for r in rows)} of {len(rows)} prune and run")
    if "modelopt" in parts:
        later = sum("mo_hparams" in r and "mo_error" in r for r in rows)
        lines.append(f"ModelOpt: {sum('mo_hparams' in r and 'mo_error' not in r for r in rows)} of {len(rows)} convert"
                     + (f" ({later} more after one forward); " if later else "; ") +
                     f"{sum(r.get('mo_runs') is True for r in rows)} export at the middle choice and run with "
                     "every output shape kept")
    return "\n".join(out + ["", ". ".join(lines)])


def models(tv: bool, timm_too: bool) -> list[str]:
    names = []
    if tv:
        # Deferred on purpose: only the listing needs torchvision's registry.
        import torchvision.models as tvm

        names += [f"tv:{n}" for n in tvm.list_models(module=tvm) if not n.startswith(TV_SKIP)]
    if timm_too:
        names += [f"timm:{n}" for n in TIMM_MODELS]
    return names


def default_parts(real: bool = False) -> tuple[str, ...]:
    """autoprune, and each comparison that is installed (ModelOpt's only on the third-party models)."""
    return ("autoprune",) + (("tp",) if HAVE_TP else ()) + (("modelopt",) if real and HAVE_MODELOPT else ())


def run_all(names: list[str], size: int, timeout: float, train: bool = False, real: bool = False,
            parts=None) -> list[dict]:
    """Each model in a child process of its own, cut at ``timeout`` seconds; ``parts`` (of
    :data:`PARTS`, with ``real``) picks what the child runs."""
    parts = parts or default_parts(real)
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--size", str(max(size, MIN_SIZE.get(name, 0)))]
        cmd += (["--train"] if train else []) + (["--real", "--only", *parts] if real else [])
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            row = _merge(name, done.stdout, done.stderr, parts)
        except subprocess.TimeoutExpired as exc:  # keep what the child finished in time
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            row = _merge(name, out, f"over the {timeout:.0f} s limit", parts)
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _merge(name: str, stdout: str, stderr: str, parts=("autoprune",)) -> dict:
    """One row from the child's JSON lines (autoprune's, then each comparison's); a part of
    ``parts`` the child did not finish says why in its own column (the last line of ``stderr``)."""
    row = {"model": name}
    for line in stdout.splitlines():
        if line.startswith("{"):
            row.update(json.loads(line))
    why = stderr.strip().splitlines()[-1][:160] if stderr.strip() else "no output"
    if "autoprune" in parts and "trace_s" not in row and "error" not in row:
        row["error"] = why
    elif "autoprune" in parts and "trace_s" in row and "runs" not in row and "broke" not in row:
        row["broke"] = why
    if "tp" in parts and "tp_runs" not in row:
        row.setdefault("tp_error", why)
    if "modelopt" in parts and "mo_hparams" not in row:
        row.setdefault("mo_error", why)
    elif "modelopt" in parts and "mo_runs" not in row:
        row.setdefault("mo_broke", why)
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
    p.add_argument("--real", action="store_true", help="the third-party models of REAL, in a table of their own")
    p.add_argument("--only", nargs="+", choices=PARTS,
                   help="with --real, the parts to run (default: autoprune and each comparison installed)")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    parts = tuple(part for part in PARTS if part in (args.only or default_parts(args.real)))
    if args.only and not args.real:
        p.error("--only goes with --real")
    if args.one and args.real:
        def emit(row):  # one line per step, flushed, so a time limit keeps the steps before it
            print(json.dumps(row), flush=True)

        if "autoprune" in parts:
            real_row(args.one, args.size, emit=emit)
        if "tp" in parts:
            emit(real_tp_row(args.one, args.size))
        if "modelopt" in parts:
            real_modelopt_row(args.one, args.size, emit=emit)
        return
    if args.real:
        print(real_table(run_all(args.models or list(REAL), args.size, args.timeout, real=True, parts=parts), parts))
        return
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
