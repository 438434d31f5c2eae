"""Datasets as resident uint8 tensors, and the fast batch iterator over them.

Small image datasets (CIFAR-10/100, Fashion-MNIST, JPEG ImageFolder copies of them) fit in
memory as uint8: 50,000 CIFAR images are 150 MB. Keeping them resident on the training
device and doing augmentation as batched tensor ops removes the per-sample Python work that
bounds a conventional DataLoader (see DESIGN.md, "Measured facts"). :func:`load_data`
returns a :class:`Data` with train/val/test tensors; :func:`iterate` yields normalised,
augmented batches from them.

Dataset names understood by :func:`load_data`:

* ``cifar10``, ``cifar100`` -- torchvision's pickled format under ``data_dir`` (downloaded
  when missing and the network allows), or an ImageFolder directory / ``.tar.gz`` with
  ``train/`` and ``test/`` given as ``data_dir`` or as the name itself;
* ``fashion-mnist`` -- the IDX files (``train-images-idx3-ubyte[.gz]`` ...) in ``data_dir``,
  its ``FashionMNIST/raw`` sub-folder, or downloaded through torchvision;
* ``synthetic`` -- a small deterministic dataset whose classes are learnable, for tests;
* a path to an ImageFolder directory or ``.tar.gz`` with ``train/`` and ``test/``;
* ``imagefolder:PATH`` -- an ImageNet-style tree (``train/`` and ``val/``) too large to keep
  resident; returns a :class:`StreamData` that feeds a standard DataLoader with workers.

The validation split is carved from the training images with a seeded permutation and never
overlaps the training split; the test split is left untouched for final reporting.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import operator
import os
import struct
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from autoprune.errors import DataError
from autoprune.files import torch_save

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")
CACHE_FORMAT = "autoprune.data/1"
# Bumped whenever the decoded tensor layout changes, so stale cache files are ignored.
_CACHE_VERSION = 1


@dataclass
class Data:
    """A dataset resident in memory as uint8 NCHW tensors, split into train / val / test.

    ``mean`` and ``std`` are per-channel on the 0..1 scale, computed from the training split
    (or the dataset's customary values); :func:`iterate` applies them on the fly.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict = field(default_factory=dict)

    streamed = False

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) tensors of split ``train``, ``val`` or ``test``."""
        if name not in ("train", "val", "test"):
            raise DataError(f"unknown split '{name}'; expected train, val or test")
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def to(self, device: str | torch.device) -> "Data":
        """A copy with every tensor moved to ``device`` (the uint8 images stay uint8)."""
        moved = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return Data(**moved, num_classes=self.num_classes, input_shape=self.input_shape, mean=self.mean,
                    std=self.std, meta=dict(self.meta))

    def batches(self, split: str, *, batch_size: int, train: bool, generator: torch.Generator | None = None,
                augment: bool | None = None, rank: int = 0, world_size: int = 1,
                channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches of one split; see :func:`iterate`."""
        x, y = self.split(split)
        return iterate(x, y, batch_size=batch_size, train=train, generator=generator, mean=self.mean, std=self.std,
                       augment=augment, rank=rank, world_size=world_size, channels_last=channels_last)

    def num_batches(self, split: str, *, batch_size: int, train: bool, world_size: int = 1) -> int:
        return _num_batches(len(self.split(split)[1]) // world_size, batch_size, train)


# --------------------------------------------------------------------------------------------
# The fast path: batches as slices of one permutation, augmentation as one gather.
# --------------------------------------------------------------------------------------------


def _check_batch_size(batch_size) -> None:
    try:
        ok = not isinstance(batch_size, bool) and operator.index(batch_size) >= 1
    except TypeError:
        ok = False
    if not ok:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")


def _num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    # A training epoch drops the ragged last batch (a tiny batch gives noisy BN statistics),
    # unless that would leave no batch at all on a tiny dataset.
    _check_batch_size(batch_size)
    if drop_last and n >= batch_size:
        return n // batch_size
    return -(-n // batch_size)


def augment_batch(x: torch.Tensor, generator: torch.Generator | None = None, *, pad: int = 4,
                  pad_mode: str = "reflect", flip: bool = True) -> torch.Tensor:
    """Random crop of a padded image plus random horizontal flip, per sample, on any device.

    Crop, padding and flip are one index gather: for each sample a row and a column offset in
    ``[-pad, pad]`` is drawn, and source indices that fall outside the image are reflected
    (``reflect``) or mapped to zero (``zero``, the torchvision ``RandomCrop(padding=4)``
    behaviour). No padded copy of the batch is made. Random numbers come from ``generator``
    on the CPU, so a seed gives the same batch on every device.
    """
    if pad_mode not in ("reflect", "zero"):
        raise DataError(f"unknown pad mode '{pad_mode}'; expected reflect or zero")
    n, c, h, w = x.shape
    if pad > 0:
        dy = torch.randint(-pad, pad + 1, (n,), generator=generator)
        dx = torch.randint(-pad, pad + 1, (n,), generator=generator)
    else:
        dy = dx = torch.zeros(n, dtype=torch.long)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    dev = x.device
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)
    base_cols = torch.arange(w, device=dev).expand(n, w)
    base_cols = torch.where(flips.to(dev)[:, None], (w - 1) - base_cols, base_cols)
    cols = dx.to(dev)[:, None] + base_cols
    if pad_mode == "reflect":
        rows = _reflect(rows, h)
        cols = _reflect(cols, w)
        valid = None
    else:
        valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    # Gather rows then columns: x[b, :, rows[b], :][..., cols[b]].
    out = torch.gather(x, 2, rows[:, None, :, None].expand(n, c, h, w))
    out = torch.gather(out, 3, cols[:, None, None, :].expand(n, c, h, w))
    if valid is not None:
        out = out * valid[:, None].to(out.dtype)
    return out


def _reflect(idx: torch.Tensor, size: int) -> torch.Tensor:
    idx = torch.where(idx < 0, -idx, idx)
    idx = torch.where(idx >= size, 2 * (size - 1) - idx, idx)
    return idx.clamp(0, size - 1)  # only reachable when pad >= size (tiny images)


def normalize(x: torch.Tensor, mean, std, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images → ``(x/255 - mean) / std`` in ``dtype``; mean/std as sequences or tensors."""
    m, s = _scale(mean, std, x.device)
    return ((x.float() - m) / s).to(dtype)


def _scale(mean, std, device) -> tuple[torch.Tensor, torch.Tensor]:
    # On the 0..255 scale, shaped to broadcast over NCHW.
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255
    return m.to(device), s.to(device)


def iterate(x: torch.Tensor, y: torch.Tensor, *, batch_size: int, train: bool,
            generator: torch.Generator | None = None, mean=(0.5,), std=(0.5,), augment: bool | None = None,
            channels_last: bool = False, dtype: torch.dtype = torch.float32, pad: int = 4,
            pad_mode: str = "reflect", rank: int = 0, world_size: int = 1
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` batches from resident uint8 images.

    ``train=True`` shuffles with ``generator`` (a CPU ``torch.Generator``; same seed → same
    batches), augments (random crop with ``pad`` + flip, unless ``augment=False``) and drops a
    ragged last batch. ``train=False`` keeps the order and every image. Under data-parallel
    training each of ``world_size`` ranks takes an equal, disjoint slice of the same
    permutation (what ``DistributedSampler`` does), so all ranks must pass equally seeded
    generators. Images stay uint8 until the batch is cut; normalisation happens per batch.
    Raises :class:`DataError` for a ``batch_size`` below 1 (when called, not when iterated).
    """
    _check_batch_size(batch_size)
    return _iterate(x, y, batch_size=batch_size, train=train, generator=generator, mean=mean, std=std,
                    augment=augment, channels_last=channels_last, dtype=dtype, pad=pad, pad_mode=pad_mode,
                    rank=rank, world_size=world_size)


def _iterate(x, y, *, batch_size, train, generator, mean, std, augment, channels_last, dtype, pad, pad_mode,
             rank, world_size):
    if augment is None:
        augment = train
    n = len(y)
    if train:
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    if world_size > 1:
        per_rank = n // world_size
        order = order[rank::world_size][:per_rank]
    order = order.to(x.device)
    # Built once per pass: a host-to-device copy per batch would stall the GPU queue.
    mean_t, std_t = _scale(mean, std, x.device)
    count = _num_batches(len(order), batch_size, train)
    for i in range(count):
        idx = order[i * batch_size:(i + 1) * batch_size]
        xb = x[idx]
        if augment:
            xb = augment_batch(xb, generator, pad=pad, pad_mode=pad_mode)
        xb = ((xb.float() - mean_t) / std_t).to(dtype)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield xb, y[idx]


# --------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------


def default_data_dir() -> Path:
    """``$AUTOPRUNE_DATA`` or ``./data``: where torchvision-format datasets are looked for."""
    return Path(os.environ.get("AUTOPRUNE_DATA", "data"))


def default_cache_dir() -> Path:
    """``$AUTOPRUNE_CACHE`` or ``~/.cache/autoprune``: decoded tensor files go here."""
    env = os.environ.get("AUTOPRUNE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "autoprune"


def load_data(name: str, data_dir: str | os.PathLike | None = None, *, val_size: int = 5000, seed: int = 0,
              device: str | torch.device = "cpu", limit: int | None = None, cache_dir=None,
              **options) -> "Data | StreamData":
    """Load a dataset by name (see the module docstring) and split off a validation set.

    ``val_size`` images are drawn from the training set with ``seed`` and held out; ``limit``
    then keeps a seeded subset of that many training images (for tests and CPU benchmarks).
    ``options`` go to the ``synthetic`` generator (``n_train``, ``n_test``, ``num_classes``,
    ``image_size``, ``channels``). Raises :class:`DataError` saying where it looked and how to
    get the data when the dataset cannot be found or decoded.
    """
    if name.startswith("imagefolder:"):
        return StreamData.from_folder(name.split(":", 1)[1], val_size=val_size, seed=seed, limit=limit, **options)
    key = name.lower().replace("_", "-")
    if key == "synthetic":
        raw = _synthetic(**options)
    elif options:
        raise DataError(f"dataset '{name}' takes no options {sorted(options)}")
    elif _is_folder_source(Path(name)):
        raw = _load_folder_source(Path(name), cache_dir)
    elif data_dir is not None and _is_folder_source(Path(data_dir)):
        raw = _load_folder_source(Path(data_dir), cache_dir)
    elif key in ("cifar10", "cifar100"):
        raw = _load_cifar(key, Path(data_dir) if data_dir is not None else default_data_dir())
    elif key in ("fashion-mnist", "fashionmnist"):
        raw = _load_fashion_mnist(Path(data_dir) if data_dir is not None else default_data_dir())
    else:
        raise DataError(f"unknown dataset '{name}'; expected cifar10, cifar100, fashion-mnist, synthetic, "
                        "imagefolder:PATH, or a path to an ImageFolder directory or .tar.gz with train/ and test/")
    return _split(raw, name=name, val_size=val_size, seed=seed, limit=limit, device=device)


def _split(raw: dict, *, name: str, val_size: int, seed: int, limit: int | None, device) -> Data:
    x, y = raw["train_x"], raw["train_y"]
    n = len(y)
    if not 0 <= val_size < n:
        raise DataError(f"val_size {val_size} must be at least 0 and leave training images out of the {n} "
                        f"of '{name}' (pass a smaller --val-size)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:val_size], perm[val_size:]
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be a positive number of training images, got {limit}")
        train_idx = train_idx[:limit]
    mean, std = raw.get("mean"), raw.get("std")
    if mean is None:
        # From every non-validation training image, before `limit`: a model trained on a subset
        # and evaluated on the full data must see the same normalisation.
        mean, std = _channel_stats(x, perm[val_size:])
    # Sorted indices keep memory access sequential and make the subsets easy to inspect.
    train_idx, val_idx = train_idx.sort().values, val_idx.sort().values
    train_x = x[train_idx]
    shape = tuple(int(s) for s in x.shape[1:])
    meta = {
        "name": name,
        "source": raw["source"],
        "val_size": int(val_size),
        "seed": int(seed),
        "limit": limit,
        "sizes": {"train": len(train_idx), "val": len(val_idx), "test": len(raw["test_y"])},
        "classes": raw.get("classes"),
        "mean": list(mean),
        "std": list(std),
    }
    data = Data(train_x=train_x, train_y=y[train_idx], val_x=x[val_idx], val_y=y[val_idx],
                test_x=raw["test_x"], test_y=raw["test_y"], num_classes=int(raw["num_classes"]),
                input_shape=shape, mean=tuple(mean), std=tuple(std), meta=meta)
    return data.to(device) if torch.device(device).type != "cpu" else data


def _channel_stats(x: torch.Tensor, indices: torch.Tensor, max_images: int = 10000
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    # A seeded spread-out sample: ImageFolder data arrives sorted by class, so a prefix is biased.
    pick = torch.randperm(len(indices), generator=torch.Generator().manual_seed(0))[:max_images]
    idx = indices[pick]
    sample = x[idx].double() / 255
    mean = sample.mean(dim=(0, 2, 3))
    std = sample.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _synthetic(*, n_train: int = 1024, n_test: int = 256, num_classes: int = 4, image_size: int = 32,
               channels: int = 3, seed: int = 1234) -> dict:
    """Random images whose class is a fixed low-frequency colour pattern plus noise.

    Deterministic for a given ``seed``; a small CNN learns it to high accuracy in a few
    epochs, so tests can check that training makes progress.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, channels, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear",
                                                align_corners=False)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.rand(n, channels, image_size, image_size, generator=g)
        x = 0.6 * templates[y] + 0.4 * noise
        return (x * 255).round().clamp(0, 255).to(torch.uint8), y

    train_x, train_y = make(n_train)
    test_x, test_y = make(n_test)
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "num_classes": num_classes, "source": f"synthetic(seed={seed})",
            "classes": [str(i) for i in range(num_classes)]}


# ---- torchvision CIFAR -----------------------------------------------------------------------

_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _load_cifar(key: str, root: Path) -> dict:
    import torchvision

    cls = torchvision.datasets.CIFAR10 if key == "cifar10" else torchvision.datasets.CIFAR100
    existed = root.exists()
    splits = {}
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=False)
        except RuntimeError:
            try:
                ds = cls(root=str(root), train=train, download=True)
            except Exception as exc:  # no network, disk full, bad checksum, ...
                _remove_if_empty(root, existed)
                raise DataError(
                    f"{key} not found under '{root}' (looked for torchvision's '{cls.base_folder}') and "
                    f"downloading it failed ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    f"run once with network access, copy '{cls.base_folder}' into '{root}', or pass --data-dir "
                    "pointing at an ImageFolder directory or .tar.gz with train/ and test/"
                ) from None
        x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        splits["train" if train else "test"] = (x, torch.tensor(ds.targets, dtype=torch.long))
    mean, std = _CIFAR_STATS[key]
    return {"train_x": splits["train"][0], "train_y": splits["train"][1], "test_x": splits["test"][0],
            "test_y": splits["test"][1], "num_classes": 10 if key == "cifar10" else 100,
            "source": f"torchvision:{root / cls.base_folder}", "classes": list(ds.classes), "mean": mean, "std": std}


def _remove_if_empty(root: Path, existed: bool) -> None:
    # A failed download should not leave behind the empty folder torchvision created for it.
    if not existed:
        for d in sorted([root, *root.rglob("*")], key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass


# ---- Fashion-MNIST IDX -----------------------------------------------------------------------

_FMNIST_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}


def _read_idx(path: Path) -> torch.Tensor:
    """Parse an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
        body = raw[4 + 4 * ndim:]
        expected = 1
        for d in dims:
            expected *= d
        if len(body) != expected:
            raise ValueError(f"{len(body)} bytes of data for shape {dims}")
    except (OSError, EOFError, zlib.error, struct.error, ValueError) as exc:
        raise DataError(f"corrupted IDX file '{path}' ({exc}); delete it and fetch it again") from None
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(*dims)


def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "FashionMNIST" / "raw", root / "fashion-mnist"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _load_fashion_mnist(root: Path) -> dict:
    paths = {k: _find_idx(root, stem) for k, stem in _FMNIST_FILES.items()}
    if any(p is None for p in paths.values()):
        import torchvision

        existed = root.exists()
        try:
            torchvision.datasets.FashionMNIST(root=str(root), train=True, download=True)
            torchvision.datasets.FashionMNIST(root=str(root), train=False, download=True)
        except Exception as exc:
            _remove_if_empty(root, existed)
            missing = [_FMNIST_FILES[k] for k, p in paths.items() if p is None]
            raise DataError(
                f"fashion-mnist: {', '.join(missing)}[.gz] not found in '{root}', '{root}/FashionMNIST/raw' or "
                f"'{root}/fashion-mnist', and downloading failed ({type(exc).__name__}); copy the four IDX files "
                "there or run once with network access"
            ) from None
        paths = {k: _find_idx(root, stem) for k, stem in _FMNIST_FILES.items()}
    t = {k: _read_idx(p) for k, p in paths.items()}
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
    return {"train_x": t["train_x"].unsqueeze(1), "train_y": t["train_y"].long(),
            "test_x": t["test_x"].unsqueeze(1), "test_y": t["test_y"].long(), "num_classes": 10,
            "source": f"idx:{paths['train_x'].parent}", "classes": classes}


# ---- ImageFolder directories and archives, decoded once and cached ---------------------------


def _is_folder_source(path: Path) -> bool:
    if path.is_dir():
        return (path / "train").is_dir() and (path / "test").is_dir()
    return path.is_file() and path.name.endswith((".tar.gz", ".tgz", ".tar"))


def _load_folder_source(path: Path, cache_dir) -> dict:
    """Decode an ImageFolder tree (directory or tar archive) once; later loads read the cache.

    The archive is read as a stream and decoded in memory rather than extracted: 60,000 tiny
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
        raise DataError(f"corrupted or unreadable archive '{path}' ({type(exc).__name__}: {exc}); "
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
            raise DataError(f"'{source}': cannot decode an image ({str(exc).splitlines()[0]})") from None
        shapes = {tuple(i.shape) for i in imgs}
        if len(shapes) > 1:
            raise DataError(f"'{source}': images of several sizes {sorted(shapes)[:3]}; resident loading needs one "
                            f"size (use imagefolder:{source} to stream and resize)")
        out.append(torch.stack(imgs))
    if len({tuple(t.shape[1:]) for t in out}) > 1:
        raise DataError(f"'{source}': images of several sizes; use imagefolder:{source} to stream and resize")
    return torch.cat(out)


def _decode_torchvision(blobs: list[bytes]) -> list[torch.Tensor]:
    import warnings

    with warnings.catch_warnings():
        # torchvision >= 0.29 announces a move of its decoders to torchcodec; they still work.
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg

        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        if all(b[:2] == b"\xff\xd8" for b in blobs):
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB))
        return [decode_image(t, mode=ImageReadMode.RGB) for t in tensors]


def _decode_pil(blobs: list[bytes]) -> list[torch.Tensor]:
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(b)).convert("RGB"))).permute(2, 0, 1) for b in blobs]
    except (UnidentifiedImageError, OSError) as exc:
        raise RuntimeError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# Streamed ImageNet-style folders.
# --------------------------------------------------------------------------------------------


@dataclass
class StreamData:
    """An ImageFolder tree too large to keep resident, read through DataLoader workers.

    ``train/`` feeds the training and (seeded, disjoint) validation splits, ``val/`` (or
    ``test/``) the test split. Batches come from :meth:`batches` like :class:`Data`'s, already
    normalised, so the trainer treats both alike.
    """

    root: Path
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    indices: dict
    samples: dict = field(default_factory=dict, repr=False)
    meta: dict = field(default_factory=dict)
    num_workers: int = 8

    streamed = True

    @classmethod
    def from_folder(cls, root, *, val_size: int = 5000, seed: int = 0, limit: int | None = None,
                    image_size: int = 224, num_workers: int | None = None) -> "StreamData":
        from torchvision.datasets import ImageFolder

        root = Path(root)
        test_dir = root / "val" if (root / "val").is_dir() else root / "test"
        if not (root / "train").is_dir() or not test_dir.is_dir():
            raise DataError(f"imagefolder '{root}' needs train/<class>/ and val/<class>/ (or test/<class>/) "
                            "sub-folders")
        # Scanned once: listing an ImageNet tree takes seconds, too long to repeat every epoch.
        train = ImageFolder(str(root / "train"))
        test = ImageFolder(str(test_dir))
        if test.classes != train.classes:
            raise DataError(f"imagefolder '{root}': {test_dir.name}/ has other classes than train/")
        n = len(train)
        if not 0 <= val_size < n:
            raise DataError(f"val_size {val_size} must leave training images out of the {n} in '{root}/train'")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        train_idx = perm[val_size:] if limit is None else perm[val_size:val_size + limit]
        indices = {"train": train_idx.sort().values.tolist(), "val": perm[:val_size].sort().values.tolist()}
        workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
        meta = {"name": f"imagefolder:{root}", "source": f"imagefolder:{root}", "val_size": val_size,
                "seed": seed, "limit": limit, "classes": train.classes,
                "sizes": {"train": len(indices["train"]), "val": len(indices["val"]), "test": len(test)}}
        return cls(root=root, num_classes=len(train.classes), input_shape=(3, image_size, image_size),
                   mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), indices=indices,
                   samples={"train": train.samples, "test": test.samples}, meta=meta, num_workers=workers)

    def _dataset(self, split: str, augment: bool):
        from torchvision import transforms as T

        size = self.input_shape[1]
        if augment:
            tf = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        else:
            tf = [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
        tf = T.Compose(tf + [T.ToTensor(), T.Normalize(self.mean, self.std)])
        if split == "test":
            return _FileDataset(self.samples["test"], tf)
        return _FileDataset([self.samples["train"][i] for i in self.indices[split]], tf)

    def batches(self, split: str, *, batch_size: int, train: bool, generator: torch.Generator | None = None,
                augment: bool | None = None, rank: int = 0, world_size: int = 1, channels_last: bool = False):
        _check_batch_size(batch_size)
        return self._batches(split, batch_size, train, generator, augment, rank, world_size, channels_last)

    def _batches(self, split, batch_size, train, generator, augment, rank, world_size, channels_last):
        ds = self._dataset(split, train if augment is None else augment)
        n = len(ds)
        order = torch.randperm(n, generator=generator) if train else torch.arange(n)
        if world_size > 1:
            order = order[rank::world_size][: n // world_size]
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=order.tolist(),
                                             num_workers=self.num_workers, drop_last=train and len(order) >= batch_size,
                                             pin_memory=torch.cuda.is_available(),
                                             persistent_workers=False)
        for xb, yb in loader:
            if channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            yield xb, yb

    def num_batches(self, split: str, *, batch_size: int, train: bool, world_size: int = 1) -> int:
        n = len(self.samples["test"]) if split == "test" else len(self.indices[split])
        return _num_batches(n // world_size, batch_size, train)

    def split(self, name: str):
        raise DataError(f"'{self.root}' is streamed; it has no resident {name} tensors (use .batches())")


class _FileDataset(torch.utils.data.Dataset):
    """(path, label) pairs read with PIL and transformed, in DataLoader workers."""

    def __init__(self, samples: list, transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from torchvision.datasets.folder import default_loader

        path, label = self.samples[i]
        return self.transform(default_loader(path)), label
