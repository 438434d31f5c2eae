"""The model as torch.fx sees it: every module with a rule, and every frozen leaf, one step.

Tracing uses :mod:`torch.fx`; one shape propagation gives every layer's spatial size, which
is all the cost model needs, and measures the MACs of the frozen leaves on the way. A
submodule whose forward fx cannot follow (control flow on a tensor's value) is asked to be
frozen (:class:`NeedsLeaf`), the smallest one that fails.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import math
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from autoprune.errors import TraceError, one_line
from autoprune.graph.nodes import failed_line
from autoprune.graph.registry import module_rule
from autoprune.graph.result import ChannelGraph

# Layers whose MACs are counted (the cost model's convention), inside a frozen leaf.
MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
              nn.Linear)


class NeedsLeaf(Exception):
    """Raised inside a trace: the submodule at ``path`` must become a frozen leaf."""

    def __init__(self, path: str, reason: str):
        super().__init__(path)
        self.path, self.reason = path, reason


class LeafTracer(fx.Tracer):
    """fx's tracer, except that every module with a rule is a leaf: its rule, not its code,
    says how channels pass through it. That covers subclasses of built-in layers outside
    torch.nn (timm's BatchNormAct2d, Conv2dSame), whose forward fx could not follow.

    The modules at the paths in ``leaves`` are leaves too; ``failure`` records the innermost
    module whose forward raised (exception, path), the one to freeze when tracing fails."""

    def __init__(self, leaves: Iterable[str] = (), input_shape: tuple[int, ...] | None = None):
        super().__init__()
        self.leaves = frozenset(leaves)
        self.failure: tuple[BaseException, str] | None = None
        # Given, the input's shape but for the batch is this one while tracing (see PartsProxy).
        self.input_shape = tuple(input_shape) if input_shape is not None else None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (module_qualified_name in self.leaves or module_rule(type(m)) is not None
                or super().is_leaf_module(m, module_qualified_name))

    def create_args_for_root(self, root_fn, is_module, concrete_args=None):
        """The model's input is its forward's first argument; the rest keep their defaults, so
        that ``forward(x, *args, **kwargs)`` (ultralytics) or ``forward(pixel_values, labels=None,
        return_dict=None)`` (transformers) trace as called with one tensor."""
        if concrete_args is None and is_module:
            root_fn = one_input(root_fn)
        return super().create_args_for_root(root_fn, is_module, concrete_args)

    def iter(self, obj: fx.Proxy):
        """Iterating the parts of a ``chunk``, or of a ``split`` by a list of sizes, whose count
        the call names (``list(x.chunk(2, 1))``): one ``getitem`` per part."""
        count = part_count(obj.node)
        if count is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(count)])

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return PartsProxy(node, self)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception as exc:
            # The innermost module sees the exception first; its callers see the same one.
            if self.failure is None or self.failure[0] is not exc:
                with contextlib.suppress(Exception):
                    self.failure = (exc, self.path_of_module(m))
            raise

    def failed_module(self, exc: BaseException) -> str | None:
        """The path of the innermost submodule in which ``exc`` (or an exception it was
        raised from) arose; None when it arose in the root's own forward."""
        seen = set()
        while exc is not None and id(exc) not in seen and self.failure is not None:
            if exc is self.failure[0]:
                return self.failure[1] or None
            seen.add(id(exc))
            exc = exc.__cause__ or exc.__context__
        return None


class PartsProxy(fx.Proxy):
    """fx's Proxy, except that the parts of a ``chunk`` or ``split`` whose count the call names
    have a length, so that ``list(x.chunk(2, 1))`` (ultralytics' C2f) traces."""

    def __len__(self) -> int:
        count = part_count(self.node)
        if count is None:
            return super().__len__()
        return count

    def known_shape(self) -> tuple | None:
        """The model input's shape when the tracer was given it: a proxy for the batch, the
        rest the example's numbers, so that a check on the input's shape (transformers'
        embeddings, segmentation_models_pytorch's ``check_input_shape``) runs in Python."""
        shape = getattr(self.tracer, "input_shape", None)
        if shape is None or self.node.op != "placeholder" or self.node.prev.op != "root":
            return None
        return (self.tracer.create_proxy("call_method", "size", (self, 0), {}), *shape)

    @property
    def shape(self):
        known = self.known_shape()
        return fx.Proxy.__getattr__(self, "shape") if known is None else known

    @property
    def ndim(self):
        known = self.known_shape()
        return fx.Proxy.__getattr__(self, "ndim") if known is None else len(known)

    def size(self, *dim):
        known = self.known_shape()
        if known is None:
            return fx.Proxy.__getattr__(self, "size")(*dim)
        return known if not dim else known[dim[0]]

    def dim(self):
        known = self.known_shape()
        return fx.Proxy.__getattr__(self, "dim")() if known is None else len(known)


def one_input(fn):
    """``fn`` (an unbound forward) called with one input, its other parameters left to their
    defaults; ``fn`` itself when it takes one, or when another has no default."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    rest = params[1:]
    if not params or params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        return fn
    if not rest or any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in rest):
        return fn

    def forward(self, x):  # no functools.wraps: fx would unwrap it back to ``fn``
        return fn(self, x)
    forward.__qualname__ = getattr(fn, "__qualname__", "forward")
    return forward


def part_count(node: fx.Node) -> int | None:
    """How many parts ``chunk`` or ``split`` (by a list of sizes) at ``node`` returns, from its
    arguments; None for anything else, or where only the input's shape would say."""
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if node.op not in ("call_method", "call_function") or name not in ("chunk", "split"):
        return None
    arg = node.args[1] if len(node.args) > 1 else next(iter(
        v for k, v in node.kwargs.items() if k in ("chunks", "split_size_or_sections", "split_size")), None)
    if name == "chunk" and isinstance(arg, int):
        return arg
    if name == "split" and isinstance(arg, (list, tuple)):
        return len(arg)
    return None


def fx_graph_module(model: nn.Module, graph: ChannelGraph | None = None) -> fx.GraphModule:
    """``model`` traced by torch.fx as :func:`~autoprune.graph.trace` sees it, without shapes:
    every module with a rule, and every frozen leaf of ``graph``, is one ``call_module`` node
    named by its path."""
    leaves = [f.path for f in graph.frozen] if graph is not None else []
    tracer, traced = first_trace(model, leaves, graph.input_shape if graph is not None else None)
    return fx.GraphModule(tracer.root, traced, type(model).__name__)


def first_trace(model: nn.Module, leaves: Iterable[str], input_shape: tuple[int, ...] | None,
                stack_traces: bool = False):
    """(tracer, fx graph) of ``model``: traced with no shape known, else, where that fails,
    with the input's shape known (see PartsProxy); the second attempt's exception if both fail.
    ``stack_traces``: every node records the model code that made it (slower; for errors)."""
    leaves = tuple(leaves)
    tracers = [LeafTracer(leaves)] + ([LeafTracer(leaves, input_shape)] if input_shape is not None else [])
    for tracer in tracers:
        tracer.record_stack_traces = stack_traces
    for tracer in tracers[:-1]:
        try:
            return tracer, tracer.trace(model)
        except Exception:  # noqa: BLE001 — fx raises many kinds; the next attempt knows more
            continue
    tracer = tracers[-1]
    try:
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
        gm = fx.GraphModule(tracer.root, graph, name)  # what fx.symbolic_trace does
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
    """A forward hook adding a Conv/Linear layer's MACs (per sample) to the leaf at ``path``."""
    def hook(m, args, out):
        # Output elements x multiply-accumulates per element (in_channels / groups x kernel
        # for a conv, in_features for a linear layer), as thop counts these layers.
        per = m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups * math.prod(m.kernel_size)
        leaf_macs[path] += out[0].numel() * per
    return hook


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
