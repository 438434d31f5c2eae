"""The model as torch.fx sees it: every module with a rule, and every frozen leaf, one step.

Tracing uses :mod:`torch.fx`; one shape propagation gives every layer's spatial size, which
is all the cost model needs, and measures the MACs of the frozen leaves on the way. A
submodule whose forward fx cannot follow (control flow on a tensor's value) is asked to be
frozen (:class:`NeedsLeaf`), the smallest one that fails.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from autoprune.errors import TraceError, one_line
from autoprune.graph.nodes import failed_line
from autoprune.graph.result import ChannelGraph
from autoprune.graph.tracers import ExampleTracer, LeafTracer, attributes_kept

# Layers whose MACs are counted (the cost model's convention), inside a frozen leaf.
MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
              nn.Linear)


class NeedsLeaf(Exception):
    """Raised inside a trace: the submodule at ``path`` must become a frozen leaf."""

    def __init__(self, path: str, reason: str):
        super().__init__(path)
        self.path, self.reason = path, reason


def fx_graph_module(model: nn.Module, graph: ChannelGraph | None = None) -> fx.GraphModule:
    """``model`` traced by torch.fx as :func:`~autoprune.graph.trace` sees it, without shapes:
    every module with a rule, and every frozen leaf of ``graph``, is one ``call_module`` node
    named by its path. TraceError for a model traced in parts (its own forward untraceable)."""
    leaves = [f.path for f in graph.frozen] if graph is not None else []
    if "" in leaves:  # see autoprune.graph.parts
        raise TraceError(f"{type(model).__name__} was traced in parts, since its own forward cannot be traced; "
                         "this needs one graph of the whole model")
    tracer, traced = first_trace(model, leaves, graph.input_shape if graph is not None else None)
    return graph_module(tracer, traced, type(model).__name__)


def graph_module(tracer: fx.Tracer, graph: fx.Graph, name: str) -> fx.GraphModule:
    """The GraphModule of ``graph`` over the model ``tracer`` traced (what fx.symbolic_trace
    returns), holding the constants the trace made, which the model itself does not keep."""
    root, constants = tracer.root, getattr(tracer, "constants", {})
    vars(root).update(constants)
    try:
        return fx.GraphModule(root, graph, name)
    finally:
        for k in constants:
            vars(root).pop(k, None)


def first_trace(model: nn.Module, leaves: Iterable[str], input_shape: tuple[int, ...] | None,
                stack_traces: bool = False):
    """(tracer, fx graph) of ``model``: traced with no shape known; else, where that fails,
    with the input's shape known (see PartsProxy); else with every node run on examples of
    the input (see ExampleTracer). The last attempt's exception if all fail. The model's
    attributes are left as they were (see attributes_kept).
    ``stack_traces``: every node records the model code that made it (slower; for errors)."""
    leaves = tuple(leaves)
    tracers = [LeafTracer(leaves)]
    if input_shape is not None:
        param = next(model.parameters(), None)
        tracers += [LeafTracer(leaves, input_shape),
                    ExampleTracer(leaves, input_shape, param.device if param is not None else None)]
    for tracer in tracers:
        tracer.record_stack_traces = stack_traces
    for tracer in tracers[:-1]:
        try:
            with attributes_kept(model, tracer):
                return tracer, tracer.trace(model)
        except Exception:  # noqa: BLE001 — fx raises many kinds; the next attempt knows more
            continue
    tracer = tracers[-1]
    try:
        with attributes_kept(model, tracer):
            return tracer, tracer.trace(model)
    except Exception as exc:
        exc.autoprune_tracer = tracer  # whose failed_module tells where it failed
        raise


def shaped_graph_module(model: nn.Module, input_shape: tuple[int, ...],
                        leaves: dict[str, str]) -> tuple[fx.GraphModule, dict[str, int]]:
    """The fx graph of ``model`` with the paths in ``leaves`` as leaves, every node's output
    shape recorded by one forward pass on an input of ``input_shape``, which also measures
    the MACs of every frozen leaf the graph calls (path -> MACs per sample).
    NeedsLeaf for a submodule fx cannot trace; TraceError when the model itself fails."""
    name = type(model).__name__
    try:
        tracer, graph = first_trace(model, leaves, input_shape)
        gm = graph_module(tracer, graph, name)
    except Exception as exc:  # fx raises many kinds; all mean the same to the user
        tracer = getattr(exc, "autoprune_tracer", None)
        path = tracer.failed_module(exc) if tracer is not None else None
        if path is not None and path not in leaves:
            raise NeedsLeaf(path, f"torch.fx cannot trace it: {one_line(exc)}") from None
        line = failed_line(exc)
        at = f" at {line}" if line else ""
        raise TraceError(f"cannot trace {name} with torch.fx{at}: {one_line(exc)[:300]}; make that code "
                         "depend on no tensor's value, or move it into a submodule, which the tracer then "
                         "freezes") from None
    called = [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target in leaves]
    leaf_macs = dict.fromkeys(called, 0)
    hooks = [m.register_forward_hook(_count_macs(leaf_macs, path)) for path in leaf_macs
             for m in gm.get_submodule(path).modules() if isinstance(m, MAC_LAYERS)]
    was_training = gm.training
    gm.eval()
    try:
        # ShapeProp prints the failing node's traceback itself before re-raising: keep it
        # off the user's terminal, whose error is the one line below.
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            param = next(model.parameters(), None)
            device = param.device if param is not None else "cpu"
            ShapeProp(gm).propagate(torch.zeros(1, *input_shape, device=device))
    except Exception as exc:
        cause = exc.__cause__ or exc  # the layer's own error, not ShapeProp's node dump
        raise TraceError(f"a forward pass of {name} on input shape {input_shape} failed: "
                         f"{one_line(cause)[:300]}") from None
    finally:
        gm.train(was_training)
        for h in hooks:
            h.remove()
    return gm, leaf_macs


def _count_macs(leaf_macs: dict[str, int], path: str):
    """A forward hook adding a Conv/Linear layer's MACs to the leaf at ``path``."""
    def hook(m, args, out):
        leaf_macs[path] += mac_count(m, out)
    return hook


def mac_count(m: nn.Module, out: torch.Tensor) -> int:
    """The MACs of one call of a Conv/Linear layer ``m`` that returned ``out``: output elements
    x multiply-accumulates per element (in_channels / groups x kernel for a conv, in_features
    for a linear layer), as thop counts these layers; a transposed conv scatters each input
    element to out_channels / groups x kernel outputs."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return scattered_positions(m, out) * m.in_channels * m.out_channels // m.groups * math.prod(m.kernel_size)
    per = m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * math.prod(m.kernel_size)
    return out.numel() * per


def scattered_positions(m: nn.Module, out: torch.Tensor) -> int:
    """The input positions (all rows) from which the transposed conv ``m`` made ``out``: each
    output size inverted, exactly, as the added ``output_padding`` is below the stride."""
    spatial = out.shape[out.dim() - len(m.kernel_size):]
    sizes = [(o + 2 * p - d * (k - 1) - 1) // s + 1
             for o, p, d, k, s in zip(spatial, m.padding, m.dilation, m.kernel_size, m.stride)]
    return out.numel() // (m.out_channels * math.prod(spatial)) * math.prod(sizes)


def called_modules(graph: fx.Graph) -> set[str]:
    """The paths of the modules an fx graph calls."""
    return {n.target for n in graph.nodes if n.op == "call_module"}


def same_in_both_modes(model: nn.Module, gm: fx.GraphModule, leaves: Iterable[str],
                       input_shape: tuple[int, ...] | None = None) -> bool:
    """Whether fx traces ``model``'s forward alike in train and in eval mode (``F.dropout(x,
    training=self.training)`` or ``if self.training:`` make the two differ)."""
    was = model.training
    try:
        model.train(not was)
        _, other = first_trace(model, leaves, input_shape)
    except Exception:  # noqa: BLE001 — fx raises many kinds; untraceable in the other mode is "not alike"
        return False
    finally:
        model.train(was)
    return other.python_code("self").src == gm.graph.python_code("self").src
