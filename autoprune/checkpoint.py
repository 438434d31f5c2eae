"""Checkpoints: write atomically, read with ``weights_only=True``, rebuild the model they record.

A checkpoint is a dict of plain data (numbers, strings, lists, dicts, tensors): the model's
state plus fields such as ``epoch``, ``config``, ``arch``, ``model_name``, ``model_kwargs``,
``dataset``. Nothing in it is executed when it is read.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
import torch.nn as nn

from autoprune.arch import build
from autoprune.errors import CheckpointError, one_line
from autoprune.files import torch_save
from autoprune.models import create_model
from autoprune.version import __version__

CHECKPOINT_FORMAT = "autoprune.checkpoint/1"


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path, model: nn.Module, *, sgd=None, scheduler=None, **fields_) -> Path:
    """Write model (and optionally the torch optimizer / scheduler) state plus ``fields_`` atomically.

    ``fields_`` should hold plain data (numbers, strings, lists, dicts, tensors) so that
    :func:`load_checkpoint` can read it with ``weights_only=True``: typically ``epoch``,
    ``config``, ``arch``, ``model_name``, ``model_kwargs``, ``history``.
    """
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "autoprune_version": __version__,
               "model": _unwrap(model).state_dict(), **fields_}
    if sgd is not None:
        payload["optimizer"] = sgd.state_dict()
    if scheduler is not None:
        payload["scheduler"] = scheduler.state_dict()
    torch_save(payload, path)
    return path


def check_state_dict(model: nn.Module, state: dict, source="checkpoint") -> None:
    """Raise :class:`CheckpointError` naming the keys and shapes where ``state`` does not fit ``model``."""
    own = _unwrap(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches, e.g. {'; '.join(shapes[:3])}")
    if missing:
        problems.append(f"{len(missing)} missing keys, e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys, e.g. {', '.join(unexpected[:3])}")
    if problems:
        raise CheckpointError(f"{source} is for another model: {'; '.join(problems)}")


def load_checkpoint(path, model: nn.Module | None = None, *, sgd=None, scheduler=None,
                    map_location="cpu") -> dict:
    """Read a checkpoint (``weights_only=True``) and load it into the given objects.

    Returns the checkpoint dict. A bare state_dict file is accepted too (returned as
    ``{"model": state}``). Raises :class:`CheckpointError` when the file is missing, cannot
    be read, or does not fit ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises loading with weights_only=False, i.e. running the file's code: never.
        raise CheckpointError(f"'{path}' is not a readable checkpoint: it holds pickled objects other than tensors "
                              "and plain data, which autoprune does not load") from None
    except Exception as exc:  # noqa: BLE001 — torch raises anything for a damaged file; one line for the user
        raise CheckpointError(f"'{path}' is not a readable checkpoint ({one_line(exc)[:200]})") from None
    if isinstance(ckpt, dict) and "model" not in ckpt and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        ckpt = {"model": ckpt}
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"'{path}' holds no model state (not an autoprune checkpoint)")
    if model is not None:
        check_state_dict(model, ckpt["model"], f"checkpoint '{path}'")
        _unwrap(model).load_state_dict(ckpt["model"])
    try:
        if sgd is not None and "optimizer" in ckpt:
            sgd.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and "scheduler" in ckpt:
            scheduler.load_state_dict(ckpt["scheduler"])
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint '{path}': optimizer state does not fit ({exc})") from None
    return ckpt


def model_from_checkpoint(path, *, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model a checkpoint records (architecture JSON or registry name) and load it."""
    ckpt = load_checkpoint(path)
    if ckpt.get("arch"):
        model = build(ckpt["arch"])
    elif ckpt.get("model_name"):
        model = create_model(ckpt["model_name"], **ckpt.get("model_kwargs", {}))
    else:
        raise CheckpointError(f"checkpoint '{path}' does not record its model; build the model and call "
                              "load_checkpoint(path, model)")
    check_state_dict(model, ckpt["model"], f"checkpoint '{path}'")
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt
