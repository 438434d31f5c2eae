"""Datasets for training and search: resident uint8 tensors with a fast batch iterator, or a
streamed ImageFolder tree, both behind one :class:`Dataset` protocol.

Small image datasets (CIFAR-10/100, Fashion-MNIST, JPEG ImageFolder copies of them) fit in
memory as uint8 and stay resident on the training device, with augmentation as batched tensor
ops (:mod:`autoprune.data.resident`). :func:`load_data` returns a :class:`Data` with
train/val/test tensors; :func:`iterate` yields normalised, augmented batches from them.

Dataset names understood by :func:`load_data` (:mod:`autoprune.data.sources`):

* ``cifar10``, ``cifar100`` -- torchvision's pickled format under ``data_dir`` (downloaded
  when missing and the network allows), or an ImageFolder directory / ``.tar.gz`` with
  ``train/`` and ``test/`` given as ``data_dir`` or as the name itself;
* ``fashion-mnist`` -- the IDX files (``train-images-idx3-ubyte[.gz]`` ...) in ``data_dir``,
  its ``FashionMNIST/raw`` sub-folder, or downloaded through torchvision;
* ``synthetic`` -- a small deterministic dataset whose classes are learnable, for tests;
* a path to an ImageFolder directory or ``.tar.gz`` with ``train/`` and ``test/``, decoded
  once into a cached tensor file (:mod:`autoprune.data.folders`);
* ``imagefolder:PATH`` -- an ImageNet-style tree (``train/`` and ``val/``) too large to keep
  resident; returns a :class:`StreamData` that feeds a standard DataLoader with workers
  (:mod:`autoprune.data.streaming`).

The validation split is carved from the training images with a seeded permutation and never
overlaps the training split; the test split is left untouched for final reporting.
"""

from autoprune.data.base import Dataset
from autoprune.data.folders import CACHE_FORMAT, IMAGE_EXTENSIONS, default_cache_dir
from autoprune.data.resident import Data, augment_batch, iterate, normalize
from autoprune.data.sources import default_data_dir, load_data
from autoprune.data.streaming import StreamData

__all__ = [
    "CACHE_FORMAT",
    "IMAGE_EXTENSIONS",
    "Data",
    "Dataset",
    "StreamData",
    "augment_batch",
    "default_cache_dir",
    "default_data_dir",
    "iterate",
    "load_data",
    "normalize",
]
