"""The kNN probe arm (MedMNIST+: k = 11 on frozen features): their majority vote, scored like any arm."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import tiny_study
import torch
from scipy import stats

from scaleaudit import config, features, job, knn, train
from scaleaudit.records import RunResult


def their_knn_majority_vote(nbrs, embeddings, support_set_labels, task):
    """sdoerrich97/rethinking-model-prototyping-MedMNISTPlus@b67b772 utils.py knn_majority_vote, verbatim but for
    ``keepdims=True``: the scipy of 2024 returned the mode with its axis kept, which ``[0][0]`` indexes."""
    distances, indices = nbrs.kneighbors(embeddings)
    outputs = []
    for neighbors in indices:
        if task == "multi-label, binary-class":
            classes = np.array([support_set_labels[i] for i in neighbors])
            majority_classes = np.mean(classes, axis=0) > 0.5
            outputs.append(majority_classes)
        else:
            classes = [support_set_labels[i] for i in neighbors]
            majority_class = stats.mode(classes, keepdims=True)[0][0]
            outputs.append(majority_class)
    outputs = torch.from_numpy(np.array(outputs))
    return outputs.reshape(outputs.shape[0], -1)


@pytest.mark.parametrize("task,n_classes", [("binary", 2), ("multi-class", 5), ("multi-label", 4)])
def test_vote_shares_give_their_majority_vote(task, n_classes):
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(0)
    support, queries = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(120, 8)).astype(np.float32)
    labels = (
        rng.integers(0, 2, size=(300, n_classes)) if task == "multi-label" else rng.integers(0, n_classes, (300, 1))
    )
    nbrs = NearestNeighbors(n_neighbors=11, algorithm="ball_tree").fit(support)  # their evaluate.py
    theirs = their_knn_majority_vote(
        nbrs, queries, labels, "multi-label, binary-class" if task == "multi-label" else task
    )

    ours_labels = labels if task == "multi-label" else labels.reshape(-1)  # scaleaudit's label layout
    shares = knn.Index(torch.from_numpy(support), ours_labels, knn.K, task, n_classes).shares(torch.from_numpy(queries))
    assert np.allclose(shares * 11, np.round(shares * 11))  # vote counts out of k
    if task == "multi-label":
        assert np.array_equal(shares > 0.5, theirs.numpy().astype(bool))
    else:
        assert np.allclose(shares.sum(1), 1) and np.array_equal(shares.argmax(1), theirs.numpy().reshape(-1))


def duplicated_features(seed=0, distinct=150, dim=48):
    """Feature rows like a real training split's: class clusters, and duplicate images (identical rows) some of
    which carry different labels, so that queries meet exact ties at the k-th distance; queries that are support
    rows (distance 0), their duplicates, and new points."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, 3, distinct)
    points = (rng.normal(size=(distinct, dim)) + 2 * np.eye(3, dim)[classes]).astype(np.float32)
    rows = np.concatenate([np.arange(distinct), rng.integers(0, distinct, 4 * distinct)])
    labels = np.where(rng.random(len(rows)) < 0.3, rng.integers(0, 3, len(rows)), classes[rows])
    queries = np.concatenate([points[: distinct // 2], rng.normal(size=(100, dim)).astype(np.float32) * 1.5])
    return points[rows], labels, queries


def test_brute_force_finds_the_ball_trees_neighbours_and_votes_ties_included():
    from sklearn.neighbors import NearestNeighbors

    support, labels, queries = duplicated_features()
    tree = NearestNeighbors(n_neighbors=knn.K, algorithm="ball_tree").fit(support).kneighbors(queries)[1]
    index = knn.Index(torch.from_numpy(support), labels, knn.K, "multi-class", 3)
    ours = index.neighbours(torch.from_numpy(queries))
    assert index._tree is not None  # label-changing ties occurred and went to the tree's own order
    # the same neighbours (a duplicate of the same label may stand in for another: the vote is the same)
    assert np.array_equal(np.sort(labels[ours], 1), np.sort(labels[tree], 1))
    same = [set(a) == set(b) for a, b in zip(ours, tree)]
    assert sum(same) >= 0.9 * len(same)
    before = np.stack([(labels[tree] == c).mean(1) for c in range(3)], axis=1)  # the ball-tree vote of knn.py
    assert np.array_equal(index.shares(torch.from_numpy(queries)), before)


def test_brute_force_in_chunks_gives_the_same_neighbours(monkeypatch):
    support, labels, queries = duplicated_features(seed=1)
    index = knn.Index(torch.from_numpy(support), labels, knn.K, "multi-class", 3)
    whole = index.neighbours(torch.from_numpy(queries))
    monkeypatch.setattr(knn, "CHUNK_BYTES", 8 * len(support) * 7)  # 7 queries a chunk
    assert np.array_equal(index.neighbours(torch.from_numpy(queries)), whole)


def knn_spec(seed=1, fraction=1.0):
    raw = copy.deepcopy(tiny_study.TINY_CONFIG)
    raw["arms"]["knn"] = {
        "model": "vit_tiny_patch16_224",
        "input_size": 32,
        "recipe": "tiny",
        "group": "large",
        "train": "knn_probe",
    }
    raw["design"]["arms"] = ["knn"]
    raw["hardware"]["precision"] = "fp32"
    return config.run_spec(config.validate(raw), "breastmnist", 28, "knn", fraction, seed)


def test_knn_arm_writes_a_run_like_any_arm(tiny_mirror, tmp_path, monkeypatch):
    record = tiny_study.fetch(tiny_mirror, tmp_path / "data")
    spec = knn_spec()
    assert features.usable(spec)
    metered = []
    real_compute = features.compute
    monkeypatch.setattr(features, "compute", lambda *a, **k: metered.append(1) or real_compute(*a, **k))
    result = job.run(spec, record, tmp_path / "run", None, None, threads=1)

    saved = RunResult.load(tmp_path / "run" / "metrics.json")  # the layout every arm has
    assert saved.run.train_mode == "knn_probe" and saved.epochs_run == 0 and saved.history == []
    assert saved.cost["trainable_params"] == 0 and saved.cost["params"] > 0
    assert saved.cost["train_seconds"] > 0 and len(metered) == 3  # the backbone's pass is the run's (metered) cost
    assert 0 <= saved.test["auc"] <= 1 and saved.test["loss"] is None and saved.val["loss"] is None
    probs = np.load(tmp_path / "run" / "predictions.npz")["probabilities"]
    assert probs.shape == (156, 2) and np.allclose(probs * 11, np.round(probs * 11))
    # the row of the run table the report and the verdict read
    row = saved.row()
    assert row["test_auc"] == result["test"]["auc"] and row["train_mode"] == "knn_probe"
    # the synthetic classes are separable by brightness: the vote finds them
    assert saved.test["auc"] > 0.9


def test_shift_evaluation_builds_the_knn_index_once(tiny_mirror, tmp_path, monkeypatch):
    """One index serves the clean test set and every corruption and severity."""
    record = tiny_study.fetch(tiny_mirror, tmp_path / "data")
    trainer = train.Trainer(knn_spec(), record["file"], None, torch.device("cpu"), log=lambda m: None)
    trainer.fit(tmp_path / "ckpt.pt")
    built = []
    real = knn.Index.__init__
    monkeypatch.setattr(knn.Index, "__init__", lambda self, *a: built.append(1) or real(self, *a))
    _, _, clean = trainer.test()
    images = np.load(record["file"])["test_images"]
    for _ in range(3):
        assert trainer.probabilities(images).shape == clean.shape
    assert np.array_equal(trainer.probabilities(images), clean) and len(built) == 1


def test_knn_with_fewer_training_images_than_k(tiny_mirror, tmp_path):
    """A small fraction may leave fewer images than neighbours: all of them vote."""
    record = tiny_study.fetch(tiny_mirror, tmp_path / "data")
    spec = knn_spec(fraction=0.01)  # 5 training images
    trainer = train.Trainer(spec, record["file"], None, torch.device("cpu"), log=lambda m: None)
    trainer.fit(tmp_path / "ckpt.pt")
    val, test, probs = trainer.test()
    assert trainer.n_train < 11 and np.allclose(probs * trainer.n_train, np.round(probs * trainer.n_train))
