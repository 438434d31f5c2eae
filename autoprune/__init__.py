"""autoprune: channel pruning as architecture search under an exact compute budget.

``autoprune.search`` is the search function; its machinery lives in the subpackage of the
same name, which importing the function loads first (so the name ends up bound to the
function, not the subpackage).
"""

from autoprune.version import __version__

from autoprune.arch import build, load_arch, make_arch, save_arch  # noqa: E402
from autoprune.cost import macs, params  # noqa: E402
from autoprune.errors import AutopruneError  # noqa: E402
from autoprune.graph import trace  # noqa: E402
from autoprune.models import create_model, list_models, register_model  # noqa: E402
from autoprune.space import SearchSpace  # noqa: E402
from autoprune.surgery import materialise  # noqa: E402
from autoprune.api import SearchResult, search  # noqa: E402  (after the subpackage import)

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

