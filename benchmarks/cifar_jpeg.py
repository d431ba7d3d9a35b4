"""CIFAR-10 in the standard python layout (`cifar-10-batches-py/`) from the project's offline
JPEG archive (`train/<class>/NNNN.jpg`, 50,000; `test/<class>/NNNN.jpg`, 10,000), with numpy
and pillow alone: what the device run (benchmarks/device_run.py) uses on a GPU machine, where
neither a download nor the `../shared` folder beside the checkout is there.

Vendored from ../shared/data/make_cifar10.py: the same images in the same order (classes in
CIFAR-10's order, files by name, the training set shuffled by numpy's default_rng(0)), so a
trial sees the same data as one on the copy .ci/run builds. The pickles are plain protocol-2
dicts with str keys ("data", "labels", "filenames", "batch_label"), which l2bn.data and
torchvision read; the original's Python-2 string opcodes are left out.

    python benchmarks/cifar_jpeg.py ARCHIVE DEST     # writes DEST/cifar-10-batches-py/
"""
from __future__ import annotations

import io
import os
import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")
SIZES = {"train": 50_000, "test": 10_000}
TRAIN_FILES = 5


def read_archive(path: str | Path) -> dict[str, list[tuple[str, str, np.ndarray]]]:
    """{split: [(class, file name, 32x32x3 uint8), ...]} sorted by class, then file name."""
    out: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3 or parts[0] not in out:
                continue
            split, cls, name = parts
            image = Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")
            out[split].append((cls, name, np.asarray(image, dtype=np.uint8)))
    for items in out.values():
        items.sort(key=lambda item: (CLASSES.index(item[0]), item[1]))
    return out


def as_batch(items: list[tuple[str, str, np.ndarray]], label: str) -> dict:
    """One batch file's dict: data (N, 3072) uint8, channel-major rows as in the original."""
    return {"batch_label": label,
            "labels": [CLASSES.index(cls) for cls, _, _ in items],
            "data": np.stack([img.transpose(2, 0, 1).reshape(-1) for _, _, img in items]),
            "filenames": [f"{cls}_{name}" for cls, name, _ in items]}


def build(archive: str | Path, dest: str | Path, full: bool = True) -> Path:
    """Write `dest/cifar-10-batches-py` (5 training files and test_batch) and return `dest`;
    with `full`, ValueError unless the archive holds all 50,000 + 10,000 images."""
    splits = read_archive(archive)
    counts = {split: len(items) for split, items in splits.items()}
    if full and counts != SIZES:
        raise ValueError(f"{archive}: expected {SIZES} images, found {counts}")
    train = splits["train"]
    train = [train[i] for i in np.random.default_rng(0).permutation(len(train))]
    per_file = -(-len(train) // TRAIN_FILES)
    batches = {f"data_batch_{b + 1}": as_batch(train[b * per_file:(b + 1) * per_file],
                                               f"training batch {b + 1} of {TRAIN_FILES}")
               for b in range(TRAIN_FILES)}
    batches["test_batch"] = as_batch(splits["test"], "testing batch 1 of 1")
    batches["batches.meta"] = {"label_names": list(CLASSES),
                               "num_cases_per_batch": per_file, "num_vis": 3072}
    root = Path(dest) / "cifar-10-batches-py"
    root.mkdir(parents=True, exist_ok=True)
    for name, obj in batches.items():
        tmp = root / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)
        os.replace(tmp, root / name)
    return Path(dest)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(f"wrote {build(sys.argv[1], sys.argv[2]) / 'cifar-10-batches-py'}")
