"""Defect 1 of issue 15: a file whose checksum is listed but whose contents are wrong is refused (exit 2).

Each case stages a damaged BreastMNIST in the mirror and lists its SHA-256 in SHA256SUMS, as a user
who builds a mirror would: only a check of the contents against the dataset's INFO can catch it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiny_study
from mirror import write_sums

from scaleaudit import cli, data, train
from scaleaudit.errors import ScaleauditError
from scaleaudit.synthetic import write_npz


def _rewrite(path, **changes):
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value(arrays[key]) if callable(value) else value
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


BAD_CONTENTS = {
    "100 labels for 546 images": (
        {"train_labels": lambda y: y[:100]},
        "train_labels have shape (100, 1) for 546 images",
    ),
    "32 px images in a 28 px file": (
        {"val_images": np.zeros((78, 32, 32), np.uint8)},
        "val_images have shape (78, 32, 32)",
    ),
    "float images": ({"test_images": lambda x: x.astype(np.float32) / 255}, "test_images are float32"),
    "label 5 on a binary task": (
        {"train_labels": lambda y: np.where(np.arange(len(y))[:, None] == 3, 5, y)},
        "train_labels range from 0 to 5",
    ),
    "label -1": ({"val_labels": lambda y: y - 1}, "val_labels range from -1 to 0"),
    "float labels": ({"train_labels": lambda y: y.astype(np.float64)}, "train_labels are float64"),
    "three channels for a grey dataset": (
        {"train_images": lambda x: np.repeat(x[..., None], 3, -1)},
        "train_images have shape (546, 28, 28, 3)",
    ),
    "a split of the wrong length": (
        {"test_images": lambda x: x[:100], "test_labels": lambda y: y[:100]},
        "test has 100 images, breastmnist has 156",
    ),
    "a missing array": ({"val_labels": None}, "missing arrays val_labels"),
}


@pytest.mark.parametrize("case", BAD_CONTENTS)
def test_listed_checksum_but_wrong_contents_is_refused_on_fetch(capsys, tiny_mirror, tmp_path, case):
    changes, expected = BAD_CONTENTS[case]
    _rewrite(tiny_mirror / "breastmnist.npz", **changes)
    write_sums(tiny_mirror)  # the checksum matches the damaged file
    out = tmp_path / "data" / "breastmnist_28.npz"
    code = cli.main(["fetch-data", "--dataset", "breastmnist", "--out", str(out), "--mirror", str(tiny_mirror)])
    err = capsys.readouterr().err
    assert code == 2, err
    # the mirror file is named, not the temporary copy the fetch checked
    assert f"{(tiny_mirror / 'breastmnist.npz').resolve()} is not breastmnist.npz of MedMNIST breastmnist" in err
    assert expected in err and ".tmp" not in err, err
    assert "fix: stage the official file" in err
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_file_changed_after_fetch_is_refused_before_training(capsys, tiny_mirror, tmp_path):
    """Whatever the checksum source: a fetched file replaced later (or fetched by an older version) is checked again."""
    record = tiny_study.fetch(tiny_mirror, tmp_path / "data")
    _rewrite(record["file"], train_labels=lambda y: y[:100])
    code = cli.main(
        [
            "train",
            "--spec",
            json.dumps(tiny_study.spec().to_dict()),
            "--data",
            str(tmp_path / "data" / "breastmnist_28.json"),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "train_labels have shape (100, 1) for 546 images" in err
    assert not (tmp_path / "run" / train.CHECKPOINT).exists()


@pytest.mark.parametrize("label_shape", [(-1,), (-1, 1)])
def test_both_official_label_layouts_and_grey_channel_axis_pass(tmp_path, label_shape):
    path = write_npz(tmp_path / "breastmnist.npz", label_shape=label_shape)
    assert data.check_npz(path, "breastmnist", 28)["train_images"] == (546, 28, 28)
    _rewrite(path, train_images=lambda x: x[..., None])  # (N, H, W, 1) is the same grey image
    assert data.check_npz(path, "breastmnist", 28)["train_images"] == (546, 28, 28, 1)


def test_multilabel_and_rgb_datasets_are_checked_against_their_own_info(tmp_path, monkeypatch):
    chest = data.info("chestmnist")
    assert chest["task"] == "multi-label" and chest["n_classes"] == 14
    # ChestMNIST's own layout at a small scale: (N, 14) labels of 0/1 (its 112,120 images are not needed)
    monkeypatch.setitem(data.catalogue(), "chestmnist", chest | {"n_samples": {"train": 30, "val": 10, "test": 10}})
    path = tmp_path / "chestmnist.npz"
    labels = {s: np.random.default_rng(0).integers(0, 2, (n, 14)) for s, n in zip(data.SPLITS, (30, 10, 10))}
    np.savez(
        path,
        **{f"{s}_images": np.zeros((len(y), 28, 28), np.uint8) for s, y in labels.items()},
        **{f"{s}_labels": y for s, y in labels.items()},
    )
    assert data.check_npz(path, "chestmnist", 28)["train_labels"] == (30, 14)
    _rewrite(path, train_labels=lambda y: y[:, :3])
    with pytest.raises(ScaleauditError, match=r"train_labels have shape \(30, 3\) .*expected \(30, 14\)"):
        data.check_npz(path, "chestmnist", 28)
    _rewrite(path, train_labels=labels["train"] * 2)
    with pytest.raises(ScaleauditError, match="train_labels range from 0 to 2"):
        data.check_npz(path, "chestmnist", 28)

    assert data.info("bloodmnist")["n_channels"] == 3
    rgb = write_npz(tmp_path / "bloodmnist.npz", "bloodmnist")  # its own split lengths, 3 channels and 8 classes
    assert data.check_npz(rgb, "bloodmnist", 28)["val_images"][1:] == (28, 28, 3)
    _rewrite(rgb, val_images=lambda x: x[..., 0])
    with pytest.raises(
        ScaleauditError, match=r"val_images have shape \(\d+, 28, 28\), bloodmnist at 28 px has \(\d+, 28, 28, 3\)"
    ):
        data.check_npz(rgb, "bloodmnist", 28)
