"""Model registry and the CIFAR zoo (VGG-BN, ResNet, MobileNetV2)."""

from autoprune.models import cifar as _cifar  # noqa: F401  (registers the zoo)
from autoprune.models.pretrained import Pretrained, create_pretrained
from autoprune.models.registry import (
    TV_MODELS,
    create_model,
    default_input_size,
    default_num_classes,
    get_builder,
    list_models,
    merge_kwargs,
    model_kwargs,
    parse_model_arg,
    parse_model_args,
    register_model,
    takes_kwarg,
)

__all__ = [
    "Pretrained",
    "TV_MODELS",
    "create_model",
    "create_pretrained",
    "default_input_size",
    "default_num_classes",
    "get_builder",
    "list_models",
    "merge_kwargs",
    "model_kwargs",
    "parse_model_arg",
    "parse_model_args",
    "register_model",
    "takes_kwarg",
]
