"""Where datasets come from: :func:`load_data` by name, and the seeded validation split.

Resident datasets are read into a raw dict of uint8 tensors (``train_x``, ``train_y``,
``test_x``, ``test_y``, ``num_classes``, ``source``, optionally ``classes``, ``mean``,
``std``) by one loader per source kind, then ``_split`` carves the validation
split out of the training images and builds the :class:`~autoprune.data.Data`.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import torch

from autoprune.data.folders import is_folder_source, load_folder_source
from autoprune.data.resident import Data
from autoprune.data.streaming import StreamData
from autoprune.errors import DataError, one_line


def default_data_dir() -> Path:
    """``$AUTOPRUNE_DATA`` or ``./data``: where torchvision-format datasets are looked for."""
    return Path(os.environ.get("AUTOPRUNE_DATA", "data"))


def load_data(name: str, data_dir: str | os.PathLike | None = None, *, val_size: int = 5000, seed: int = 0,
              device: str | torch.device = "cpu", limit: int | None = None, cache_dir=None,
              **options) -> Data | StreamData:
    """Load a dataset by name (see :mod:`autoprune.data`) and split off a validation set.

    ``val_size`` images are drawn from the training set with ``seed`` and held out; ``limit``
    then keeps a seeded subset of that many training images (for tests and CPU benchmarks).
    ``options`` go to the ``synthetic`` generator (``n_train``, ``n_test``, ``num_classes``,
    ``image_size``, ``channels``) or to :meth:`StreamData.from_folder`. Raises
    :class:`DataError` saying where it looked and how to get the data when the dataset cannot
    be found or decoded.
    """
    if name.startswith("imagefolder:"):
        return StreamData.from_folder(name.split(":", 1)[1], val_size=val_size, seed=seed, limit=limit, **options)
    key = name.lower().replace("_", "-")
    if key == "synthetic":
        raw = _synthetic(**options)
    elif options:
        raise DataError(f"dataset '{name}' takes no options {sorted(options)}")
    elif is_folder_source(Path(name)):
        raw = load_folder_source(Path(name), cache_dir)
    elif data_dir is not None and is_folder_source(Path(data_dir)):
        raw = load_folder_source(Path(data_dir), cache_dir)
    elif key in ("cifar10", "cifar100"):
        raw = _load_cifar(key, Path(data_dir) if data_dir is not None else default_data_dir())
    elif key in ("fashion-mnist", "fashionmnist"):
        raw = _load_fashion_mnist(Path(data_dir) if data_dir is not None else default_data_dir())
    else:
        raise DataError(f"unknown dataset '{name}'; expected cifar10, cifar100, fashion-mnist, synthetic, "
                        "imagefolder:PATH, or a path to an ImageFolder directory or .tar.gz with train/ and test/")
    return _split(raw, name=name, val_size=val_size, seed=seed, limit=limit, device=device)


def _split(raw: dict, *, name: str, val_size: int, seed: int, limit: int | None, device) -> Data:
    """A :class:`Data` from a loader's raw dict, with ``val_size`` seeded training images held out.

    The validation split never overlaps the training split; the test split is left untouched
    for final reporting. ``mean``/``std`` come from ``raw`` or from the training images.
    """
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
    """Random images whose class is a fixed low-frequency colour pattern plus noise, as a raw dict.

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
    # Deferred on purpose: torchvision takes ~2 s to import and only these loaders need it.
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
                    f"downloading it failed ({type(exc).__name__}: {one_line(exc)}); "
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
_FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


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
        # Deferred on purpose: torchvision takes ~2 s to import and is only needed to download.
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
    return {"train_x": t["train_x"].unsqueeze(1), "train_y": t["train_y"].long(),
            "test_x": t["test_x"].unsqueeze(1), "test_y": t["test_y"].long(), "num_classes": 10,
            "source": f"idx:{paths['train_x'].parent}", "classes": list(_FMNIST_CLASSES)}
