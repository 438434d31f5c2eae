"""Which data a command or a search loads, decided once: from what the user gave and what a
checkpoint records about the data its model was trained on.

The rule. A trained model's checkpoint records its dataset: name, split seed, validation
size, training-image limit, data folder and normalisation. Scoring or evaluating that model
on a *validation* split is honest only if those images were held out of its training, so:

* settings the user leaves unset take the recorded values (the split seed always does);
* a different dataset or validation size is a :class:`~autoprune.errors.DataError`, since the
  validation images would overlap the ones the model was trained on;
* a different ``limit`` is allowed: it only thins the training images;
* the data are normalised with the recorded mean and std.

Without a record, unset settings take the defaults: cifar10, 5,000 validation images (256 for
the 1,024-image synthetic set), split seed ``seed``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, replace

from autoprune.data import Dataset, load_data
from autoprune.errors import DataError
from autoprune.models import model_kwargs, takes_kwarg

DEFAULT_DATASET = "cifar10"
DEFAULT_VAL_SIZE = 5000
SYNTHETIC_VAL_SIZE = 256  # the synthetic set has 1,024 training images


@dataclass(frozen=True)
class DataSpec:
    """A dataset to load: ``name`` (a registered name or an ImageFolder path / ``.tar.gz``),
    ``data_dir`` (where torchvision-format data live), ``limit`` (training images kept),
    ``val_size`` (training images held out for validation) and ``seed`` (of the split).
    ``None`` means "the recorded value, else the default"."""

    name: str | None = None
    data_dir: str | None = None
    limit: int | None = None
    val_size: int | None = None
    seed: int = 0

    def __post_init__(self):
        for key, low in (("limit", 1), ("val_size", 0)):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < low):
                raise DataError(f"{key.replace('_', '-')} must be an integer of at least {low}, got {v!r}")

    def against(self, recorded: dict | None, source: str) -> "DataSpec":
        """The settings to load, given the ``dataset`` record of a checkpoint (see the module rule).

        ``source`` names the checkpoint in error messages.
        """
        rec = recorded if isinstance(recorded, dict) and recorded.get("name") is not None else None
        if rec is None:
            name = self.name or DEFAULT_DATASET
            val = self.val_size
            if val is None:
                val = SYNTHETIC_VAL_SIZE if name.lower() == "synthetic" else DEFAULT_VAL_SIZE
            return replace(self, name=name, val_size=val)
        name = self.name if self.name is not None else rec["name"]
        if not same_name(name, rec["name"]):
            raise DataError(f"dataset '{name}' is not the '{rec['name']}' that {source} was trained on; "
                            f"use '{rec['name']}' or a model trained on '{name}'")
        recorded_val = rec.get("val_size")
        if self.val_size is not None and recorded_val is not None and int(self.val_size) != int(recorded_val):
            raise DataError(f"--val-size {self.val_size} differs from the {recorded_val} validation images {source} "
                            "was trained without: the validation split would overlap its training images "
                            "(leave --val-size out to reuse the recorded split)")
        return DataSpec(name=name, data_dir=self.data_dir if self.data_dir is not None else rec.get("data_dir"),
                        limit=self.limit if self.limit is not None else rec.get("limit"),
                        val_size=int(recorded_val) if recorded_val is not None else (self.val_size or DEFAULT_VAL_SIZE),
                        seed=int(rec.get("seed", self.seed)))

    def load(self, device, recorded: dict | None = None) -> Dataset:
        """Load the data this spec (already resolved by :meth:`against`) names, on ``device``.

        With a ``recorded`` normalisation, a resident dataset is normalised like the model's
        training data was.
        """
        data = load_data(self.name, self.data_dir, seed=self.seed, device=device, limit=self.limit,
                         val_size=self.val_size)
        data.meta["data_dir"] = None if self.data_dir is None else str(self.data_dir)
        if recorded and recorded.get("mean") and recorded.get("std") and data.resident:
            data.mean, data.std = tuple(recorded["mean"]), tuple(recorded["std"])
            data.meta["mean"], data.meta["std"] = list(recorded["mean"]), list(recorded["std"])
        return data


def check_loaded(data: Dataset, recorded: dict | None, source: str) -> None:
    """DataError when already-loaded ``data`` are not split like the ``recorded`` dataset."""
    if not isinstance(recorded, dict) or recorded.get("name") is None:
        return
    meta = data.meta or {}
    for key in ("name", "seed", "val_size"):
        if key in recorded and key in meta and not same_name(meta[key], recorded[key]):
            raise DataError(f"the given data have {key}={meta[key]!r} but {source} was trained with "
                            f"{key}={recorded[key]!r}: its validation images would overlap the model's training images")


def same_name(a, b) -> bool:
    """Dataset names compare without case and with ``_`` and ``-`` alike (fashion_mnist = Fashion-MNIST)."""
    return str(a).lower().replace("_", "-") == str(b).lower().replace("_", "-")


def kwargs_for_data(model: str, data: Dataset, *, num_classes: int | None = None,
                    in_channels: int | None = None) -> dict:
    """Constructor kwargs of registry model ``model`` for ``data``'s classes and image channels.

    ``num_classes`` / ``in_channels``, when given, must agree with the data (DataError). A
    constructor that takes no ``num_classes`` (or ``in_channels``) is not given it unless the
    caller names it: ultralytics' ``DetectionModel`` takes ``nc``, set with ``--model-arg``.
    """
    name = data.meta.get("name", "given")
    if num_classes is not None and num_classes != data.num_classes:
        raise DataError(f"--num-classes {num_classes} does not match the {data.num_classes} classes of "
                        f"dataset '{name}'")
    channels = data.input_shape[0]
    if in_channels is not None and in_channels != channels:
        raise DataError(f"--in-channels {in_channels} does not match the {channels}-channel images of dataset '{name}'")
    kwargs = {}
    if num_classes is not None or takes_kwarg(model, "num_classes"):
        kwargs["num_classes"] = data.num_classes
    if channels != 3 and (in_channels is not None or takes_kwarg(model, "in_channels")):
        kwargs["in_channels"] = channels
    return model_kwargs(model, **kwargs)
