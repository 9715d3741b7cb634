"""A learnable stand-in for a MedMNIST file, for the plan's timing, the GPU check and the tests.

The class sets the brightness of a central square on noise, so a model learns it in an epoch or two. With the
dataset's own split lengths (the default) the file passes the content check of ``data.check_npz``; with others it
is loaded with ``synthetic=True``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import data


def small_splits(n_train: int) -> tuple[int, int, int]:
    """Split lengths with ``n_train`` training images, validation and test an eighth of that (at least 20)."""
    return n_train, max(n_train // 8, 20), max(n_train // 8, 20)


def write_npz(
    path: Path,
    flag: str = "breastmnist",
    splits: tuple[int, int, int] | None = None,
    size: int = 28,
    seed: int = 0,
    channels: int | None = None,
    n_classes: int | None = None,
    label_shape: tuple[int, ...] = (-1, 1),
) -> Path:
    """Write a stand-in of ``flag`` (its channels, classes and task unless given) with ``splits`` (train, val, test)
    images, by default the dataset's own. Single-label classes are balanced; multi-label labels are random 0/1."""
    meta = data.info(flag)
    channels, n_classes = channels or meta["n_channels"], n_classes or meta["n_classes"]
    counts = splits or tuple(meta["n_samples"][s] for s in data.SPLITS)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(data.SPLITS, counts):
        if meta["task"] == "multi-label":
            labels = rng.integers(0, 2, size=(count, n_classes))
            level = labels[:, 0]
        else:
            labels = np.arange(count) % n_classes
            rng.shuffle(labels)
            level, labels = labels, labels.reshape(label_shape)
        images = rng.integers(0, 90, size=(count, size, size) + ((channels,) if channels > 1 else ()), dtype=np.uint8)
        lo, hi = size // 4, 3 * size // 4
        brightness = (level * (120 // max(n_classes - 1, 1))).astype(np.uint8)
        images[:, lo:hi, lo:hi] += brightness.reshape((-1, 1, 1) + ((1,) if channels > 1 else ()))
        arrays |= {f"{split}_images": images, f"{split}_labels": labels}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path
