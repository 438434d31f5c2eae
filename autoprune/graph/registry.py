"""The rule registry: which handler the tracer runs for a module, a function or a tensor method.

Rules added by :func:`register_rule` take precedence over the built-in ones
(:mod:`autoprune.graph.rules`) until :func:`unregister_rule`. A module rule also covers the
module's subclasses: an exact match wins, then the nearest base class.
"""

from __future__ import annotations

import torch.nn as nn

from autoprune.errors import RuleError
from autoprune.graph import rules
from autoprune.graph.nodes import fn_name
from autoprune.graph.table import Handler

# Rules added by register_rule, by kind.
_USER_RULES: dict[str, dict] = {"module": {}, "function": {}, "method": {}}
_BUILTIN_RULES: dict[str, dict] = {"module": rules.MODULES, "function": rules.FUNCTIONS, "method": rules.METHODS}


def register_rule(target, handler: Handler | None = None):
    """Tell the tracer how the channels flow through ``target``.

    ``target`` is an ``nn.Module`` subclass (the rule also covers its subclasses, and fx no
    longer traces into it), a function such as ``torch.erf``, or a tensor-method name such
    as ``"erf"``. ``handler(table, node, target, inputs)`` gets the
    :class:`~autoprune.graph.GroupTable` of the trace, the fx node, the module instance (for a
    module rule) or the function or method name, and the
    :class:`~autoprune.graph.ChannelTensor` s among the node's arguments (exactly one for a
    module); it returns what the output carries: one of ``inputs`` for an op that keeps the
    channels, None for an output without channels. It records through ``table`` what the
    tracer cannot see: a per-channel parameter (``table.add_layer``), channels that must keep
    their width (``table.fix``). The ready-made :func:`passthrough` and
    :func:`spatial_reduce` cover ops that keep the channels or reduce spatial dimensions only,
    on modules without per-channel parameters. A rule replaces any earlier one for the same
    target, built-in rules included, until :func:`unregister_rule`. Without ``handler``,
    returns a decorator that registers the function it decorates. RuleError (a TypeError
    too) for a target a rule cannot be about or a handler that is not callable:

    >>> import torch, torch.nn as nn
    >>> from autoprune.graph import passthrough, register_rule, trace, unregister_rule
    >>> class ErfGELU(nn.Module):  # acts on every channel on its own
    ...     def forward(self, x):
    ...         return 0.5 * x * (1 + torch.erf(x * 0.7071))
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), ErfGELU(), nn.Conv2d(8, 4, 3))
    >>> _ = register_rule(ErfGELU, passthrough)  # without it: TraceError on torch.erf
    >>> [g.name for g in trace(model, (3, 8, 8)).groups if not g.fixed]
    ['0']
    >>> unregister_rule(ErfGELU)
    >>> @register_rule("erf")  # x.erf(): the decorator form
    ... def erf(table, node, target, inputs):
    ...     return passthrough(table, node, target, inputs)
    >>> unregister_rule("erf")
    """
    kind = rule_kind(target)
    if handler is None:
        def decorator(fn: Handler) -> Handler:
            return register_rule(target, fn)
        return decorator
    if not callable(handler):
        raise RuleError(f"register_rule: handler for {target_name(target)} must be callable, "
                        f"got {type(handler).__name__}")
    _USER_RULES[kind][target] = handler
    return handler


def unregister_rule(target) -> None:
    """Remove the rule :func:`register_rule` added for ``target``; a built-in rule it replaced
    applies again. RuleError (a ValueError) if there is none."""
    if _USER_RULES[rule_kind(target)].pop(target, None) is None:
        raise RuleError(f"unregister_rule: no rule was registered for {target_name(target)}")


def rule_kind(target) -> str:
    """Which table ``target`` belongs in; RuleError for anything a rule cannot be about."""
    if isinstance(target, str):
        if not target.isidentifier():
            raise RuleError(f"register_rule: {target!r} is not a tensor-method name")
        return "method"
    if isinstance(target, type):
        if not issubclass(target, nn.Module) or target is nn.Module:
            raise RuleError(f"register_rule: {target.__name__} is not a subclass of nn.Module; a rule's target "
                            "is a module class, a function or a tensor-method name")
        return "module"
    if isinstance(target, nn.Module):
        raise RuleError(f"register_rule: got an instance of {type(target).__name__}; "
                        "register the class, not a module")
    if callable(target):
        return "function"
    raise RuleError(f"register_rule: {target!r} is not a module class, a function or a tensor-method name")


def target_name(target) -> str:
    return target if isinstance(target, str) else fn_name(target)


def rule_for(kind: str, key) -> Handler | None:
    """The handler for ``key`` in the ``kind`` table (``function`` or ``method``): a user's
    rule, else the built-in one, else None."""
    if key in _USER_RULES[kind]:
        return _USER_RULES[kind][key]
    return _BUILTIN_RULES[kind].get(key)


def module_rule(cls: type) -> Handler | None:
    """The handler for modules of class ``cls``: of ``cls`` itself, else of its nearest base."""
    # cls.__mro__ starts with cls itself: an exact match wins, then the nearest base class.
    for base in cls.__mro__:
        handler = rule_for("module", base) or rules.BY_CLASS_NAME.get(base.__name__)
        if handler is not None:
            return handler
    return None


def keeps_order(handler: Handler) -> bool:
    """Whether ``handler`` follows a shuffled tensor's channel positions; any other gets the
    tensor with its groups fixed."""
    return handler in rules.KEEP_ORDER
