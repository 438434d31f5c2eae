"""ImageFolder directories and ``.tar.gz`` archives, decoded once into a cached uint8 tensor file.

A source holds ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (an archive may add one
top-level folder). The first load decodes every image into one uint8 NCHW tensor per split
and saves them under the cache directory, keyed by the source's path, size and mtime; later
loads read that file.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from autoprune.errors import DataError, one_line
from autoprune.files import torch_save

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
CACHE_FORMAT = "autoprune.data/1"
# Bumped whenever the decoded tensor layout changes, so stale cache files are ignored.
_CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$AUTOPRUNE_CACHE`` or ``~/.cache/autoprune``: decoded tensor files go here."""
    env = os.environ.get("AUTOPRUNE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autoprune"


def is_folder_source(path: Path) -> bool:
    """Whether ``path`` is a directory with ``train/`` and ``test/``, or a tar archive."""
    if path.is_dir():
        return (path / "train").is_dir() and (path / "test").is_dir()
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar"))


def load_folder_source(path: Path, cache_dir=None) -> dict:
    """Decode an ImageFolder tree (directory or tar archive) once; later loads read the cache.

    Returns the raw dict (uint8 ``train_x``, ``test_x``, labels, ``classes``) of every source. The
    archive is read as a stream and decoded in memory rather than extracted: 60,000 tiny
    files would cost more to write than to decode, and the cached tensor file is the only
    thing a second load needs.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache / "datasets" / f"{_source_key(path)}.pt"
    if cache_file.is_file():
        try:
            raw = torch.load(cache_file, map_location="cpu", weights_only=True)
            if raw.get("format") == CACHE_FORMAT and raw.get("version") == _CACHE_VERSION:
                return raw
        except Exception:  # a truncated or foreign cache file is rebuilt, not trusted
            pass
    if path.is_dir():
        files = _walk_folder(path)
    else:
        files = _read_archive(path)
    raw = _decode_folder(files, path)
    raw.update(format=CACHE_FORMAT, version=_CACHE_VERSION)
    try:
        torch_save(raw, cache_file)
    except OSError:
        pass  # a read-only cache only costs the decode next time
    return raw


def _source_key(path: Path) -> str:
    path = path.resolve()
    h = hashlib.sha1(str(path).encode())
    if path.is_file():
        st = path.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    else:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                h.update(f"{p.relative_to(path)}:{p.stat().st_size}".encode())
    stem = path.name.split(".")[0]
    return f"{stem}-{h.hexdigest()[:12]}"


def _walk_folder(root: Path) -> dict[str, list[tuple[str, bytes]]]:
    out: dict[str, list[tuple[str, bytes]]] = {"train": [], "test": []}
    for split in out:
        for p in sorted((root / split).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
                out[split].append((str(p.relative_to(root / split)), p.read_bytes()))
    return out


def _read_archive(path: Path) -> dict[str, list[tuple[str, bytes]]]:
    out: dict[str, list[tuple[str, bytes]]] = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if not member.isfile() or not member.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                parts = Path(member.name).parts
                # Accept train/<class>/x.jpg as well as <top>/train/<class>/x.jpg.
                for i, part in enumerate(parts[:-2]):
                    if part in out:
                        out[part].append(("/".join(parts[i + 1:]), tf.extractfile(member).read()))
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"corrupted or unreadable archive '{path}' ({type(exc).__name__}: {one_line(exc)[:200]}); "
                        "fetch it again or point --data-dir at an extracted ImageFolder directory") from None
    return out


def _decode_folder(files: dict[str, list[tuple[str, bytes]]], source: Path) -> dict:
    for split in ("train", "test"):
        if not files[split]:
            raise DataError(f"'{source}' has no images under {split}/<class>/ (expected an ImageFolder layout "
                            "with train/ and test/ sub-folders)")
    classes = sorted({rel.split("/")[0] for split in files.values() for rel, _ in split})
    index = {c: i for i, c in enumerate(classes)}
    raw: dict = {"num_classes": len(classes), "classes": classes, "source": f"imagefolder:{source}"}
    for split, items in files.items():
        items.sort(key=lambda item: item[0])  # archive order is arbitrary; make it reproducible
        raw[f"{split}_x"] = _decode_images([b for _, b in items], source)
        raw[f"{split}_y"] = torch.tensor([index[rel.split("/")[0]] for rel, _ in items], dtype=torch.long)
    if raw["train_x"].shape[1:] != raw["test_x"].shape[1:]:
        raise DataError(f"'{source}': train images are {tuple(raw['train_x'].shape[1:])} but test images are "
                        f"{tuple(raw['test_x'].shape[1:])}")
    return raw


def _decode_images(blobs: list[bytes], source: Path, chunk: int = 4096) -> torch.Tensor:
    """Decode encoded images to one uint8 NCHW tensor.

    torchvision's batched C decoder takes ~3 s for CIFAR's 60,000 JPEGs on two cores, PIL ~20 s;
    PIL is the fallback for builds where torchvision.io decoding is unavailable.
    """
    out = []
    for start in range(0, len(blobs), chunk):
        part = blobs[start:start + chunk]
        try:
            imgs = _decode_torchvision(part)
        except (ImportError, AttributeError):
            imgs = _decode_pil(part)
        except RuntimeError as exc:
            raise DataError(f"'{source}': cannot decode an image ({one_line(exc)})") from None
        shapes = {tuple(i.shape) for i in imgs}
        if len(shapes) > 1:
            raise DataError(f"'{source}': images of several sizes {sorted(shapes)[:3]}; resident loading needs one "
                            f"size (use imagefolder:{source} to stream and resize)")
        out.append(torch.stack(imgs))
    if len({tuple(t.shape[1:]) for t in out}) > 1:
        raise DataError(f"'{source}': images of several sizes; use imagefolder:{source} to stream and resize")
    return torch.cat(out)


def _decode_torchvision(blobs: list[bytes]) -> list[torch.Tensor]:
    with warnings.catch_warnings():
        # torchvision >= 0.29 announces a move of its decoders to torchcodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Deferred on purpose: torchvision takes ~2 s to import, and a build without its image
        # decoders must fall back to PIL (the ImportError is caught by the caller).
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        if all(b[:2] == b"\xff\xd8" for b in blobs):
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB))
        return [decode_image(t, mode=ImageReadMode.RGB) for t in tensors]


def _decode_pil(blobs: list[bytes]) -> list[torch.Tensor]:
    try:
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1) for b in blobs]
    except (UnidentifiedImageError, OSError) as exc:
        raise RuntimeError(str(exc)) from None
