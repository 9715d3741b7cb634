"""The kNN probe of MedMNIST+: no training, a vote of the k nearest training images in the frozen backbone's
feature space.

As sdoerrich97/rethinking-model-prototyping-MedMNISTPlus@b67b772 does it (evaluate.py, utils.py): the support set
is the training split's pre-logits features (what the classifier receives), searched with
``NearestNeighbors(n_neighbors=k, algorithm='ball_tree')`` (Euclidean), and the prediction is the neighbours'
majority (per label for multi-label tasks, ``mean > 0.5``). Their code reports no AUC for it; here the class
probabilities are the vote shares, so AUC and calibration can be scored like any arm, and ACC (the argmax of the
shares, threshold 0.5 for multi-label) is their majority vote: an odd k leaves no binary tie, and a multi-class tie
goes to the lowest class as ``scipy.stats.mode`` gives it.

The search is brute force on the run's device (a ball tree prunes nothing on 768-d features: ~2.2 us per
query-support pair on one core against a GEMM's fraction of that), with the ball tree's neighbours: candidates by
float64 GEMM distances, ranked by the exact float64 squared distances the ball tree compares. Where points tie at
the k-th distance with different labels (duplicate images), the ball tree keeps the first one its traversal visits
(its heap admits only strictly closer points), an order no rule on indices reproduces: those few queries are
answered by the ball tree itself, built only then.
"""

from __future__ import annotations

import numpy as np
import torch

K = 11  # MedMNIST+ config.yaml `k: 11` (evaluate.py hard-codes n_neighbors=11)
MARGIN = 8  # candidates beyond k ranked exactly: a GEMM distance's rounding cannot reorder points this far apart
CHUNK_BYTES = 1 << 30  # float64 distances of one chunk of queries against the whole support set


class Index:
    """The training split's features on their device, built once per run and searched for any set of queries."""

    def __init__(self, support: torch.Tensor, labels: np.ndarray, k: int, task: str, n_classes: int):
        self.support = support.to(torch.float64)
        self.sq_norms = (self.support**2).sum(1)
        self.labels, self.k, self.task, self.n_classes = labels, k, task, n_classes
        self._tree = None

    def neighbours(self, queries: torch.Tensor) -> np.ndarray:
        """(N, k) support rows nearest to each query, the ball tree's set (in order of distance)."""
        n = len(self.support)
        m = min(n, self.k + MARGIN)
        q = queries.to(self.support.device, torch.float64)
        step = max(1, CHUNK_BYTES // (8 * n))
        found, ties = [], []
        for start in range(0, len(q), step):
            x = q[start : start + step]
            approx = (x**2).sum(1, keepdim=True) - 2 * x @ self.support.T + self.sq_norms
            cand = approx.topk(m, dim=1, largest=False).indices.sort(dim=1).values  # by index, then stably by distance
            exact = ((x[:, None, :] - self.support[cand]) ** 2).sum(-1)  # the ball tree's rdist
            exact, order = exact.sort(dim=1, stable=True)
            found.append(cand.gather(1, order)[:, : self.k].cpu())
            kth = exact[:, self.k - 1]
            tie = exact[:, self.k] == kth if m > self.k else torch.zeros_like(kth, dtype=torch.bool)
            if m < n:  # the tie may go on beyond the candidates
                tie |= exact[:, m - 1] == kth
            ties.append(tie.cpu())
        nbrs = torch.cat(found).numpy()
        tied = torch.cat(ties).numpy() if ties else np.zeros(0, bool)
        tied[tied] = [self._labels_differ(q[i], nbrs[i]) for i in np.flatnonzero(tied)]
        if tied.any():
            nbrs[tied] = self._ball_tree().kneighbors(q[tied].cpu().numpy(), return_distance=False)
        return nbrs

    def _labels_differ(self, query: torch.Tensor, nbrs: np.ndarray) -> bool:
        """Whether the points at the k-th distance carry different labels (then which ones are kept matters)."""
        d = ((query - self.support) ** 2).sum(1)
        tied = (d == d[int(nbrs[-1])]).cpu().numpy()
        return len(np.unique(self.labels[tied], axis=0)) > 1

    def _ball_tree(self):
        from sklearn.neighbors import NearestNeighbors

        if self._tree is None:
            self._tree = NearestNeighbors(n_neighbors=self.k, algorithm="ball_tree").fit(self.support.cpu().numpy())
        return self._tree

    def shares(self, queries: torch.Tensor) -> np.ndarray:
        """(N, classes) shares of the k nearest support rows' labels ((N, labels) for multi-label)."""
        votes = self.labels[self.neighbours(queries)]  # (N, k) or (N, k, labels)
        if self.task == "multi-label":
            return votes.mean(1)
        return np.stack([(votes == c).mean(1) for c in range(self.n_classes)], axis=1)
