"""``autoprune export``: a trained (pruned) model as TorchScript, torch.export (.pt2) or ONNX."""

from __future__ import annotations

import json
from pathlib import Path

from autoprune.arch import build, load_arch
from autoprune.checkpoint import load_checkpoint, model_from_checkpoint
from autoprune.commands._training import positive_int
from autoprune.errors import CheckpointError, OutputError
from autoprune.export import FORMATS, export_model
from autoprune.files import check_out_dir


def register(sub) -> None:
    p = sub.add_parser("export", help="export a checkpoint as TorchScript, torch.export (.pt2) or ONNX, verified")
    p.add_argument("arch", metavar="ARCH.json", nargs="?", default=None,
                   help="architecture file (default: the model the checkpoint records)")
    p.add_argument("--checkpoint", required=True, help="weights: model.pt or checkpoint.pt of pretrain or retrain")
    p.add_argument("--format", required=True, choices=FORMATS, help="torchscript (jit.trace), pt2 (torch.export) or onnx")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--batch-size", type=positive_int, default=1, help="batch of the example input (default %(default)s)")
    p.add_argument("--static-batch", action="store_true",
                   help="an ONNX file of the --batch-size batch only (default: any batch size)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def check_out_file(path: str) -> Path:
    """``path`` as a Path if a file can be written there; OutputError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"--out '{path}' is a folder; give a file name")
    probe = path.parent
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"--out '{path}' lies under the file '{probe}'")
    check_out_dir(path.parent, "--out folder")
    return path


def load_model(arch_path, checkpoint):
    """The model with the checkpoint's weights and its input shape (C, H, W)."""
    if arch_path is None:
        model, ckpt = model_from_checkpoint(checkpoint)
        shape = ckpt.get("input_shape") or (ckpt.get("arch") or {}).get("input_shape")
        if not shape:
            raise CheckpointError(f"checkpoint '{checkpoint}' does not record its input shape; give the ARCH.json")
        return model, list(shape)
    arch = load_arch(arch_path)
    model = build(arch)
    load_checkpoint(checkpoint, model)
    return model, list(arch["input_shape"])


def run(args) -> int:
    out = check_out_file(args.out)
    model, shape = load_model(args.arch, args.checkpoint)
    diff = export_model(model, args.format, out, shape, batch_size=args.batch_size, static_batch=args.static_batch)
    dynamic = args.format == "onnx" and not args.static_batch
    row = {"format": args.format, "out": str(out), "checkpoint": str(args.checkpoint), "arch": args.arch,
           "input_shape": [args.batch_size, *shape], "dynamic_batch": dynamic, "max_abs_diff": diff}
    if args.json:
        print(json.dumps(row))
    else:
        batch = ", any batch size" if dynamic else ""
        print(f"wrote {out} ({args.format}, input {tuple(row['input_shape'])}{batch}); "
              f"max abs difference to PyTorch {diff:.3g}")
    return 0
