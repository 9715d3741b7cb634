import hashlib
import http.server
import threading
from functools import partial

import numpy as np
import pytest
from mirror import write_sums

from scaleaudit import data
from scaleaudit.errors import ScaleauditError
from scaleaudit.synthetic import write_npz


def test_fetch_from_mirror_verifies_and_records_provenance(tiny_mirror, tmp_path):
    dest = tmp_path / "out" / "breastmnist_28.npz"
    record = data.fetch("breastmnist", 28, dest, tiny_mirror)
    assert dest.exists()
    assert record["sha256"] == hashlib.sha256(dest.read_bytes()).hexdigest()
    assert record["verified_against"] == "mirror SHA256SUMS"
    assert record["official_md5"] == "750601b1f35ba3300ea97c75c52ff8f6"
    assert record["shapes"]["train_images"] == [546, 28, 28]


def test_real_breastmnist_mirror(real_mirror, tmp_path):
    record = data.fetch("breastmnist", 28, tmp_path / "b.npz", real_mirror)
    assert record["sha256"] == "5e68d79723fb3a63a399b0a66b66451799fc2eb3651f469cec0b679cfd743b68"
    splits = data.load_splits(tmp_path / "b.npz", "breastmnist", 28)
    assert {s: len(y) for s, (_, y) in splits.items()} == {"train": 546, "val": 78, "test": 156}
    assert splits["train"][0].shape[1:] == (28, 28, 1)
    assert int(splits["train"][1].sum()) == 399  # label 1 = normal/benign


def test_corrupt_mirror_file_is_rejected_and_leaves_nothing(tiny_mirror, tmp_path):
    path = tiny_mirror / "breastmnist.npz"
    path.write_bytes(path.read_bytes()[:-100])  # truncated after its checksum was recorded
    dest = tmp_path / "out" / "breastmnist_28.npz"
    with pytest.raises(ScaleauditError, match="checksum mismatch"):
        data.fetch("breastmnist", 28, dest, tiny_mirror)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temporary file left behind


def test_corrupt_file_does_not_replace_a_good_one(tiny_mirror, tmp_path):
    dest = tmp_path / "breastmnist_28.npz"
    data.fetch("breastmnist", 28, dest, tiny_mirror)
    good = dest.read_bytes()
    (tiny_mirror / "breastmnist.npz").write_bytes(b"not a zip file")
    with pytest.raises(ScaleauditError):
        data.fetch("breastmnist", 28, dest, tiny_mirror)
    assert dest.read_bytes() == good


def test_mirror_without_the_file(tiny_mirror, tmp_path):
    with pytest.raises(ScaleauditError, match="has no pneumoniamnist.npz") as err:
        data.fetch("pneumoniamnist", 28, tmp_path / "p.npz", tiny_mirror)
    assert "zenodo.org" in err.value.fix


def test_mirror_without_sums_falls_back_to_official_md5(tiny_mirror, tmp_path):
    (tiny_mirror / "SHA256SUMS").unlink()
    with pytest.raises(ScaleauditError, match="official 750601b1f35ba3300ea97c75c52ff8f6"):
        data.fetch("breastmnist", 28, tmp_path / "b.npz", tiny_mirror)


@pytest.fixture
def http_server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_is_verified_against_the_official_md5(http_server, tmp_path, monkeypatch):
    root, url = http_server
    payload = write_npz(root / "breastmnist.npz")
    md5 = hashlib.md5(payload.read_bytes()).hexdigest()
    monkeypatch.setattr(data, "official_source", lambda flag, size: {"url": f"{url}/breastmnist.npz", "md5": md5})
    record = data.fetch("breastmnist", 28, tmp_path / "b.npz")
    assert record["verified_against"] == "official MD5" and record["source"].startswith("http://127.0.0.1")

    monkeypatch.setattr(data, "official_source", lambda flag, size: {"url": f"{url}/breastmnist.npz", "md5": "0" * 32})
    with pytest.raises(ScaleauditError, match="corrupt or truncated"):
        data.fetch("breastmnist", 28, tmp_path / "c.npz")
    assert not (tmp_path / "c.npz").exists()


def test_config_mirror_wins_over_env(tiny_mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(data.MIRROR_ENV, str(tmp_path))
    assert data.resolve_mirror(str(tiny_mirror)) == tiny_mirror
    assert data.resolve_mirror(None) == tmp_path  # the variable fills a null config key
    monkeypatch.delenv(data.MIRROR_ENV)
    assert data.resolve_mirror(None) is None
    with pytest.raises(ScaleauditError, match="not a folder"):
        data.resolve_mirror(str(tmp_path / "missing"))


@pytest.mark.parametrize("shape", [(-1,), (-1, 1)])
def test_both_label_shapes_load_as_vectors(tmp_path, shape):
    path = write_npz(tmp_path / "b.npz", label_shape=shape)
    splits = data.load_splits(path, "breastmnist", 28)
    assert splits["train"][1].shape == (546,)
    assert splits["train"][0].dtype == np.uint8 and splits["train"][0].shape == (546, 28, 28, 1)


def test_unknown_flag_names_the_known_ones():
    with pytest.raises(ScaleauditError, match="unknown dataset flag 'breastmnst'") as err:
        data.info("breastmnst")
    assert "breastmnist" in err.value.fix


def test_stratified_subset_keeps_class_shares_and_is_seeded():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    idx = data.stratified_subset(labels, 0.1, seed=3)
    assert len(idx) == 100
    assert np.bincount(labels[idx]).tolist() == [90, 9, 1]
    assert np.array_equal(idx, data.stratified_subset(labels, 0.1, seed=3))
    assert not np.array_equal(idx, data.stratified_subset(labels, 0.1, seed=4))
    assert len(data.stratified_subset(labels, 1.0, seed=0)) == 1000
    rare = data.stratified_subset(labels, 0.01, seed=0)
    assert set(labels[rare]) == {0, 1, 2}  # every class survives a small fraction


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_fraction_outside_unit_interval(fraction):
    with pytest.raises(ScaleauditError, match="outside"):
        data.stratified_subset(np.zeros(10, dtype=int), fraction, 0)


def test_multilabel_subset():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 25)
    idx = data.stratified_subset(labels, 0.2, seed=0)
    assert len(idx) == 20 and len({tuple(r) for r in labels[idx]}) == 4


def test_write_sums_roundtrip(tmp_path):
    write_npz(tmp_path / "breastmnist_64.npz", size=64)
    write_sums(tmp_path)
    record = data.fetch("breastmnist", 64, tmp_path / "out.npz", tmp_path)
    assert record["shapes"]["val_images"] == [78, 64, 64]
