"""Checkpoints: write atomically, read with ``weights_only=True``, rebuild the model they record.

A checkpoint is a dict of plain data (numbers, strings, lists, dicts, tensors): the model's
state plus fields such as ``epoch``, ``config``, ``arch``, ``model_name``, ``model_kwargs``,
``dataset``. Nothing in it is executed when it is read.
"""

from __future__ import annotations

import hashlib
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
    ckpt = _read(path, map_location)
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


def _read(path: Path, map_location="cpu"):
    """The object a checkpoint file holds, read with ``weights_only=True``; CheckpointError otherwise."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises loading with weights_only=False, i.e. running the file's code: never.
        raise CheckpointError(f"'{path}' is not a readable checkpoint: it holds pickled objects other than tensors "
                              "and plain data, which autoprune does not load") from None
    except Exception as exc:  # noqa: BLE001 — torch raises anything for a damaged file; one line for the user
        raise CheckpointError(f"'{path}' is not a readable checkpoint ({one_line(exc)[:200]})") from None


# Where other tools put the weights inside a checkpoint dict, in the order they are looked for.
STATE_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")
# Key prefixes wrappers add: DistributedDataParallel / DataParallel, torch.compile.
_PREFIXES = ("module.", "_orig_mod.")


def read_state_dict(path) -> dict:
    """The weights a file holds, whatever tool wrote it: a plain ``state_dict``, or a checkpoint
    dict that keeps one under ``state_dict``, ``model_state_dict``, ``model`` (autoprune's own),
    ``module``, ``net`` or ``weights`` (nested wrappers too), with the ``module.`` prefix of
    DistributedDataParallel and ``_orig_mod.`` of torch.compile removed. Read with
    ``weights_only=True``; CheckpointError when the file holds no tensors to load."""
    return _state_of(_read(Path(path)), Path(path))


def _state_of(state, path: Path) -> dict:
    for _ in range(3):  # {"checkpoint": {"state_dict": ...}}-style nesting, a few levels deep
        if not isinstance(state, dict) or _is_state(state):
            break
        state = next((state[k] for k in STATE_KEYS if isinstance(state.get(k), dict)), None)
    if not isinstance(state, dict) or not _is_state(state):
        raise CheckpointError(f"'{path}' holds no state dict (a dict of tensors, or one under "
                              f"{', '.join(STATE_KEYS)})")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _is_state(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) for k in d) and all(torch.is_tensor(v) for v in d.values())


def load_weights(model: nn.Module, path) -> dict:
    """Load the weights in ``path`` (see :func:`read_state_dict`) into ``model``; returns a record
    of them (path, sha1, tensors, and the ``dataset`` an autoprune checkpoint records). A state
    dict that does not fit ``model`` is a CheckpointError
    naming the first missing and unexpected keys. BatchNorm counters (``num_batches_tracked``)
    that older files lack are kept from the model."""
    raw = _read(Path(path))
    state = _state_of(raw, Path(path))
    own = _unwrap(model).state_dict()
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}, **state}
    check_state_dict(model, state, f"weights '{path}'")
    _unwrap(model).load_state_dict(state)
    info = {"kind": "weights", "path": str(path), "sha1": file_sha1(path), "tensors": len(state)}
    if isinstance(raw, dict) and isinstance(raw.get("dataset"), dict):  # an autoprune checkpoint's data record
        info["dataset"] = raw["dataset"]
    return info


def file_sha1(path) -> str:
    """The SHA-1 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
