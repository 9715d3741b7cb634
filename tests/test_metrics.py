"""Metrics against values computed by hand (MedMNIST conventions)."""

import numpy as np
import pytest

from scaleaudit import metrics

BIN_Y = np.array([0, 0, 1, 1])
BIN_P1 = np.array([0.1, 0.6, 0.4, 0.8])
BIN_SCORES = np.column_stack([1 - BIN_P1, BIN_P1])

MC_Y = np.array([0, 1, 2, 2])
MC_SCORES = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3]])

ML_Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
ML_SCORES = np.array([[0.9, 0.2], [0.4, 0.7], [0.6, 0.4], [0.2, 0.5]])


@pytest.mark.parametrize("labels", [BIN_Y, BIN_Y.reshape(-1, 1)])
def test_binary(labels):
    m = metrics.evaluate(labels, BIN_SCORES, "binary")
    assert m["auc"] == pytest.approx(0.75)  # 3 of 4 (negative, positive) pairs ordered correctly
    assert m["acc"] == pytest.approx(0.5)  # predictions [0, 1, 0, 1] at threshold 0.5
    assert m["bacc"] == pytest.approx(0.5)


def test_binary_ece_by_hand():
    # confidences 0.9, 0.6, 0.6, 0.8 all fall into the upper of two bins; accuracy there is 0.5
    assert metrics.ece(BIN_Y, BIN_SCORES, "binary", bins=2) == pytest.approx(abs(0.5 - 0.725))


@pytest.mark.parametrize("task", ["multi-class", "ordinal"])
def test_multiclass_and_ordinal(task):
    m = metrics.evaluate(MC_Y.reshape(-1, 1), MC_SCORES, task)
    # one-vs-rest AUCs 1, 1 and 3.5/4 (a tie counts half), unweighted mean
    assert m["auc"] == pytest.approx((1 + 1 + 0.875) / 3)
    assert m["acc"] == pytest.approx(0.75)  # argmax [0, 1, 2, 1]
    assert m["bacc"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_multilabel():
    m = metrics.evaluate(ML_Y, ML_SCORES, "multi-label")
    assert m["auc"] == pytest.approx((1.0 + 0.75) / 2)  # label 0 perfectly ranked, label 1 3 of 4 pairs
    assert m["acc"] == pytest.approx((1.0 + 0.75) / 2)  # per-label accuracy at 0.5, averaged
    assert m["bacc"] == pytest.approx((1.0 + 0.75) / 2)


def test_perfectly_calibrated_scores_have_zero_ece():
    y = np.array([1] * 8 + [0] * 2)
    scores = np.tile([0.2, 0.8], (10, 1))  # 80 % confident, 80 % right
    assert metrics.ece(y, scores, "binary") == pytest.approx(0.0)


def test_binary_reliability_by_hand():
    r = metrics.reliability(BIN_Y, BIN_SCORES, "binary", bins=2)
    assert r["bin"].tolist() == [1] and r["count"].tolist() == [4]
    assert r["confidence"] == pytest.approx([0.725]) and r["accuracy"] == pytest.approx([0.5])


def _planted(task: str, n: int, sharpen: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from planted class probabilities; the scores are those probabilities, sharpened (a temperature
    below 1: overconfident) or not (sharpen = 1: calibrated by construction)."""
    if task == "binary":
        p1 = rng.uniform(0, 1, n)
        y = (rng.uniform(size=n) < p1).astype(int)
        logit = np.log(p1 / (1 - p1)) * sharpen
        s1 = 1 / (1 + np.exp(-logit))
        return y, np.column_stack([1 - s1, s1])
    probs = rng.dirichlet(np.ones(4), n)
    y = (rng.uniform(size=(n, 1)) > probs.cumsum(1)).sum(1)
    sharp = probs**sharpen
    return y, sharp / sharp.sum(1, keepdims=True)


@pytest.mark.parametrize("task", ["binary", "multi-class"])
def test_reliability_recovers_a_planted_calibration(task):
    rng = np.random.default_rng(0)
    y, calibrated = _planted(task, 40_000, 1.0, rng)
    r = metrics.reliability(y, calibrated, task)
    big = r["count"] >= 1000  # bins with enough predictions that sampling noise is small (sd < 0.016)
    assert big.sum() >= 5 and np.abs(r["accuracy"] - r["confidence"])[big].max() < 0.05
    assert metrics.ece(y, calibrated, task) < 0.015
    # overconfident (sharpened 3x): accuracy falls below confidence in the confident bins, and ECE sees it
    y, over = _planted(task, 40_000, 3.0, rng)
    r = metrics.reliability(y, over, task)
    top = r["confidence"] > 0.7
    assert (r["accuracy"][top] < r["confidence"][top] - 0.03).all()
    assert metrics.ece(y, over, task) > 0.05
