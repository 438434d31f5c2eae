"""Where and how code runs: the device, bf16 autocast, progress bars and log lines.

Every layer that trains or scores (training, the evaluator, DMCP, the commands) takes these
from here, so that "CUDA when there is one", "bf16 on CUDA, fp32 on the CPU" and "progress on
stderr, stdout stays clean for --json" are each decided once.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from tqdm.auto import tqdm

from autoprune.errors import DeviceError


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``name`` as a device; ``None`` means CUDA when there is one, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device '{name}'; expected cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' requested but CUDA is not available here; use --device cpu")
    return device


def autocast(device: torch.device):
    """bf16 autocast on CUDA (no loss scaling, fp32's range); a no-op on the CPU, where fp32 is
    both faster and exact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class NoBar:
    """What :func:`progress_bar` returns when progress is off: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "NoBar":
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress_bar(total: int, desc: str, show: bool, *, initial: int = 0):
    """A tqdm bar on stderr (stdout stays clean for --json output), or a :class:`NoBar` when not
    ``show``; either is a context manager that closes the bar."""
    if not show:
        return NoBar()
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


def log(msg: str) -> None:
    """One line on stderr that does not break a progress bar (stdout stays clean for --json)."""
    tqdm.write(msg, file=sys.stderr)
