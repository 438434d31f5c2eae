"""Export a model to TorchScript, ``torch.export`` (``.pt2``) or ONNX, verified before it is written.

Each export is made in memory, loaded back and run on the example input; the file is written
(atomically) only when its outputs match the PyTorch model's within ``atol + rtol × max |output|``:
fp32 rounding grows with the size of the outputs, and an untrained deep ResNet's outputs reach
1e5 and more, where 1e-4 is below the rounding of one addition. ONNX needs the
optional ``onnx`` package (``pip install 'autoprune[onnx]'``); the export is run with
onnxruntime when that is installed, else with onnx's reference evaluator.
"""

from __future__ import annotations

import inspect
import io
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from autoprune.errors import ExportError, one_line
from autoprune.files import atomic_write

FORMATS = ("torchscript", "pt2", "onnx")
ATOL = 1e-4
RTOL = 1e-5  # of the largest output; fp32 rounding measured at 2e-7 of it on ResNet-110


def _torchscript(model: nn.Module, example: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch calls TorchScript deprecated; tracing warns about Python values
        torch.jit.save(torch.jit.trace(model, example), buf)
        loaded = torch.jit.load(io.BytesIO(buf.getvalue()), map_location="cpu")
    return buf.getvalue(), loaded(example)


def _pt2(model: nn.Module, example: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    program = torch.export.export(model, (example,))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    loaded = torch.export.load(io.BytesIO(buf.getvalue()))
    return buf.getvalue(), loaded.module()(example)


def run_onnx(data: bytes, example: torch.Tensor) -> torch.Tensor:
    """The first output of the ONNX model ``data`` (bytes) on ``example``, after ``onnx.checker``:
    run by onnxruntime when it is installed, else by onnx's reference evaluator."""
    # onnx and onnxruntime are optional extras: deferred on purpose, imported only for --format onnx.
    import onnx

    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    feed = {proto.graph.input[0].name: example.numpy()}
    try:
        # deferred on purpose: onnxruntime is optional; onnx's reference evaluator runs the model without it.
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return torch.from_numpy(ReferenceEvaluator(proto).run(None, feed)[0])
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, feed)[0])


def _onnx(model: nn.Module, example: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    try:
        # deferred on purpose: onnx is an optional extra, needed for --format onnx only.
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("--format onnx needs the onnx package: pip install 'autoprune[onnx]'") from None
    kwargs = {"input_names": ["input"], "output_names": ["output"]}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript-based exporter needs no onnxscript
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that it is legacy
        torch.onnx.export(model, (example,), buf, **kwargs)
    return buf.getvalue(), run_onnx(buf.getvalue(), example)


_EXPORTERS = {"torchscript": _torchscript, "pt2": _pt2, "onnx": _onnx}


def export_model(model: nn.Module, fmt: str, path: str | Path, input_shape, *, batch_size: int = 1,
                 atol: float = ATOL, rtol: float = RTOL, seed: int = 0) -> float:
    """Export ``model`` (put in eval mode, on the CPU) as ``fmt`` to ``path``; return the max abs difference.

    The example input is ``batch_size`` seeded normal images of ``input_shape`` (C, H, W). The
    export is loaded back and compared with the model's outputs before ``path`` is written;
    :class:`ExportError` when it cannot be made or differs by more than ``atol + rtol`` × the
    largest absolute output (``path`` is then left as it was).
    """
    if fmt not in _EXPORTERS:
        raise ExportError(f"unknown export format '{fmt}'; expected one of {', '.join(FORMATS)}")
    model = model.cpu().eval()
    example = torch.randn(batch_size, *input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(example)
        try:
            data, got = _EXPORTERS[fmt](model, example)
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 — exporters raise anything; one line for the user
            raise ExportError(f"{fmt} export failed: {one_line(exc)[:300]}") from None
    if tuple(got.shape) != tuple(expected.shape):
        raise ExportError(f"{fmt} export gives outputs of shape {tuple(got.shape)}, the model {tuple(expected.shape)}")
    diff = (got.float() - expected.float()).abs().max().item()
    tol = atol + rtol * expected.float().abs().max().item()
    if not diff <= tol:
        raise ExportError(f"{fmt} export does not reproduce the model: max abs difference {diff:.3g} > {tol:.3g} "
                          f"({atol:g} + {rtol:g} x the largest output)")
    atomic_write(path, lambda f: f.write(data), binary=True)
    return diff
