"""autoprune: channel pruning as architecture search under an exact compute budget."""

from autoprune.api import (
    BaseConfig,
    LatencyConfig,
    MethodConfig,
    ModelConfig,
    SearchResult,
    SpaceOptions,
    StudyConfig,
    search,
)
from autoprune.arch import build, load_arch, make_arch, save_arch
from autoprune.cost import macs, params
from autoprune.dataspec import DataSpec
from autoprune.errors import AutopruneError
from autoprune.evaluator import EvalConfig
from autoprune.finish import FinetuneResult, finetune
from autoprune.graph import register_rule, trace
from autoprune.keep import KeepRule, get_keep_rule, register_keep_rule
from autoprune.models import create_model, list_models, register_model
from autoprune.optimizers import Optimizer, list_methods, register_optimizer
from autoprune.space import SearchSpace
from autoprune.surgery import materialise
from autoprune.task import ClassificationTask, Task, load_task
from autoprune.version import __version__

__all__ = [
    "AutopruneError",
    "BaseConfig",
    "ClassificationTask",
    "LatencyConfig",
    "MethodConfig",
    "ModelConfig",
    "SpaceOptions",
    "Task",
    "DataSpec",
    "EvalConfig",
    "FinetuneResult",
    "KeepRule",
    "Optimizer",
    "SearchResult",
    "SearchSpace",
    "StudyConfig",
    "__version__",
    "build",
    "create_model",
    "finetune",
    "get_keep_rule",
    "list_methods",
    "list_models",
    "load_arch",
    "load_task",
    "macs",
    "make_arch",
    "materialise",
    "params",
    "register_keep_rule",
    "register_model",
    "register_optimizer",
    "register_rule",
    "save_arch",
    "search",
    "trace",
]
