"""Datasets resident on the training device as uint8 tensors, and the fast batch iterator.

Small image datasets (CIFAR-10/100, Fashion-MNIST, JPEG ImageFolder copies of them) fit in
memory as uint8: 50,000 CIFAR images are 150 MB. Keeping them resident on the training
device and doing augmentation as batched tensor ops removes the per-sample Python work that
bounds a conventional DataLoader (VGG16 trains at about 68k img/s this way on one H200,
against 42k through an 8-worker per-sample DataLoader; see BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from autoprune.data.base import check_batch_size, check_split, count_batches
from autoprune.errors import DataError


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

    @property
    def resident(self) -> bool:
        """Always True: the splits are tensors that :meth:`split` returns."""
        return True

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x, y) tensors of split ``train``, ``val`` or ``test``."""
        check_split(name)
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def num_examples(self, split: str) -> int:
        """How many images ``split`` holds (0 for an empty validation split)."""
        return len(self.split(split)[1])

    def to(self, device: str | torch.device) -> Data:
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
        """How many batches :meth:`batches` yields per rank with the same arguments."""
        return count_batches(self.num_examples(split) // world_size, batch_size, train)


# --------------------------------------------------------------------------------------------
# The fast path: batches as slices of one permutation, augmentation as one gather.
# --------------------------------------------------------------------------------------------


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
    check_batch_size(batch_size)
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
    count = count_batches(len(order), batch_size, train)
    for i in range(count):
        idx = order[i * batch_size:(i + 1) * batch_size]
        xb = x[idx]
        if augment:
            xb = augment_batch(xb, generator, pad=pad, pad_mode=pad_mode)
        xb = ((xb.float() - mean_t) / std_t).to(dtype)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield xb, y[idx]
