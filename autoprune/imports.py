"""Callables named ``package.module:callable`` (a user's model constructor, a user's task).

The current directory is importable, as it is for ``python -m``: ``examples.tasks.segmentation``
resolves from a project's root whether autoprune runs as a console script or as a library.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Callable


def import_callable(spec: str, what: str, error: type[Exception]) -> Callable:
    """The callable ``spec`` (``package.module:callable``) names; ``error`` (one line naming
    ``what`` and the spec) when it is malformed, cannot be imported or is not callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise error(f"{what} '{spec}': expected package.module:callable")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{what} '{spec}': cannot import module '{module_name}' ({exc})") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
    if not callable(fn):
        raise error(f"{what} '{spec}': module '{module_name}' has no callable '{attr}'")
    return fn
