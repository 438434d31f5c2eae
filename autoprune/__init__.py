"""autoprune: channel pruning as architecture search under an exact compute budget.

The building blocks are importable from here; ``search`` (the main job) is loaded lazily so
that ``import autoprune`` stays cheap.
"""

__version__ = "0.1.0"

from autoprune.arch import build, load_arch, make_arch, save_arch  # noqa: E402
from autoprune.cost import macs, params  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.graph import trace  # noqa: E402
from autoprune.models import create_model, list_models, register_model  # noqa: E402
from autoprune.space import SearchSpace  # noqa: E402
from autoprune.surgery import materialise  # noqa: E402

__all__ = [
    "AutopruneError",
    "SearchResult",
    "SearchSpace",
    "build",
    "create_model",
    "list_models",
    "load_arch",
    "macs",
    "make_arch",
    "materialise",
    "params",
    "register_model",
    "save_arch",
    "search",
    "trace",
]


def __getattr__(name):
    if name in ("search", "SearchResult"):
        from autoprune import api

        return getattr(api, name)
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
