"""Atomic file writes: a reader (or a crash) sees the old file or the whole new one, never
half of one. Every result file autoprune writes goes through here.

Files end up with the mode a plain ``open(path, "w")`` gives a new file: ``0o666 & ~umask``.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import IO, Any, Callable

import torch

from autoprune.errors import OutputError

# Temp files are created with mode 0o666 and O_EXCL, and the kernel applies the umask (and any
# default ACL of the directory) itself, exactly as it does for open(path, "w"). We do not use
# tempfile.mkstemp (always 0o600) followed by a chmod, because that needs the umask, and the
# only portable way to read it, os.umask(0); os.umask(old), briefly sets a process-wide umask
# of 0 that other threads creating files would inherit (a lock only guards our own callers);
# caching it at import would miss a later os.umask() call.
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_TMP_ATTEMPTS = 100


def _create_temp(directory: Path, name: str) -> tuple[int, Path]:
    """A new, empty file beside the target, opened for writing: (fd, path)."""
    for _ in range(_TMP_ATTEMPTS):
        tmp = directory / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _TMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {directory / name}")


def check_out_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as a Path if it is, or can become, a writable folder; OutputError otherwise.

    Nothing is left behind (the check creates and removes a probe). Commands check their
    output folder before any work, so that a bad one is one line at the start rather than a
    traceback after training.
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe.parent != probe:
        if probe.is_symlink():
            raise OutputError(f"{what} '{path}': '{probe}' is a broken symbolic link")
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == path else f"lies under the file '{probe}'"
        raise OutputError(f"{what} '{path}' {where}; give a folder")
    try:  # a real probe: os.access says yes to root on a folder that /proc or a read-only mount refuses
        if probe == path:
            fd, tmp = _create_temp(path, "write-probe")
            os.close(fd)
            tmp.unlink()
        else:
            first = path
            while first.parent != probe:
                first = first.parent
            first.mkdir()
            first.rmdir()
    except OSError as exc:
        raise OutputError(f"{what} '{path}' cannot be written ({exc.strerror or type(exc).__name__})") from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool = False) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it into place.

    On any failure the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        try:
            f = os.fdopen(fd, "wb" if binary else "w", **({} if binary else {"newline": ""}))
        except BaseException:
            os.close(fd)
            raise
        with f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json(data: Any, path: str | os.PathLike) -> Path:
    def dump(f):
        json.dump(data, f, indent=2)
        f.write("\n")

    return atomic_write(path, dump)


def write_text(text: str, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f), binary=True)
