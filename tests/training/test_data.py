"""Loader validation and on-device augmentation."""
import pickle
import re

import numpy as np
import pytest
import torch

from l2bn.data import (
    BATCH_DIR,
    DataError,
    Split,
    augment,
    epoch_batches,
    load_cifar10,
    normalize,
    read_batch_file,
    read_cifar10_dir,
    synthetic_cifar,
)


def _write_batch(path, data, labels):
    with open(path, "wb") as f:
        pickle.dump({"data": data, "labels": labels, "batch_label": "x"}, f)


def test_batch_file_validation_names_file_and_problem(tmp_path):
    good = np.zeros((10000, 3072), np.uint8)
    cases = {
        "shape": (np.zeros((100, 3072), np.uint8), [0] * 100, "shape (10000, 3072)"),
        "dtype": (good.astype(np.float32), [0] * 10000, "uint8"),
        "labels": (good, [10] * 10000, "0..9"),
    }
    for name, (data, labels, message) in cases.items():
        path = tmp_path / name
        _write_batch(path, data, labels)
        with pytest.raises(DataError, match=re.escape(message)) as err:
            read_batch_file(path)
        assert str(path) in str(err.value)
    (tmp_path / "keys").write_bytes(pickle.dumps({"pixels": good}))
    with pytest.raises(DataError, match="keys 'data' and 'labels'"):
        read_batch_file(tmp_path / "keys")


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match=f"no '{BATCH_DIR}' directory"):
        read_cifar10_dir(tmp_path)


@pytest.mark.slow
def test_reads_standard_layout(cifar_dir):
    train, test = read_cifar10_dir(cifar_dir)
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 3, 32, 32) and test.labels.dtype == torch.int64
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert torch.bincount(train.labels).tolist() == [5000] * 10


@pytest.mark.slow
def test_rejects_truncated_batch_file(cifar_dir, tmp_path):
    folder = tmp_path / BATCH_DIR
    folder.mkdir()
    for src in (cifar_dir / BATCH_DIR).iterdir():
        (folder / src.name).symlink_to(src)
    (folder / "data_batch_3").unlink()
    (folder / "data_batch_3").write_bytes((cifar_dir / BATCH_DIR / "data_batch_3").read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_3: not a readable CIFAR-10 batch pickle"):
        read_cifar10_dir(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="data_batch_3"):  # the first bad file is named
        read_cifar10_dir(tmp_path)


def test_augment_keeps_shape_dtype_and_is_a_shifted_flipped_crop():
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = augment(images, gen)
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    flips = 0
    for i in range(len(images)):  # each output is exactly one of the 81 x 2 candidate crops
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                   if torch.equal(out[i], (lambda c: c.flip(2) if f else c)(
                       padded[i, :, dy:dy + 32, dx:dx + 32]))]
        assert matches, i
        flips += matches[0][2]
    assert 4 <= flips <= 28  # both flipped and unflipped images occur


def test_augment_is_seeded():
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    a = augment(images, torch.Generator().manual_seed(3))
    b = augment(images, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_epoch_is_slices_of_one_permutation():
    batches = epoch_batches(100, 32, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert [len(b) for b in batches] == [32, 32, 32]  # the partial last batch is dropped
    flat = torch.cat(batches)
    assert len(set(flat.tolist())) == 96


def test_normalize_and_synthetic_source():
    train, test = synthetic_cifar(64, 32)
    assert train.images.dtype == torch.uint8 and len(test) == 32
    x = normalize(train.images)
    assert x.dtype == torch.float32 and abs(float(x.mean())) < 0.2
    tr, te = load_cifar10("synthetic", None, torch.device("cpu"), n_train=10, n_test=5)
    assert len(tr) == 10 and len(te) == 5


def test_download_goes_to_cache_under_a_lock(tmp_path, monkeypatch):
    """No data_dir: torchvision's (MD5-checking) download runs once into the cache dir,
    holding a file lock; the layout it leaves is then read like a user's copy."""
    import torchvision.datasets

    from l2bn import data

    calls = []

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            lock = tmp_path / "cache" / "cifar10.lock"
            calls.append((root, train, download, lock.exists()))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    monkeypatch.setenv("L2BN_CACHE", str(tmp_path / "cache"))
    assert data.download_cifar10() == tmp_path / "cache"
    assert calls == [(str(tmp_path / "cache"), True, True, True)]


def test_subsets_are_fixed_and_class_balanced_even_on_sorted_data():
    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, like a sorted copy
    split = Split(torch.zeros(1000, 3, 32, 32, dtype=torch.uint8), labels)
    sub = split.subset(200)
    assert len(sub) == 200 and torch.equal(sub.labels, split.subset(200).labels)
    assert torch.bincount(sub.labels, minlength=10).min() >= 8  # every class is represented
    assert split.subset(None) is split and split.subset(5000) is split
