"""Small helpers on torch.fx nodes that rules share: the shapes one shape propagation recorded,
the tensor arguments of a node, where a node sits in the model (for error messages)."""

from __future__ import annotations

import dataclasses
import math
import operator
import os
import re
import traceback

import torch
import torch.fx as fx
import torch.nn.functional as F

from autoprune.errors import TraceError

# Tensor attributes that say nothing of its values.
META_ATTRS = frozenset({"dtype", "device", "layout", "is_cuda"})
# Ops that read only the shape, dtype and device of the tensors at these argument positions:
# such an argument brings neither its values nor its channels into the result.
META_ARGS = {
    **dict.fromkeys((("call_method", m) for m in ("size", "dim", "numel", "new_zeros", "new_ones", "new_full",
                                                   "new_tensor")), frozenset({0})),
    ("call_method", "type_as"): frozenset({1}),
    **dict.fromkeys((("call_function", f) for f in (torch.zeros_like, torch.ones_like, torch.full_like)),
                    frozenset({0})),
}


def metadata_args(node: fx.Node) -> frozenset[int]:
    """The positions of ``node``'s arguments it reads the shape, dtype or device of alone."""
    if node.op == "call_function" and node.target is getattr and len(node.args) == 2:
        return frozenset({0}) if node.args[1] in META_ATTRS | {"shape", "ndim"} else frozenset()
    return META_ARGS.get((node.op, node.target), frozenset())


# Appended to every error about an op without a rule.
HOW_TO_ADD = ("add a rule with autoprune.graph.register_rule, or move the op into a submodule, which the "
              "tracer then freezes (runs whole, its channels fixed)")


def shape_of(node) -> tuple[int, ...] | None:
    """The output shape of ``node`` (with the batch dimension); None for anything but a tensor."""
    if not isinstance(node, fx.Node):
        return None
    meta = node.meta.get("tensor_meta")
    found = getattr(meta, "shape", None)
    return tuple(found) if found is not None else None


def tuple_args(arg) -> list[fx.Node]:
    """Nodes in ``arg`` that hold a tensor or a tuple of tensors."""
    if isinstance(arg, fx.Node):
        meta = arg.meta.get("tensor_meta")
        return [arg] if shape_of(arg) is not None or isinstance(meta, (list, tuple)) and meta else []
    if isinstance(arg, (list, tuple)):
        return [n for a in arg for n in tuple_args(a)]
    return []


def tensor_args(arg) -> list[fx.Node]:
    """Nodes in ``arg`` (nested in lists and tuples too) that hold a tensor."""
    if isinstance(arg, fx.Node):
        return [arg] if shape_of(arg) is not None else []
    if isinstance(arg, (list, tuple)):
        return [n for a in arg for n in tensor_args(a)]
    return []


def _adds_axes_only(index) -> bool:
    """Whether indexing with ``index`` keeps every value in order, only adding axes."""
    items = index if isinstance(index, tuple) else (index,)
    return all(i is None or i is Ellipsis or (isinstance(i, slice) and i == slice(None)) for i in items)


def first_tensor_arg(node: fx.Node) -> fx.Node | None:
    """The first argument of ``node`` that holds a tensor; None where none does."""
    found = tensor_args(node.args)
    return found[0] if found else None


# Ops through which a parameter keeps one value per channel in order: reshapes, and
# elementwise functions of it alone (a gate's sigmoid, a scale's exp).
_VALUE_METHODS = frozenset({"reshape", "view", "unsqueeze", "sigmoid", "exp", "tanh", "abs", "neg", "float"})
_VALUE_FUNCTIONS = frozenset({torch.sigmoid, torch.exp, torch.tanh, torch.abs, torch.neg, torch.unsqueeze,
                              torch.reshape, F.softplus, F.relu, operator.neg})


def parameter_behind(arg) -> tuple[str, int] | None:
    """(target, size) of a parameter with more than one value that ``arg`` reads, directly
    or through reshapes, indexing that only adds axes (``p[None, :, None, None]``) and
    elementwise functions of it alone; None for anything else."""
    while isinstance(arg, fx.Node) and arg.args and isinstance(arg.args[0], fx.Node) and (
            (arg.op == "call_method" and arg.target in _VALUE_METHODS)
            or (arg.op == "call_function" and arg.target in _VALUE_FUNCTIONS and len(tensor_args(arg.args)) == 1)
            or (arg.op == "call_function" and arg.target is operator.getitem and _adds_axes_only(arg.args[1]))):
        arg = arg.args[0]
    if not isinstance(arg, fx.Node) or arg.op != "get_attr":
        return None
    found = shape_of(arg)
    size = math.prod(found) if found is not None else 1
    return (arg.target, size) if size > 1 else None


def is_namedtuple_class(target) -> bool:
    return isinstance(target, type) and issubclass(target, tuple) and hasattr(target, "_fields")


def is_record_class(target) -> bool:
    """A namedtuple or a dataclass: a model's outputs gathered under field names."""
    return is_namedtuple_class(target) or (isinstance(target, type) and dataclasses.is_dataclass(target))


def same_kind(seq, items: list):
    """``items`` in a sequence of the type of ``seq``: list, tuple or namedtuple."""
    if is_namedtuple_class(type(seq)):
        return type(seq)(*items)
    return list(items) if isinstance(seq, list) else tuple(items)


def fn_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def where(node: fx.Node) -> str:
    """``in module 'path' (Class), file.py:line`` for a node inside a submodule, else ``at top
    level, file.py:line``: the line of the model's code that made it, where fx recorded it."""
    stack = node.meta.get("nn_module_stack")
    line = source_line(node)
    line = f", {line}" if line else ""
    if stack:
        path, cls = list(stack.values())[-1]
        cls_name = getattr(cls, "__name__", str(cls))
        return f"in module '{path}' ({cls_name}){line}"
    return f"at top level{line}"


_NOT_THE_MODEL = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def failed_line(exc: BaseException) -> str | None:
    """``file.py:line`` of the model code where ``exc`` was raised while tracing (the innermost
    frame outside torch and autoprune); None where there is none."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_NOT_THE_MODEL)]
    return f"{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else None


def source_line(node: fx.Node) -> str | None:
    """``file.py:line`` of the model code that made ``node`` (the innermost frame fx recorded);
    None where it recorded none."""
    found = [(p, n) for p, n in _FRAME.findall(getattr(node, "stack_trace", None) or "")
             if not p.startswith(_NOT_THE_MODEL)]  # fx's and the tracer's own frames
    if not found:
        return None
    path, line = found[-1]
    return f"{os.path.basename(path)}:{line}"


def unsupported_function(node: fx.Node) -> TraceError:
    """The error for a function with no rule applied to a channel tensor."""
    return TraceError(f"node '{node.name}' ({where(node)}): function {fn_name(node.target)} on a channel "
                      f"tensor is not supported; {HOW_TO_ADD}")


def flat_leaves(value, leaf: type | tuple = ()) -> list:
    """The leaves of an output structure in order: dict values, list and tuple items and
    dataclass fields, walked depth first; anything else, or an instance of ``leaf``, is a leaf."""
    if isinstance(value, leaf):
        return [value]
    if isinstance(value, dict):
        return [x for v in value.values() for x in flat_leaves(v, leaf)]
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in flat_leaves(v, leaf)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [x for f in dataclasses.fields(value) for x in flat_leaves(getattr(value, f.name), leaf)]
    return [value]
