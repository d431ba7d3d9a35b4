"""CIFAR-10 as one uint8 tensor on the device, with augmentation done on the device per batch.

Sources: a directory the user names that holds `cifar-10-batches-py/` (validated by structure,
not MD5, since re-encoded copies differ byte-wise), or torchvision's MD5-checked download into
a cache directory under a file lock. `synthetic` makes random tensors for unit tests and is
only ever used when asked for by name.
"""
from __future__ import annotations

import functools
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .budget import steps_per_epoch
from .config import DATA_SIZES

BATCH_DIR = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
IMAGES_PER_FILE = 10_000
SUBSET_SEED = 20170616  # fixed: n_train/n_test pick the same images in every trial
# Per-channel mean/std of the CIFAR-10 training images, in pixel units (0..255).
MEAN = (125.31, 122.95, 113.87)
STD = (62.99, 62.09, 66.70)


class DataError(ValueError):
    """The dataset on disk is missing or malformed; the message names the file and the problem."""


@dataclass
class Split:
    """Images as uint8 (N, 3, 32, 32) and labels as int64 (N,), on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def subset(self, n: int | None) -> Split:
        """A fixed random n-image subset (the same for every trial), or all images.

        Random rather than the first n because a copy may be sorted by class (the test set
        of the project's offline copy is), which would make a prefix a one-class subset.
        """
        if n is None or n >= len(self):
            return self
        gen = torch.Generator().manual_seed(SUBSET_SEED)
        idx = torch.randperm(len(self), generator=gen)[:n].sort().values
        return Split(self.images[idx], self.labels[idx])


def default_cache_dir() -> Path:
    """Where a downloaded CIFAR-10 lives: $L2BN_CACHE or ~/.cache/l2bn."""
    return Path(os.environ.get("L2BN_CACHE", Path.home() / ".cache" / "l2bn"))


def read_batch_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one pickled CIFAR-10 batch: data (10000, 3072) uint8, labels 0..9."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing (expected the cifar-10-batches-py layout)") from None
    except Exception as exc:  # truncated or not a pickle at all
        reason = f"{type(exc).__name__}: {exc}"
        raise DataError(f"{path}: not a readable CIFAR-10 batch pickle ({reason})") from None
    if not isinstance(entry, dict) or "data" not in entry or "labels" not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise DataError(f"{path}: expected a dict with keys 'data' and 'labels', got {keys}")
    data, labels = entry["data"], np.asarray(entry["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape != (IMAGES_PER_FILE, 3072):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: 'data' must be a uint8 array of shape (10000, 3072), got {dtype} {shape}")
    if labels.shape != (IMAGES_PER_FILE,) or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: 'labels' must be 10000 integers in 0..9, got shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def batch_folder(root: str | Path) -> Path:
    """`root/cifar-10-batches-py` (or `root` if it is that folder); DataError if there is none."""
    root = Path(root).expanduser()
    folder = root if root.name == BATCH_DIR else root / BATCH_DIR
    if not folder.is_dir():
        raise DataError(f"{root}: no '{BATCH_DIR}' directory here (data_dir must hold the "
                        "extracted cifar-10-python.tar.gz)")
    return folder


def read_cifar10_dir(root: str | Path) -> tuple[Split, Split]:
    """Load (train, test) from `root/cifar-10-batches-py` (or `root` if it is that folder)."""
    folder = batch_folder(root)
    train = [read_batch_file(folder / name) for name in TRAIN_FILES]
    test_x, test_y = read_batch_file(folder / TEST_FILE)
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return (Split(torch.from_numpy(train_x), torch.from_numpy(train_y)),
            Split(torch.from_numpy(test_x), torch.from_numpy(test_y)))


DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation: an offline machine fails in seconds, not minutes


def download_cifar10(cache_dir: Path | None = None) -> Path:
    """Download CIFAR-10 once into the cache (MD5-checked by torchvision), under a file lock;
    return the folder holding `cifar-10-batches-py`. A failed download is one DataError line
    naming the cache and `--data-dir`, never a urllib traceback."""
    import socket

    from filelock import FileLock
    from torchvision.datasets import CIFAR10

    cache_dir = Path(cache_dir or default_cache_dir())
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One download per machine even when many trials start at once on it.
    old_timeout = socket.getdefaulttimeout()
    try:
        with FileLock(str(cache_dir / "cifar10.lock")):
            socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
            CIFAR10(str(cache_dir), train=True, download=True)
    except (OSError, RuntimeError) as exc:  # URLError, timeouts, a failed MD5 check
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        raise DataError(f"CIFAR-10 is not in the cache {cache_dir} and could not be downloaded "
                        f"({reason}); pass --data-dir DIR (a folder holding {BATCH_DIR}) or put "
                        "the extracted archive there") from None
    finally:
        socket.setdefaulttimeout(old_timeout)
    return cache_dir


def synthetic_cifar(n_train: int = DATA_SIZES["synthetic"][0], n_test: int = DATA_SIZES["synthetic"][1],
                    seed: int = 0) -> tuple[Split, Split]:
    """Random images whose label is a function of the mean colour, so a model can learn it."""
    gen = torch.Generator().manual_seed(seed)

    def make(n: int) -> Split:
        images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
        colour = images.float().mean(dim=(2, 3))  # (n, 3)
        labels = (colour.argmax(1) * 3 + (colour[:, 0] > 127.5).long() * 1) % 10
        return Split(images, labels)

    return make(n_train), make(n_test)


@functools.lru_cache(maxsize=2)
def _load_cpu(source: str, data_dir: str | None) -> tuple[Split, Split]:
    """Read the dataset once per process (reused actors train many trials on the same copy)."""
    if source == "synthetic":
        return synthetic_cifar()
    return read_cifar10_dir(data_dir if data_dir else download_cifar10())


def load_cifar10(source: str, data_dir: str | None, device: torch.device,
                 n_train: int | None = None, n_test: int | None = None) -> tuple[Split, Split]:
    """(train, test) on `device` as uint8 tensors, optionally a fixed n-image subset of each."""
    train, test = _load_cpu(source, None if data_dir is None else str(data_dir))
    return train.subset(n_train).to(device), test.subset(n_test).to(device)


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """MEAN and STD as (1, 3, 1, 1) tensors, made once per device (not a host copy per step)."""
    return (torch.tensor(MEAN, device=device, dtype=torch.float32).view(1, 3, 1, 1),
            torch.tensor(STD, device=device, dtype=torch.float32).view(1, 3, 1, 1))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32, per-channel standardized."""
    mean, std = _mean_std(images.device)
    return (images.float() - mean) / std


def augment(images: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with `pad`-pixel zero padding and random horizontal flip, whole batch at once."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    dev = images.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (n, 1, 1, w)
    idx = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=dev)[None, :, None, None]
    cropped = padded[idx, chan, rows, cols]
    flip = torch.rand(n, generator=gen, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def epoch_batches(n: int, batch_size: int, gen: torch.Generator, device: torch.device):
    """Index tensors for one epoch: slices of one seeded permutation; a last partial batch is
    dropped so batch-norm statistics are never computed on a handful of images."""
    perm = torch.randperm(n, generator=gen, device=device)
    steps = steps_per_epoch(n, batch_size)
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(steps)]
