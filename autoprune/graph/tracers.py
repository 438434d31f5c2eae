"""The torch.fx tracers the channel tracer records a model's graph with.

:class:`LeafTracer` is fx's tracer with every module that has a rule, and every frozen leaf,
as one step; it traces a model as called with one tensor, iterates the parts of a ``chunk``
or ``split`` whose count the call names, and, given the input's shape, lets a check on that
shape run in Python (:class:`PartsProxy`).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterable

import torch.fx as fx
import torch.nn as nn

from autoprune.graph.registry import module_rule


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
