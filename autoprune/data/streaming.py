"""ImageNet-style ImageFolder trees too large to keep resident, streamed through DataLoader workers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.utils.data

from autoprune.data.base import check_batch_size, check_split, count_batches
from autoprune.errors import DataError

# ImageNet's customary normalisation; a streamed tree is too large to measure its own.
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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

    @classmethod
    def from_folder(cls, root, *, val_size: int = 5000, seed: int = 0, limit: int | None = None,
                    image_size: int = 224, num_workers: int | None = None) -> StreamData:
        """Scan ``root/train`` and ``root/val`` (or ``root/test``) and hold out ``val_size`` seeded
        training images; images are later resized and cropped to ``image_size``."""
        # Deferred on purpose: torchvision takes ~2 s to import and only streaming needs it here.
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
                   mean=_IMAGENET_MEAN, std=_IMAGENET_STD, indices=indices,
                   samples={"train": train.samples, "test": test.samples}, meta=meta, num_workers=workers)

    @property
    def resident(self) -> bool:
        """Always False: images are read from disk per batch, so :meth:`split` has no tensors."""
        return False

    def num_examples(self, split: str) -> int:
        """How many images ``split`` holds (0 for an empty validation split)."""
        check_split(split)
        return len(self.samples["test"]) if split == "test" else len(self.indices[split])

    def to(self, device: str | torch.device) -> StreamData:
        """A copy (with its own ``meta``); batches are read on the host and moved by the caller."""
        return dataclasses.replace(self, meta=dict(self.meta))

    def _dataset(self, split: str, augment: bool) -> _FileDataset:
        # Deferred on purpose: torchvision takes ~2 s to import and only streaming needs it here.
        from torchvision import transforms as T
        from torchvision.datasets.folder import default_loader

        size = self.input_shape[1]
        if augment:
            tf = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        else:
            tf = [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
        tf = T.Compose(tf + [T.ToTensor(), T.Normalize(self.mean, self.std)])
        if split == "test":
            return _FileDataset(self.samples["test"], tf, default_loader)
        return _FileDataset([self.samples["train"][i] for i in self.indices[split]], tf, default_loader)

    def batches(self, split: str, *, batch_size: int, train: bool, generator: torch.Generator | None = None,
                augment: bool | None = None, rank: int = 0, world_size: int = 1,
                channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches of one split from DataLoader workers, ordered like :func:`iterate`'s."""
        check_split(split)
        check_batch_size(batch_size)
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
        """How many batches :meth:`batches` yields per rank with the same arguments."""
        return count_batches(self.num_examples(split) // world_size, batch_size, train)

    def split(self, name: str):
        """Always raises :class:`DataError`: a streamed dataset has no resident tensors."""
        raise DataError(f"'{self.root}' is streamed; it has no resident {name} tensors (use .batches())")


class _FileDataset(torch.utils.data.Dataset):
    """(path, label) pairs read with ``loader`` (PIL) and transformed, in DataLoader workers."""

    def __init__(self, samples: list, transform: Callable, loader: Callable):
        self.samples, self.transform, self.loader = samples, transform, loader

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.transform(self.loader(path)), label
