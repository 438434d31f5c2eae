"""One registry of models: a name maps to a constructor.

Three kinds of name are understood by :func:`create_model`:

* a zoo name registered with :func:`register_model` (``vgg16``, ``resnet56``, ...);
* ``tv:NAME`` for a torchvision classification model (``tv:resnet50``), built without weights;
* ``timm:NAME`` for a timm model (``timm:efficientnet_b0``), built with ``pretrained=False``
  (timm is the optional extra ``autoprune[timm]``);
* ``package.module:callable`` for a user constructor, imported and called with the kwargs.

>>> model = create_model("resnet20", num_classes=10)
"""

from __future__ import annotations

import difflib
import inspect
import json
from typing import Callable

import torch.nn as nn

from autoprune.checks import check_count
from autoprune.errors import UnknownModelError
from autoprune.imports import import_callable

_ZOO: dict[str, Callable[..., nn.Module]] = {}
_ZOO_INPUT_SIZE = 32
_TV_INPUT_SIZE = 224
# torchvision models the tests and docs promise; any other torchvision classifier works too.
TV_MODELS = ("resnet18", "resnet50", "vgg16_bn", "mobilenet_v2", "densenet121")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a zoo constructor under its function's name."""
    _ZOO[fn.__name__] = fn
    return fn


def list_models(include_tv: bool = True) -> list[str]:
    names = sorted(_ZOO)
    if include_tv:
        names += [f"tv:{n}" for n in TV_MODELS]
    return names


def _imagenet(name: str) -> bool:
    return name.startswith(("tv:", "timm:"))


def default_input_size(name: str) -> int:
    return _TV_INPUT_SIZE if _imagenet(name) else _ZOO_INPUT_SIZE


def default_num_classes(name: str) -> int:
    return 1000 if _imagenet(name) else 10


def _tv_builder(name: str) -> Callable[..., nn.Module]:
    # Deferred on purpose: torchvision takes seconds to import and only tv: names need it.
    import torchvision.models as tvm

    available = tvm.list_models(module=tvm)
    if name not in available:
        for task in ("detection", "segmentation"):
            if name in tvm.list_models(module=getattr(tvm, task)):
                # Their builders fetch backbone weights by default: the callable form says otherwise.
                raise UnknownModelError(f"tv: names are torchvision's classifiers; its {task} model '{name}' is "
                                        f"--model torchvision.models.{task}:{name} --model-arg weights_backbone=null")
        close = difflib.get_close_matches(name, available, n=3)
        hint = f"; did you mean {', '.join('tv:' + c for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown torchvision model 'tv:{name}'{hint}")

    def build(**kwargs):
        return tvm.get_model(name, weights=None, **kwargs)

    return build


def _timm_builder(name: str) -> Callable[..., nn.Module]:
    try:
        # Deferred on purpose: timm is an optional extra, needed by timm: names only.
        import timm
    except ImportError:
        raise UnknownModelError(f"model 'timm:{name}' needs timm: pip install 'autoprune[timm]'") from None
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise UnknownModelError(f"unknown timm model 'timm:{name}'{hint}")

    def build(**kwargs):
        return timm.create_model(name, pretrained=False, **kwargs)

    return build


def _import_builder(name: str) -> Callable[..., nn.Module]:
    return import_callable(name, "model", UnknownModelError)


def get_builder(name: str) -> Callable[..., nn.Module]:
    """The constructor a model name stands for; raises UnknownModelError with close names."""
    if name in _ZOO:
        return _ZOO[name]
    if name.startswith("tv:"):
        return _tv_builder(name[3:])
    if name.startswith("timm:"):
        return _timm_builder(name[5:])
    if ":" in name:
        return _import_builder(name)
    close = difflib.get_close_matches(name, list_models(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model '{name}'{hint} (see `autoprune models`)")


def model_kwargs(name: str, **kwargs) -> dict:
    """The constructor kwargs :func:`create_model` would use, defaults filled in.

    Zoo, torchvision and timm models get ``num_classes`` filled in; a user constructor keeps its
    own defaults.
    """
    out = dict(kwargs)
    get_builder(name)  # unknown names fail here, with suggestions
    if "num_classes" not in out and (name in _ZOO or _imagenet(name)):
        out["num_classes"] = default_num_classes(name)
    return out


def takes_kwarg(name: str, key: str) -> bool:
    """Whether the constructor ``name`` stands for takes the keyword argument ``key``, by name
    or through ``**kwargs`` (True where its signature cannot be read). ultralytics'
    ``DetectionModel`` takes ``nc``, not ``num_classes``."""
    try:
        params = inspect.signature(get_builder(name)).parameters.values()
    except (TypeError, ValueError):  # a builtin or extension callable without a signature
        return True
    return any(p.kind is p.VAR_KEYWORD or (p.name == key and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
               for p in params)


def parse_model_arg(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` as (key, value): the value read as a JSON literal where it parses as one
    (``3``, ``0.5``, ``true``, ``null``, ``[1, 2]``, ``"x"``), else kept as the string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip().isidentifier():
        raise UnknownModelError(f"--model-arg '{text}': expected KEY=VALUE with KEY a Python name")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def parse_model_args(texts) -> dict:
    """The constructor kwargs of the ``KEY=VALUE`` strings ``texts`` (see :func:`parse_model_arg`)."""
    out = {}
    for text in texts or ():
        out = merge_kwargs(out, dict([parse_model_arg(text)]))
    return out


def merge_kwargs(kwargs: dict, extra: dict | None) -> dict:
    """``kwargs`` and ``extra`` together; UnknownModelError on a key the two give different values."""
    out = dict(kwargs)
    for key, value in (extra or {}).items():
        if key in out and out[key] != value:
            raise UnknownModelError(f"constructor argument '{key}' given twice: {out[key]!r} and {value!r}")
        out[key] = value
    return out


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a model by registry name; see the module docstring for the name forms."""
    builder = get_builder(name)
    kwargs = model_kwargs(name, **kwargs)
    for key in ("num_classes", "in_channels"):
        check_count(kwargs.get(key), f"model '{name}': {key}", error=UnknownModelError)
    if name.startswith("tv:") and kwargs.pop("in_channels", 3) != 3:  # timm takes in_chans itself
        raise UnknownModelError(f"model '{name}': torchvision models take 3 input channels only")
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        raise UnknownModelError(f"model '{name}': bad constructor arguments {kwargs} ({exc})") from None
    if not isinstance(model, nn.Module):
        raise UnknownModelError(f"model '{name}': constructor returned {type(model).__name__}, not nn.Module")
    return model
