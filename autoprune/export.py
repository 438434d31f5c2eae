"""Export a model to TorchScript, ``torch.export`` (``.pt2``) or ONNX, verified before it is written.

Each export is made in memory, loaded back and run on the example input; the file is written
(atomically) only when every output matches the PyTorch model's within ``atol + rtol × max |output|``:
fp32 rounding grows with the size of the outputs, and an untrained deep ResNet's outputs reach
1e5 and more, where 1e-4 is below the rounding of one addition. ONNX needs the
optional ``onnx`` package (``pip install 'autoprune[onnx]'``); the export is run with
onnxruntime when that is installed, else with onnx's reference evaluator.

A model may return one tensor or any nest of tuples, lists, dicts, namedtuples and dataclasses
(``ModelOutput`` included) of tensors. Each tensor is named by its path in the nest
(:func:`flatten_outputs`: ``out``, ``aux``, ``0.1``, ``logits``); ``None`` entries are left
out. ONNX gets one named output per tensor; TorchScript and ``.pt2`` return a dict from those
names to the tensors. An ONNX file takes any batch size (its input's first axis, and that of
every output whose first axis is the batch, are dynamic; checked at a second batch size) unless
``static_batch`` is set.
"""

from __future__ import annotations

import dataclasses
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


SINGLE = "output"  # the name of a model's only output when it returns one tensor


def flatten_outputs(out, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """The tensors of a model's output ``out`` with their paths, in order; ExportError on a leaf
    that is not a tensor.

    A tensor alone is named ``output``; in a nest, dict keys, namedtuple and dataclass fields
    and sequence indices are joined by dots (``out``, ``aux``, ``0.1``, ``logits``). ``None``
    entries (a ``ModelOutput``'s unset fields) have no output.
    """
    if isinstance(out, torch.Tensor):
        return [(prefix or SINGLE, out)]
    if isinstance(out, dict):  # OrderedDict and transformers' ModelOutput too
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, tuple) and hasattr(out, "_fields"):  # namedtuple
        items = list(zip(out._fields, out))
    elif isinstance(out, (tuple, list)):
        items = [(str(i), v) for i, v in enumerate(out)]
    elif dataclasses.is_dataclass(out) and not isinstance(out, type):
        items = [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    else:
        where = f"output '{prefix}'" if prefix else "the model's output"
        raise ExportError(f"{where} is a {type(out).__name__}; export writes tensors, alone or in tuples, lists, "
                          "dicts, namedtuples and dataclasses")
    flat = []
    for key, value in items:
        if value is not None:
            flat += flatten_outputs(value, f"{prefix}.{key}" if prefix else key)
    names = [n for n, _ in flat]
    if len(set(names)) != len(names):
        raise ExportError(f"the model's outputs have clashing names {sorted({n for n in names if names.count(n) > 1})}")
    if not prefix and not flat:
        raise ExportError("the model's output holds no tensor; there is nothing to export")
    return flat


class _Flat(nn.Module):
    """``model`` returning its flattened outputs: a dict from names to tensors, or a tuple for ONNX."""

    def __init__(self, model: nn.Module, as_tuple: bool = False):
        super().__init__()
        self.model, self.as_tuple = model, as_tuple
        self.train(model.training)  # a new module is in training mode; the model's own mode must stay

    def forward(self, x):
        flat = flatten_outputs(self.model(x))
        return tuple(t for _, t in flat) if self.as_tuple else dict(flat)


def _torchscript(module: nn.Module, example: torch.Tensor, names, dynamic) -> tuple[bytes, callable]:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch calls TorchScript deprecated; tracing warns about Python values
        torch.jit.save(torch.jit.trace(module, example, strict=False), buf)
        loaded = torch.jit.load(io.BytesIO(buf.getvalue()), map_location="cpu")
    return buf.getvalue(), lambda x: flatten_outputs(loaded(x))


def _pt2(module: nn.Module, example: torch.Tensor, names, dynamic) -> tuple[bytes, callable]:
    program = torch.export.export(module, (example,))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    loaded = torch.export.load(io.BytesIO(buf.getvalue())).module()
    return buf.getvalue(), lambda x: flatten_outputs(loaded(x))


def onnx_outputs(data: bytes, example: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Every output of the ONNX model ``data`` (bytes) on ``example`` with its name, after
    ``onnx.checker``: run by onnxruntime when it is installed, else by onnx's reference evaluator."""
    # onnx and onnxruntime are optional extras: deferred on purpose, imported only for --format onnx.
    import onnx

    proto = onnx.load_from_string(data)
    onnx.checker.check_model(proto)
    feed = {proto.graph.input[0].name: example.numpy()}
    names = [o.name for o in proto.graph.output]
    try:
        # deferred on purpose: onnxruntime is optional; onnx's reference evaluator runs the model without it.
        import onnxruntime
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        values = ReferenceEvaluator(proto).run(None, feed)
    else:
        values = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feed)
    return [(n, torch.from_numpy(v)) for n, v in zip(names, values)]


def run_onnx(data: bytes, example: torch.Tensor) -> torch.Tensor:
    """The first output of the ONNX model ``data`` (bytes) on ``example`` (see :func:`onnx_outputs`)."""
    return onnx_outputs(data, example)[0][1]


def _onnx(module: nn.Module, example: torch.Tensor, names, dynamic) -> tuple[bytes, callable]:
    try:
        # deferred on purpose: onnx is an optional extra, needed for --format onnx only.
        import onnx  # noqa: F401
    except ImportError:
        raise ExportError("--format onnx needs the onnx package: pip install 'autoprune[onnx]'") from None
    # The exporter refuses names of digits alone ('0.1' is fine); placeholders are renamed after it.
    slots = [f"output_{i}" if len(names) > 1 else SINGLE for i in range(len(names))]
    kwargs = {"input_names": ["input"], "output_names": slots}
    if dynamic is not None:  # the input's batch axis, and each output's that follows it
        kwargs["dynamic_axes"] = {"input": {0: "batch"}, **{s: {0: "batch"} for s, n in zip(slots, names) if n in dynamic}}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript-based exporter needs no onnxscript
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter warns that it is legacy
        torch.onnx.export(module, (example,), buf, **kwargs)
    data = _rename_outputs(buf.getvalue(), dict(zip(slots, names)))
    return data, lambda x: onnx_outputs(data, x)


def _rename_outputs(data: bytes, names: dict[str, str]) -> bytes:
    """The ONNX model ``data`` with its outputs renamed (old -> new) wherever they are used."""
    # deferred on purpose: onnx is an optional extra, needed for --format onnx only.
    import onnx

    if all(old == new for old, new in names.items()):
        return data
    proto = onnx.load_from_string(data)
    graph = proto.graph
    taken = {v for node in graph.node for v in [*node.input, *node.output]} | {i.name for i in graph.initializer}
    clash = sorted(set(names.values()) & (taken | {i.name for i in graph.input}) - set(names))
    if clash:
        raise ExportError(f"output names {clash} are also names inside the ONNX graph; rename those outputs")
    for node in graph.node:
        node.input[:] = [names.get(v, v) for v in node.input]
        node.output[:] = [names.get(v, v) for v in node.output]
    for out in graph.output:
        out.name = names.get(out.name, out.name)
    return proto.SerializeToString()


_EXPORTERS = {"torchscript": _torchscript, "pt2": _pt2, "onnx": _onnx}


def _batch_axes(model: nn.Module, expected, other: torch.Tensor) -> list[str]:
    """The outputs whose first axis is the batch: the example's batch size there, and ``other``'s
    batch size at ``other``, the rest of the shape the same."""
    again = flatten_outputs(model(other))
    if [n for n, _ in again] != [n for n, _ in expected]:
        raise ExportError(f"the model's outputs change with the batch size ({len(expected)} outputs, {len(again)} at "
                          f"batch {len(other)}): no file takes every batch; export with --static-batch")
    return [name for (name, t), (_, t2) in zip(expected, again)
            if t.dim() and t2.dim() and (t.shape[0], t2.shape[0]) == (len(other) - 1, len(other))
            and t.shape[1:] == t2.shape[1:]]


def compare(fmt: str, got, expected, batch: str = "", atol: float = ATOL, rtol: float = RTOL) -> float:
    """The largest absolute difference between two lists of named outputs; ExportError when the
    names or shapes differ, or an output differs by more than ``atol + rtol`` × its largest value."""
    if [n for n, _ in got] != [n for n, _ in expected]:
        raise ExportError(f"{fmt} export gives the outputs {[n for n, _ in got]}, the model {[n for n, _ in expected]}")
    worst = 0.0
    for (name, g), (_, e) in zip(got, expected):
        which = f" output '{name}'" if len(expected) > 1 else ""
        if tuple(g.shape) != tuple(e.shape):
            raise ExportError(f"{fmt} export gives{which} of shape {tuple(g.shape)}{batch}, the model {tuple(e.shape)}")
        if not e.numel():
            continue
        diff = (g.float() - e.float()).abs().max().item()
        tol = atol + rtol * e.float().abs().max().item()
        if not diff <= tol:
            raise ExportError(f"{fmt} export does not reproduce the model{which}{batch}: max abs difference {diff:.3g} > "
                              f"{tol:.3g} ({atol:g} + {rtol:g} x the largest output)")
        worst = max(worst, diff)
    return worst


def export_model(model: nn.Module, fmt: str, path: str | Path, input_shape, *, batch_size: int = 1,
                 atol: float = ATOL, rtol: float = RTOL, seed: int = 0, static_batch: bool = False) -> float:
    """Export ``model`` (put in eval mode, on the CPU) as ``fmt`` to ``path``; return the max abs difference.

    The example input is ``batch_size`` seeded normal images of ``input_shape`` (C, H, W). The
    export is loaded back and compared with the model's outputs, output by output (see the module
    docstring for the structures it takes), before ``path`` is written; an ONNX file, unless
    ``static_batch``, takes any batch and is also compared at ``batch_size + 1``.
    :class:`ExportError` when it cannot be made or an output differs by more than ``atol + rtol``
    × its largest absolute value (``path`` is then left as it was).
    """
    if fmt not in _EXPORTERS:
        raise ExportError(f"unknown export format '{fmt}'; expected one of {', '.join(FORMATS)}")
    model = model.cpu().eval()
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(batch_size, *input_shape, generator=gen)
    other = torch.randn(batch_size + 1, *input_shape, generator=gen)
    dynamic = fmt == "onnx" and not static_batch
    with torch.no_grad():
        raw = model(example)
        expected = flatten_outputs(raw)
        axes = _batch_axes(model, expected, other) if dynamic else None
        module = model if isinstance(raw, torch.Tensor) else _Flat(model, as_tuple=fmt == "onnx")
        try:
            data, run = _EXPORTERS[fmt](module, example, [n for n, _ in expected], axes)
            checks = [(run(example), expected, "")]
        except ExportError:
            raise
        except Exception as exc:  # noqa: BLE001 — exporters raise anything; one line for the user
            raise ExportError(f"{fmt} export failed: {one_line(exc)[:300]}") from None
        if dynamic:
            try:
                checks.append((run(other), flatten_outputs(model(other)), f" at batch {len(other)}"))
            except Exception as exc:  # noqa: BLE001 — the runtime's error, as one line
                raise ExportError(f"the ONNX file does not run at batch {len(other)} ({one_line(exc)[:200]}); "
                                  "export with --static-batch") from None
    diff = compare(fmt, *checks[0], atol, rtol)
    if dynamic:
        try:
            diff = max(diff, compare(fmt, *checks[1], atol, rtol))
        except ExportError as exc:  # the trace kept the example's batch somewhere
            raise ExportError(f"{exc}; export with --static-batch") from None
    atomic_write(path, lambda f: f.write(data), binary=True)
    return diff
