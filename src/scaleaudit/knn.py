"""The kNN probe of MedMNIST+: no training, a vote of the k nearest training images in the frozen backbone's
feature space.

As sdoerrich97/rethinking-model-prototyping-MedMNISTPlus@b67b772 does it (evaluate.py, utils.py): the support set
is the training split's pre-logits features (what the classifier receives), searched with
``NearestNeighbors(n_neighbors=k, algorithm='ball_tree')`` (Euclidean), and the prediction is the neighbours'
majority (per label for multi-label tasks, ``mean > 0.5``). Their code reports no AUC for it; here the class
probabilities are the vote shares, so AUC and calibration can be scored like any arm, and ACC (the argmax of the
shares, threshold 0.5 for multi-label) is their majority vote: an odd k leaves no binary tie, and a multi-class tie
goes to the lowest class as ``scipy.stats.mode`` gives it.
"""

from __future__ import annotations

import numpy as np

K = 11  # MedMNIST+ config.yaml `k: 11` (evaluate.py hard-codes n_neighbors=11)


def vote_shares(
    support: np.ndarray, support_labels: np.ndarray, queries: dict[str, np.ndarray], k: int, task: str, n_classes: int
) -> dict[str, np.ndarray]:
    """Per query split, (N, classes) shares of the k nearest support rows' labels ((N, labels) for multi-label)."""
    from sklearn.neighbors import NearestNeighbors

    index = NearestNeighbors(n_neighbors=k, algorithm="ball_tree").fit(support)
    out = {}
    for split, x in queries.items():
        votes = support_labels[index.kneighbors(x, return_distance=False)]  # (N, k) or (N, k, labels)
        out[split] = (
            votes.mean(1)
            if task == "multi-label"
            else np.stack([(votes == c).mean(1) for c in range(n_classes)], axis=1)
        )
    return out
