import gzip
import struct
import tarfile

import pytest
import torch
import torchvision
from PIL import Image

from autoprune.data import (
    Data,
    Dataset,
    StreamData,
    augment_batch,
    folders,
    iterate,
    load_data,
)
from autoprune.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")


def small(**kw):
    return load_data("synthetic", val_size=kw.pop("val_size", 64), n_train=kw.pop("n_train", 256), n_test=64,
                     image_size=16, **kw)


def test_synthetic_shapes_and_meta():
    d = small(seed=3)
    assert d.train_x.dtype == torch.uint8 and d.train_y.dtype == torch.long
    assert d.train_x.shape == (192, 3, 16, 16) and d.val_x.shape == (64, 3, 16, 16)
    assert d.input_shape == (3, 16, 16) and d.num_classes == 4
    assert d.meta["sizes"] == {"train": 192, "val": 64, "test": 64}
    assert d.meta["val_size"] == 64 and d.meta["seed"] == 3
    assert len(d.mean) == 3 and all(0 < s < 1 for s in d.std)


def test_split_never_overlaps_and_depends_on_seed():
    # Tag every image with its index so the split can be traced back to the source.
    a, b = small(seed=0), small(seed=1)
    def ids(x):
        return {bytes(img.flatten().numpy()) for img in x}
    assert not ids(a.train_x) & ids(a.val_x)
    assert len(ids(a.train_x) | ids(a.val_x)) == 256
    assert ids(a.val_x) != ids(b.val_x)
    assert ids(small(seed=0).val_x) == ids(a.val_x)


def test_limit_subsamples_train_only():
    d = small(limit=50)
    assert len(d.train_y) == 50 and len(d.val_y) == 64
    with pytest.raises(DataError, match="val_size"):
        small(val_size=256)


def test_normalisation_does_not_depend_on_limit():
    # A base trained on a subset is evaluated on the full data with the same mean/std.
    full, sub = small(), small(limit=20)
    assert full.mean == sub.mean and full.std == sub.std
    assert sub.meta["mean"] == list(sub.mean)


def test_augmentation_shapes_and_determinism():
    d = small()
    def batches(seed):
        g = torch.Generator().manual_seed(seed)
        return list(iterate(d.train_x, d.train_y, batch_size=64, train=True, generator=g, mean=d.mean, std=d.std))
    a, b, c = batches(0), batches(0), batches(1)
    assert [x.shape for x, _ in a] == [(64, 3, 16, 16)] * 3  # 192 images, ragged batch dropped
    assert a[0][0].dtype == torch.float32
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    # Eval batches keep order and every image, unaugmented.
    ev = list(iterate(d.val_x, d.val_y, batch_size=40, train=False, mean=d.mean, std=d.std))
    assert [len(y) for _, y in ev] == [40, 24]
    assert torch.equal(torch.cat([y for _, y in ev]), d.val_y)


def test_augment_batch_crop_and_flip_are_shifts_of_the_image():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    out = augment_batch(x, torch.Generator().manual_seed(0), pad=0)
    for i in range(2):  # without padding only a flip can happen
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    g = torch.Generator().manual_seed(5)
    out = augment_batch(x, g, pad=2, pad_mode="zero")
    assert out.shape == x.shape and out.dtype == torch.uint8
    # Zero padding: each output is a shifted (maybe flipped) window whose out-of-image pixels are 0.
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        windows += [w.flip(-1) for w in windows]
        assert any(torch.equal(out[i].float(), w) for w in windows)


def test_normalisation_uses_mean_and_std():
    x = torch.full((4, 3, 8, 8), 255, dtype=torch.uint8)
    y = torch.zeros(4, dtype=torch.long)
    xb, _ = next(iterate(x, y, batch_size=4, train=False, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    assert torch.allclose(xb, torch.full_like(xb, 2.0))


def test_ddp_ranks_take_disjoint_slices():
    x = torch.zeros(192, 1, 2, 2, dtype=torch.uint8)
    labels = torch.arange(192)
    seen = []
    for rank in range(2):
        g = torch.Generator().manual_seed(7)  # every rank draws the same permutation
        seen.append(torch.cat([y for _, y in iterate(x, labels, batch_size=32, train=True, generator=g,
                                                     rank=rank, world_size=2)]))
    assert len(seen[0]) == len(seen[1]) == 96
    assert not set(seen[0].tolist()) & set(seen[1].tolist())


def _write_image_tree(tmp_path, n_per_class=3, size=8):
    root = tmp_path / "tiny"
    g = torch.Generator().manual_seed(0)
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n_per_class):
                arr = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
                Image.fromarray(arr).save(root / split / cls / f"{i}.jpg", quality=95)
    return root


def test_targz_imagefolder_and_cache_round_trip(tmp_path):
    root = _write_image_tree(tmp_path)
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(root, arcname="tiny")
    cache = tmp_path / "cache"
    d = load_data(str(archive), val_size=2, cache_dir=cache)
    assert d.num_classes == 2 and d.meta["classes"] == ["cat", "dog"]
    assert d.train_x.shape == (4, 3, 8, 8) and d.test_x.shape == (6, 3, 8, 8)
    assert sorted(torch.cat([d.train_y, d.val_y]).tolist()) == [0, 0, 0, 1, 1, 1]
    files = list((cache / "datasets").glob("*.pt"))
    assert len(files) == 1
    # Second load comes from the cache file, and gives identical tensors.
    cached = torch.load(files[0], weights_only=True)
    assert torch.equal(cached["test_x"], d.test_x)
    again = load_data("cifar10", archive, val_size=2, cache_dir=cache)
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.test_y, d.test_y)
    # The directory form gives the same pixels as the archive.
    from_dir = load_data(str(root), val_size=2, cache_dir=cache)
    assert torch.equal(from_dir.test_x, d.test_x)


def test_corrupted_archive_is_a_data_error(tmp_path):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(gzip.compress(b"not a tar archive" * 100)[:-20])
    with pytest.raises(DataError, match="broken.tar.gz"):
        load_data(str(bad), cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "datasets").exists() or not list((tmp_path / "cache" / "datasets").iterdir())


def test_missing_dataset_says_where_it_looked(tmp_path, monkeypatch):
    class Offline(torchvision.datasets.CIFAR10):
        def __init__(self, *a, **k):
            raise RuntimeError("Dataset not found or corrupted")
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    with pytest.raises(DataError, match=str(tmp_path / "none")):
        load_data("cifar10", tmp_path / "none")
    assert not (tmp_path / "none").exists()  # no empty folder left behind
    with pytest.raises(DataError, match="unknown dataset"):
        load_data("mnistt")


def _idx(arr: torch.Tensor) -> bytes:
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.numpy().tobytes()


def test_fashion_mnist_idx_files(tmp_path):
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 30), ("t10k", 10)):
        imgs = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        labels = torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(imgs)))
        (tmp_path / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx(labels))
    d = load_data("fashion-mnist", tmp_path, val_size=5)
    assert d.train_x.shape == (25, 1, 28, 28) and d.test_x.shape == (10, 1, 28, 28)
    assert d.input_shape == (1, 28, 28) and d.num_classes == 10
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x10abc")
    with pytest.raises(DataError, match="corrupted IDX"):
        load_data("fashion-mnist", tmp_path, val_size=5)


def test_streamed_imagefolder(tmp_path):
    root = _write_image_tree(tmp_path, n_per_class=4, size=40)
    (root / "test").rename(root / "val")
    d = load_data(f"imagefolder:{root}", val_size=2, image_size=32, num_workers=0)
    assert not d.resident and d.num_classes == 2 and d.meta["sizes"]["train"] == 6
    xb, yb = next(iter(d.batches("train", batch_size=4, train=True, generator=torch.Generator().manual_seed(0))))
    assert xb.shape == (4, 3, 32, 32) and xb.dtype == torch.float32 and yb.shape == (4,)
    assert sum(len(y) for _, y in d.batches("test", batch_size=3, train=False)) == 8


def test_pil_fallback_decodes_like_torchvision(tmp_path, monkeypatch):
    root = _write_image_tree(tmp_path)
    fast = load_data(str(root), val_size=0, cache_dir=tmp_path / "c1")

    def unavailable(blobs):
        raise ImportError("no torchvision.io")
    monkeypatch.setattr(folders, "_decode_torchvision", unavailable)
    slow = load_data(str(root), val_size=0, cache_dir=tmp_path / "c2")
    assert slow.train_x.shape == fast.train_x.shape
    assert (slow.train_x.int() - fast.train_x.int()).abs().max() <= 2  # both libjpeg; rounding may differ


@pytest.mark.parametrize("batch_size", [0, -4, 2.5])
def test_batch_size_below_one_is_a_data_error(batch_size):
    data = small()
    with pytest.raises(DataError, match="batch_size must be a positive integer"):
        data.batches("train", batch_size=batch_size, train=True)
    with pytest.raises(DataError, match="batch_size"):
        data.num_batches("val", batch_size=batch_size, train=False)
    with pytest.raises(DataError, match="batch_size"):
        iterate(data.val_x, data.val_y, batch_size=batch_size, train=False)


def _streamed(tmp_path, val_size=2):
    root = _write_image_tree(tmp_path, n_per_class=4, size=40)
    (root / "test").rename(root / "val")
    return load_data(f"imagefolder:{root}", val_size=val_size, image_size=32, num_workers=0)


@pytest.mark.parametrize("val_size", [0, 3])
def test_resident_and_streamed_data_satisfy_the_dataset_protocol(tmp_path, val_size):
    resident, streamed = small(val_size=val_size), _streamed(tmp_path, val_size=val_size)
    assert isinstance(resident, Data) and isinstance(streamed, StreamData)
    assert resident.resident is True and streamed.resident is False
    for d in (resident, streamed, resident.to("cpu"), streamed.to("cpu")):
        assert isinstance(d, Dataset)
        sizes = {split: d.num_examples(split) for split in ("train", "val", "test")}
        assert sizes == d.meta["sizes"] and sizes["val"] == val_size
        assert d.num_batches("val", batch_size=2, train=False) == -(-val_size // 2)
        with pytest.raises(DataError, match="unknown split"):
            d.num_examples("holdout")
    assert resident.num_examples("train") == len(resident.train_y) == 256 - val_size
    assert streamed.num_examples("train") == 8 - val_size and streamed.num_examples("test") == 8
    # Each split holds as many images as its batches yield.
    for d in (resident, streamed):
        for split in ("train", "val", "test"):
            assert sum(len(y) for _, y in d.batches(split, batch_size=3, train=False)) == d.num_examples(split)


def test_streamed_data_has_no_resident_tensors(tmp_path):
    d = _streamed(tmp_path)
    with pytest.raises(DataError, match="streamed"):
        d.split("train")
    moved = d.to("cpu")
    moved.meta["data_dir"] = "elsewhere"  # a copy: the original's metadata is untouched
    assert "data_dir" not in d.meta


def test_objects_missing_a_member_are_not_datasets():
    class Partial:
        meta, num_classes, input_shape, resident = {}, 2, (3, 8, 8), True

        def batches(self, split, **kw):
            return iter(())

    assert not isinstance(Partial(), Dataset)
    assert not isinstance(small().train_x, Dataset)
