"""Run in the corruption environment by tests/test_corrupt.py: medmnistc's own DatasetManager against
scaleaudit.corrupt on the same images. Prints one JSON object."""

import json
import sys
from pathlib import Path

import numpy as np
from medmnistc.dataset_manager import DatasetManager

from scaleaudit import corrupt

work, images_file, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
with np.load(images_file) as npz:
    arrays = {k: npz[k] for k in npz.files}
root = work / "root"
root.mkdir()
np.savez(root / "breastmnist_224.npz", **arrays)  # DatasetManager reads the 224 px file name only
DatasetManager(str(root), str(work / "theirs"), 0).create_single_dataset("breastmnist")
with corrupt.grey_decoded_as_colour():
    DatasetManager(str(root), str(work / "theirs_fixed"), 0).create_single_dataset("breastmnist")
out = {"native": {}, "fixed": {}, "twice": None}
records = [
    corrupt.build(images_file, "breastmnist", size, 0, work / f"ours{i}.npz", work / f"ours{i}.json") for i in (1, 2)
]
with np.load(work / "ours1.npz") as a, np.load(work / "ours2.npz") as b:
    out["twice"] = all(np.array_equal(a[k], b[k]) for k in a.files) and a.files == b.files
    for name in records[0]["corruptions"]:
        ours = a[name].reshape(-1, *a[name].shape[2:])
        for kind in ("native", "fixed"):
            theirs = np.load(work / ("theirs" if kind == "native" else "theirs_fixed") / "breastmnist" / f"{name}.npz")
            same_labels = np.array_equal(theirs["test_labels"].reshape(-1), np.tile(a["labels"].reshape(-1), 5))
            out[kind][name] = {
                "shape": list(theirs["test_images"].shape),
                "equal": theirs["test_images"].shape == ours.shape
                and np.array_equal(theirs["test_images"], ours)
                and same_labels,
            }
out["record"] = records[0]
print(json.dumps(out))
