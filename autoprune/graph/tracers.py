"""The torch.fx tracers the channel tracer records a model's graph with.

:class:`LeafTracer` is fx's tracer with every module that has a rule, and every frozen leaf,
as one step; it traces a model as called with one tensor, iterates the parts of a ``chunk``
or ``split`` whose count the call names, and, given the input's shape, lets a check on that
shape run in Python (:class:`PartsProxy`).

:class:`ExampleTracer`, tried where that fails, also runs every node it records on example
inputs, so that every proxy knows its value's shape (:class:`ExampleProxy`) and what depends
on shapes alone runs in Python: a detection head's anchors and strides, made from its
feature maps' sizes, become constants of the graph. :func:`attributes_kept` undoes what a
forward stores on its modules while it is traced.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
from collections.abc import Iterable

import torch
import torch.fx as fx
import torch.nn as nn

from autoprune.graph.nodes import META_ATTRS, metadata_args
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


UNKNOWN = object()  # a node's example value where the examples could not be run


class ExampleTracer(LeafTracer):
    """A LeafTracer that runs every node it records on two examples of the input, zeros of
    ``input_shape`` with a batch of 1 and of 2 (``examples``: node -> the two values).

    So every proxy knows its value's shape (:class:`ExampleProxy`): a dimension that is the
    same in both examples is a number, one that follows the batch stays ``x.size(d)``. A value
    computed from shapes, dtypes and constants alone (``no_data``: it reads no tensor's
    values, no parameter, no buffer) that is the same in both examples is computed here and
    becomes a constant of the graph, as fx makes one of any tensor the forward builds from
    numbers; Python control flow on such a value runs with the batch-1 example's, the one
    the shape propagation runs. Control flow on a tensor's values still fails."""

    def __init__(self, leaves: Iterable[str] = (), input_shape: tuple[int, ...] = (), device=None):
        super().__init__(leaves, input_shape)
        self.device = device
        self.examples: dict[fx.Node, tuple] = {}
        self.no_data: set[fx.Node] = set()
        self.running = False  # running a node on the examples: modules run as they are
        self.state: frozenset[str] | None = None  # the root's parameter and buffer names
        self.sizes: list[fx.Node] = []  # made by ExampleProxy.known_shape

    def trace(self, root, concrete_args=None) -> fx.Graph:
        graph = super().trace(root, concrete_args)
        for node in reversed(self.sizes):  # a shape read whole leaves the batch's size unused
            if not node.users:
                graph.erase_node(node)
        self.examples.clear()  # every activation of two forward passes
        return graph

    def size_of(self, proxy: fx.Proxy, dim: int) -> fx.Proxy:
        """``proxy.size(dim)``, a dimension that follows the batch; erased at the end if unused."""
        out = self.create_proxy("call_method", "size", (proxy, dim), {})
        self.sizes.append(out.node)
        return out

    def create_node(self, kind, target, args, kwargs, name=None, type_expr=None) -> fx.Node:
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        value = self.run_node(node)
        if value is not UNKNOWN:
            self.examples[node] = value
        if self.reads_no_data(node):
            self.no_data.add(node)
        return node

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        # getattr nodes stay: fx's Attribute proxy reads the node back (ExampleProxy answers
        # the attributes that read no data before one is made).
        if kind in ("call_function", "call_method") and target is not getattr and node in self.no_data:
            value = self.examples.get(node)
            if value is not None and same_value(*value):
                self.drop(node)
                return value[0]
        return proxy

    def drop(self, node: fx.Node) -> None:
        """Erase ``node`` from the graph, with what only it used and reads no data."""
        inputs = node.all_input_nodes
        self.graph.erase_node(node)
        self.examples.pop(node, None)
        self.no_data.discard(node)
        for n in inputs:
            if not n.users and n in self.no_data and n.op != "placeholder":
                self.drop(n)

    def run_node(self, node: fx.Node):
        """``node``'s value on each example, or UNKNOWN."""
        if node.op == "placeholder":
            if any(n.op == "placeholder" for n in self.examples):  # only the first is the input
                return UNKNOWN
            return tuple(torch.zeros(b, *self.input_shape, device=self.device) for b in (1, 2))
        if node.op == "get_attr":
            value = self.root
            for part in node.target.split("."):
                value = getattr(value, part)
            return value, value
        if node.op not in ("call_function", "call_method", "call_module"):
            return UNKNOWN
        was, self.running = self.running, True
        try:
            return tuple(self.run_one(node, i) for i in (0, 1))
        except Exception:  # noqa: BLE001 — an op that cannot run on the examples leaves its value unknown
            return UNKNOWN
        finally:
            self.running = was

    def run_one(self, node: fx.Node, i: int):
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: self.examples[n][i])
        with torch.no_grad():
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            module = self.root.get_submodule(node.target)
            with buffers_kept(module):
                return module(*args, **kwargs)

    def reads_no_data(self, node: fx.Node) -> bool:
        """Whether ``node``'s value comes from shapes, dtypes and constants alone."""
        if node.op == "get_attr":
            if self.state is None:
                self.state = frozenset(n for n, _ in self.root.named_parameters()) | frozenset(
                    n for n, _ in self.root.named_buffers())
            return node.target not in self.state
        if node.op not in ("call_function", "call_method"):
            return False
        meta = metadata_args(node)
        read = [a for i, a in enumerate(node.args) if i not in meta] + list(node.kwargs.values())
        return all(n in self.no_data for n in nodes_in(read))

    def call_module(self, m: nn.Module, forward, args, kwargs):
        if self.running:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        if self.running:
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)

    def to_bool(self, obj: fx.Proxy) -> bool:
        value = self.examples.get(obj.node)
        if value is not None and obj.node in self.no_data:
            return bool(value[0])
        return super().to_bool(obj)

    def iter(self, obj: fx.Proxy):
        count = example_length(self.examples.get(obj.node)) if part_count(obj.node) is None else None
        if count is None:
            return super().iter(obj)
        return iter([obj[i] for i in range(count)])

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return ExampleProxy(node, self)


class ExampleProxy(PartsProxy):
    """A proxy whose shape, dtype and device come from its node's examples (see ExampleTracer)."""

    def tensors(self) -> tuple | None:
        value = self.tracer.examples.get(self.node)
        if value is None or not all(isinstance(v, torch.Tensor) for v in value) or value[0].dim() != value[1].dim():
            return None
        return value

    def known_shape(self) -> tuple | None:
        value = self.tensors()
        if value is None:
            return super().known_shape()
        return tuple(a if a == b else self.tracer.size_of(self, d)
                     for d, (a, b) in enumerate(zip(value[0].shape, value[1].shape)))

    def __getattr__(self, k: str):
        value = self.tensors() if k in META_ATTRS else None
        return getattr(value[0], k) if value is not None else super().__getattr__(k)

    def __len__(self) -> int:
        count = example_length(self.tracer.examples.get(self.node))
        return super().__len__() if count is None else count

    def __setitem__(self, key, value) -> None:
        # An assignment into a slice (ultralytics' keypoint decoding), recorded as fx records
        # operator.setitem; the examples are written to as the model writes to its tensor.
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


def nodes_in(arg) -> list[fx.Node]:
    """The fx nodes inside ``arg`` (nested tuples, lists, dicts, slices)."""
    out: list[fx.Node] = []
    fx.node.map_arg(arg, out.append)
    return out


def same_value(a, b) -> bool:
    """Whether two example values are equal: tensors of one shape, dtype and values, numbers,
    and containers of them."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and bool(torch.equal(a, b)))
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 — values that do not compare are not the same
        return False


def example_length(value) -> int | None:
    """How many items iterating a value with these two examples gives, where both agree."""
    if value is None:
        return None
    a, b = value
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return len(a)
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dim() and b.dim() and len(a) == len(b):
        return len(a)
    return None


@contextlib.contextmanager
def buffers_kept(module: nn.Module):
    """Run ``module`` on an example without its buffers (a BatchNorm's running statistics in
    training mode) keeping what the example wrote."""
    saved = [(b, b.clone()) for b in module.buffers()] if any(m.training for m in module.modules()) else []
    try:
        yield
    finally:
        with torch.no_grad():
            for b, v in saved:
                b.copy_(v)


@contextlib.contextmanager
def attributes_kept(model: nn.Module, tracer: fx.Tracer):
    """Trace ``model`` with ``tracer`` leaving its modules' attributes as they were: a forward
    that caches a value on its module (a detection head's input shape and anchors) would
    otherwise keep a proxy there. The constants fx stores on the model for its graph are taken
    off it too, into ``tracer.constants`` (name -> value), for the GraphModule that needs them."""
    before = {m: dict(vars(m)) for m in model.modules()}
    traced = False
    try:
        yield
        traced = True
    finally:
        used = {n.target for n in tracer.graph.nodes if n.op == "get_attr"} if traced else set()
        tracer.constants = {k: v for k, v in vars(model).items() if k not in before[model] and k in used}
        for m, old in before.items():
            now = vars(m)
            for k in [k for k in now if k not in old]:
                del now[k]
            for k, v in old.items():
                if now.get(k, UNKNOWN) is not v:
                    now[k] = v
