"""Pretrained weights of ``tv:`` and ``timm:`` models, through their own libraries and caches.

torchvision's come through its weights API (``get_model_weights(name).DEFAULT``,
``get_model(name, weights=...)``) and torch.hub's cache, ``$TORCH_HOME/hub/checkpoints``
(``~/.cache/torch/hub/checkpoints``); timm's through ``timm.create_model(name, pretrained=True)``
and the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
``~/.cache/huggingface/hub``), or torch.hub's for weights timm fetches by URL.

A file already in the cache is read without touching the network. One that is not there is
downloaded by the library, unless ``AUTOPRUNE_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true
value; offline, or when the download fails, :class:`~autoprune.errors.WeightsNotCachedError`
names the folder and the file to put there.

A ``num_classes`` other than the weights' keeps every weight but the classifier's, which is
freshly initialised (as timm does); :attr:`Pretrained.note` says so in one line.

>>> p = create_pretrained("tv:resnet18", num_classes=4)  # doctest: +SKIP
>>> p.note  # doctest: +SKIP
"tv:resnet18: the ImageNet weights have 1000 classes; the classifier (fc) is re-initialised for 4"
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.nn as nn

from autoprune.errors import WeightsError, WeightsNotCachedError, one_line
from autoprune.models.registry import create_model, get_builder, model_kwargs

OFFLINE_VARS = ("AUTOPRUNE_OFFLINE", "HF_HUB_OFFLINE")


@dataclass(frozen=True)
class Pretrained:
    """A model built with its library's pretrained weights, and where they came from.

    ``weights``: the library's name for them; ``file``: the cache file read; ``num_classes``:
    the classes they were trained for; ``reinitialised``: the classifier modules that were
    re-initialised for another ``num_classes`` (empty when none was).
    """

    model: nn.Module
    name: str
    source: str
    weights: str
    file: str
    num_classes: int
    requested_classes: int
    reinitialised: tuple[str, ...] = ()

    @property
    def note(self) -> str | None:
        """One line saying the classifier was re-initialised, or None."""
        if self.requested_classes == self.num_classes:
            return None
        what = f" ({', '.join(self.reinitialised)})" if self.reinitialised else ""
        return (f"{self.name}: the pretrained weights ({self.weights}) have {self.num_classes} classes; "
                f"the classifier{what} is re-initialised for {self.requested_classes}")

    def record(self) -> dict:
        """Plain data for an architecture file or a checkpoint."""
        return {"kind": "pretrained", "source": self.source, "weights": self.weights, "path": self.file,
                "num_classes": self.num_classes, "reinitialised": list(self.reinitialised)}


def offline() -> bool:
    """Whether downloads are off (``AUTOPRUNE_OFFLINE`` or ``HF_HUB_OFFLINE`` set to a true value)."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


def create_pretrained(name: str, **kwargs) -> Pretrained:
    """Model ``name`` (``tv:NAME`` or ``timm:NAME``) with its library's default pretrained weights.

    ``kwargs`` are the constructor's, as for :func:`~autoprune.models.create_model`. Raises
    :class:`WeightsError` for other names and for models without pretrained weights, and
    :class:`WeightsNotCachedError` when the weights are neither cached nor downloadable.
    """
    get_builder(name)  # unknown names fail here, with suggestions
    kwargs = model_kwargs(name, **kwargs)
    if name.startswith("tv:"):
        return _torchvision(name, kwargs)
    if name.startswith("timm:"):
        return _timm(name, kwargs)
    raise WeightsError(f"--pretrained is for tv:NAME and timm:NAME models; for '{name}' give a weights file "
                       "(--weights FILE) or a trained base (--base CKPT)")


def torch_hub_file(url: str) -> Path:
    """Where torch.hub keeps the download of ``url``: ``<hub dir>/checkpoints/<file name>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at each call."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
                                                     "huggingface")
    return Path(home) / "hub"


def _missing(name: str, weights: str, folder: Path, file: str, where: str) -> WeightsNotCachedError:
    how = "downloads are off (AUTOPRUNE_OFFLINE / HF_HUB_OFFLINE)" if offline() else f"the download failed ({where})"
    return WeightsNotCachedError(f"{name}: pretrained weights {weights} are not cached and {how}; put {file} into "
                                 f"{folder} (or run once with network access)")


def _download(name: str, weights: str, folder: Path, file: str, build):
    """``build()``, which downloads; any failure of it is the one-line not-cached error."""
    if offline():
        raise _missing(name, weights, folder, file, "")
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 — urllib, requests or the hub raise anything when offline
        raise _missing(name, weights, folder, file, one_line(exc)[:160]) from None


def _torchvision(name: str, kwargs: dict) -> Pretrained:
    # Deferred on purpose: torchvision takes seconds to import and only tv: names need it.
    import torchvision.models as tvm

    arch = name[3:]
    try:
        weights = tvm.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise WeightsError(f"{name}: torchvision has no pretrained weights for '{arch}'") from None
    if kwargs.get("in_channels", 3) != 3:
        raise WeightsError(f"{name}: torchvision's pretrained weights take 3 input channels only")
    classes = len(weights.meta.get("categories") or []) or 1000
    wanted = kwargs.get("num_classes", classes)
    given = {k: v for k, v in kwargs.items() if k not in ("num_classes", "in_channels")}
    file = torch_hub_file(weights.url)

    def build():
        return tvm.get_model(arch, weights=weights, **given)

    model = build() if file.is_file() else _download(name, str(weights), file.parent, file.name, build)
    swapped = ()
    if wanted != classes:
        model, swapped = _swap_classifier(model, create_model(name, **kwargs))
    return Pretrained(model, name, "torchvision", str(weights), str(file), classes, wanted, swapped)


def _swap_classifier(pretrained: nn.Module, fresh: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """``pretrained`` with each module whose parameters' shapes differ from ``fresh``'s (the
    classifier, built for another number of classes) replaced by ``fresh``'s, freshly initialised."""
    mine, theirs = pretrained.state_dict(), fresh.state_dict()
    paths = sorted({k.rpartition(".")[0] for k, v in theirs.items() if k in mine and mine[k].shape != v.shape})
    for path in paths:
        pretrained.set_submodule(path, fresh.get_submodule(path))
    return pretrained, tuple(paths)


def _timm(name: str, kwargs: dict) -> Pretrained:
    # Deferred on purpose: timm is an optional extra, needed by timm: names only (get_builder
    # above has already said how to install it when it is missing).
    import timm

    arch = name[5:]
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise WeightsError(f"{name}: timm has no pretrained weights for '{arch}'")
    weights = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)
    classes = int(cfg.num_classes or 1000)
    wanted = kwargs.get("num_classes", classes)
    cached = _timm_cached(cfg)
    if cached is not None:
        model = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(cached)}, **kwargs)
    else:
        if cfg.hf_hub_id:  # the Hugging Face cache keeps files under snapshots/<revision>, named by refs/main
            folder = hf_cache_dir() / f"models--{cfg.hf_hub_id.replace('/', '--')}" / "snapshots" / "REVISION"
            file = f"model.safetensors of {cfg.hf_hub_id} (`huggingface-cli download {cfg.hf_hub_id}` fills the cache)"
        else:
            path = torch_hub_file(cfg.url)
            folder, file = path.parent, path.name
        model = _download(name, weights, folder, file, lambda: timm.create_model(arch, pretrained=True, **kwargs))
        cached = _timm_cached(cfg) or cfg.hf_hub_id or cfg.url
    head = cfg.classifier if isinstance(cfg.classifier, (tuple, list)) else (cfg.classifier,)
    swapped = tuple(str(h) for h in head if h) if wanted != classes else ()
    return Pretrained(model, name, "timm", weights, str(cached), classes, wanted, swapped)


def _timm_cached(cfg) -> Path | None:
    """The cached weights file of a timm pretrained config: the Hugging Face snapshot of its hub
    id (safetensors first, as timm reads it), else torch.hub's download of its URL; None if neither."""
    if cfg.hf_hub_id:
        repo = hf_cache_dir() / f"models--{cfg.hf_hub_id.replace('/', '--')}"
        ref = repo / "refs" / "main"
        if ref.is_file():
            snapshot = repo / "snapshots" / ref.read_text().strip()
            names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
            for file in names:
                if (snapshot / file).is_file():
                    return snapshot / file
    if cfg.url and torch_hub_file(cfg.url).is_file():
        return torch_hub_file(cfg.url)
    return None
