"""The :class:`Dataset` protocol every dataset of :mod:`autoprune.data` satisfies.

A trainer, evaluator or search touches a dataset only through these members, so a resident
:class:`~autoprune.data.Data` and a streamed :class:`~autoprune.data.StreamData` are
interchangeable; ``resident`` says which one it has where the difference matters (resident
tensors can be sliced directly and their normalisation overridden).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

from autoprune.checks import check_count
from autoprune.errors import DataError

SPLITS = ("train", "val", "test")


@runtime_checkable
class Dataset(Protocol):
    """What every dataset offers: metadata, shapes, and normalised batches of its splits.

    ``meta`` is a JSON-serialisable dict (``name``, ``source``, ``val_size``, ``seed``,
    ``limit``, ``sizes``, ``classes``, ...) recorded into checkpoints; splits are ``train``,
    ``val`` (seeded, disjoint from ``train``; empty for ``val_size=0``) and ``test``.

    >>> from autoprune.data import Dataset, load_data
    >>> d = load_data("synthetic", val_size=16, n_train=64, n_test=16, image_size=8)
    >>> isinstance(d, Dataset), d.resident, d.num_examples("val")
    (True, True, 16)
    >>> d.num_batches("train", batch_size=16, train=True)
    3
    """

    meta: dict
    num_classes: int
    input_shape: tuple[int, int, int]

    @property
    def resident(self) -> bool:
        """True when the images are held as tensors (``split`` works), False when streamed."""

    def batches(self, split: str, *, batch_size: int, train: bool, generator: torch.Generator | None = None,
                augment: bool | None = None, rank: int = 0, world_size: int = 1,
                channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float ``(images, labels)`` batches of ``split``; ``train=True`` shuffles with
        ``generator``, augments and drops a ragged last batch. Raises :class:`DataError` for a
        ``batch_size`` below 1 when called, not when iterated."""

    def num_batches(self, split: str, *, batch_size: int, train: bool, world_size: int = 1) -> int:
        """How many batches :meth:`batches` yields per rank with the same arguments."""

    def num_examples(self, split: str) -> int:
        """How many images ``split`` holds (0 for an empty validation split)."""

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The resident ``(x, y)`` tensors of a split; a streamed dataset raises :class:`DataError`."""

    def to(self, device: str | torch.device) -> Dataset:
        """A copy whose batches come from ``device`` where the dataset can hold them there."""


def check_split(name: str) -> None:
    """Raise :class:`DataError` unless ``name`` is ``train``, ``val`` or ``test``."""
    if name not in SPLITS:
        raise DataError(f"unknown split '{name}'; expected train, val or test")


def check_batch_size(batch_size) -> None:
    """Raise :class:`DataError` unless ``batch_size`` is a positive integer (a bool is not)."""
    if batch_size is None:
        raise DataError("batch_size must be a positive integer, got None")
    check_count(batch_size, "batch_size", error=DataError)


def count_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches of ``batch_size`` in ``n`` images, the ragged last one dropped when ``drop_last``."""
    # A training epoch drops the ragged last batch (a tiny batch gives noisy BN statistics),
    # unless that would leave no batch at all on a tiny dataset.
    check_batch_size(batch_size)
    if drop_last and n >= batch_size:
        return n // batch_size
    return -(-n // batch_size)
