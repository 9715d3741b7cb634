"""Shared fixtures: a synthetic MedMNIST mirror (hermetic) and the real BreastMNIST mirror when present."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MIRROR = Path(os.environ.get("SCALEAUDIT_TEST_MIRROR", REPO.parent / "shared" / "data" / "medmnist"))


BREASTMNIST_SPLITS = (546, 78, 156)  # the split lengths of the real BreastMNIST (its INFO), checked on fetch


def make_npz(path: Path, n=BREASTMNIST_SPLITS, size=28, channels=1, n_classes=2, seed=0, label_shape=(-1, 1)) -> Path:
    """A learnable MedMNIST-shaped file: the class sets the brightness of a central square."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        labels = np.arange(count) % n_classes
        rng.shuffle(labels)
        images = rng.integers(0, 90, size=(count, size, size) + ((channels,) if channels > 1 else ()), dtype=np.uint8)
        lo, hi = size // 4, 3 * size // 4
        images[:, lo:hi, lo:hi] += (
            (labels * (120 // max(n_classes - 1, 1)))
            .astype(np.uint8)
            .reshape((-1, 1, 1) + ((1,) if channels > 1 else ()))
        )
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = labels.reshape(label_shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def write_sums(mirror: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in sorted(mirror.glob("*.npz"))]
    (mirror / "SHA256SUMS").write_text("\n".join(lines) + "\n")


@pytest.fixture
def tiny_mirror(tmp_path) -> Path:
    """A mirror folder with a small synthetic breastmnist.npz and its SHA256SUMS."""
    mirror = tmp_path / "mirror"
    make_npz(mirror / "breastmnist.npz")
    write_sums(mirror)
    return mirror


@pytest.fixture
def real_mirror() -> Path:
    """The real BreastMNIST mirror of ../shared/data/medmnist (or $SCALEAUDIT_TEST_MIRROR)."""
    if not (SHARED_MIRROR / "breastmnist.npz").exists():
        pytest.skip(f"no real BreastMNIST mirror at {SHARED_MIRROR} (set SCALEAUDIT_TEST_MIRROR)")
    return SHARED_MIRROR


@pytest.fixture
def copy_mirror(tmp_path):
    def copy(src: Path) -> Path:
        dst = tmp_path / "mirror-copy"
        shutil.copytree(src, dst)
        return dst

    return copy
