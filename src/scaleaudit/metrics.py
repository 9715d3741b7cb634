"""Evaluation metrics with the MedMNIST conventions, so numbers compare with the papers.

- binary: AUC of the class-1 score; ACC thresholds that score at 0.5
- multi-class and ordinal: AUC is the unweighted mean of one-vs-rest AUCs; ACC uses the argmax
- multi-label: per-label AUC and ACC (threshold 0.5), averaged over labels
Labels may be shaped (N,) or (N, 1). Scores are probabilities: (N, C) softmax outputs, or (N, L)
sigmoid outputs for multi-label tasks.
"""

from __future__ import annotations

import numpy as np

CHANCE_AUC = 0.5  # the AUC of scores that rank nothing (for multi-class and multi-label: the mean of 0.5s)
# A run whose best validation AUC is at most CHANCE_AUC + DIVERGED_MARGIN diverged (train.divergence). Every trained
# model of the MedMNIST benchmarks scores AUC >= 0.7 and seed noise is 0.01-0.03, so 0.55 lies far below any run that
# learned: a run there is a failure of training, not a weak model.
DIVERGED_MARGIN = 0.05

# sklearn is imported where it is used: it pulls in pandas, which a training job's start-up need not pay for.


def _labels(y: np.ndarray, task: str) -> np.ndarray:
    y = np.asarray(y)
    return y.reshape(len(y), -1) if task == "multi-label" else y.reshape(-1)


def auc(y: np.ndarray, scores: np.ndarray, task: str) -> float:
    from sklearn.metrics import roc_auc_score

    y, scores = _labels(y, task), np.asarray(scores, dtype=np.float64)
    if task == "binary":
        return float(roc_auc_score(y, scores[:, -1]))
    if task == "multi-label":
        return float(np.mean([roc_auc_score(y[:, i], scores[:, i]) for i in range(y.shape[1])]))
    per_class = [roc_auc_score(y == c, scores[:, c]) for c in range(scores.shape[1]) if 0 < (y == c).sum() < len(y)]
    return float(np.mean(per_class))


def predictions(scores: np.ndarray, task: str) -> np.ndarray:
    scores = np.asarray(scores)
    if task == "binary":
        return (scores[:, -1] > 0.5).astype(np.int64)
    if task == "multi-label":
        return (scores > 0.5).astype(np.int64)
    return scores.argmax(1)


def acc(y: np.ndarray, scores: np.ndarray, task: str) -> float:
    y = _labels(y, task)
    return float(np.mean(predictions(scores, task) == y))


def balanced_acc(y: np.ndarray, scores: np.ndarray, task: str) -> float:
    from sklearn.metrics import balanced_accuracy_score

    y, pred = _labels(y, task), predictions(scores, task)
    if task == "multi-label":
        return float(np.mean([balanced_accuracy_score(y[:, i], pred[:, i]) for i in range(y.shape[1])]))
    return float(balanced_accuracy_score(y, pred))


CALIBRATION_BINS = 15  # equal-width bins of confidence on [0, 1], as in MedMNIST+ and Guo et al. (ICML 2017)


def reliability(y: np.ndarray, scores: np.ndarray, task: str, bins: int = CALIBRATION_BINS) -> dict[str, np.ndarray]:
    """Reliability diagram of the predicted label's confidence (per label for multi-label): for each non-empty bin,
    its index, the mean confidence, the observed accuracy (share of predictions that are right) and the count."""
    y, scores = _labels(y, task), np.asarray(scores, dtype=np.float64)
    if task == "multi-label":
        conf = np.where(scores > 0.5, scores, 1 - scores).ravel()
        correct = ((scores > 0.5) == y).ravel()
    else:
        probs = np.column_stack([1 - scores[:, -1], scores[:, -1]]) if task == "binary" else scores
        conf, correct = probs.max(1), probs.argmax(1) == y
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    filled = count > 0
    return {
        "bin": np.flatnonzero(filled),
        "confidence": np.bincount(idx, weights=conf, minlength=bins)[filled] / count[filled],
        "accuracy": np.bincount(idx, weights=correct, minlength=bins)[filled] / count[filled],
        "count": count[filled],
    }


def ece(y: np.ndarray, scores: np.ndarray, task: str, bins: int = CALIBRATION_BINS) -> float:
    """Expected calibration error: the gap between accuracy and confidence of the reliability diagram, weighted by
    the share of predictions in each bin."""
    r = reliability(y, scores, task, bins)
    return float(np.sum(r["count"] * np.abs(r["accuracy"] - r["confidence"])) / r["count"].sum())


METRICS = ("auc", "acc", "bacc", "ece")


def evaluate(y: np.ndarray, scores: np.ndarray, task: str) -> dict[str, float]:
    """AUC, ACC, balanced accuracy and ECE of one split; NaN each when a score is not finite (a diverged model's
    weights: it ranks nothing, and sklearn would refuse the scores)."""
    if not np.isfinite(np.asarray(scores, dtype=np.float64)).all():
        return dict.fromkeys(METRICS, float("nan"))
    return {
        "auc": auc(y, scores, task),
        "acc": acc(y, scores, task),
        "bacc": balanced_acc(y, scores, task),
        "ece": ece(y, scores, task),
    }
