"""The test split as a sample: how much a cell's mean paired difference would move with other test images.

Every interval over seeds holds the test split fixed, so alone it is a claim about these test images. A paired
bootstrap over test images crossed with seeds adds the test sample's part: each run's metric is recomputed on
RESAMPLES resamples of the test images (the same resamples for every run of a task, so pairs and seeds stay
paired), and the variance over resamples of the mean over seeds of the paired differences is the test-sample
variance of the cell's mean difference (``variances``). ``stats.compare`` adds it to the seed variance of the mean.

The metrics follow ``metrics.py`` (MedMNIST conventions) on resample weights, vectorised over the resamples: AUC from
ranks (ties half), ACC and balanced accuracy from weighted counts; with unit weights they equal ``metrics.evaluate``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics, stats
from .design import CELL, RUN_KEY, TASK
from .errors import ScaleauditError
from .records import PREDICTIONS, RunResult

RESAMPLES = 200  # bootstrap resamples of the test images: the variance's Monte Carlo error is ~sqrt(2/199) = 10 %
SEED = 0  # the resamples are fixed per test-set size, so a report is reproducible


@cache
def weights(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """How often each of ``n`` test images is drawn in each resample, (resamples, n): a bootstrap with replacement."""
    draws = np.random.default_rng([seed, n]).integers(0, n, (resamples, n))
    rows = np.arange(resamples)[:, None] * n
    out = np.bincount((draws + rows).ravel(), minlength=resamples * n).reshape(resamples, n).astype(float)
    out.flags.writeable = False
    return out


def _binary_auc(positive: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """AUC of ``score`` for the boolean ``positive`` under each row of weights ``w``: the weighted share of
    (positive, negative) pairs ranked right, ties half (the Mann-Whitney form of roc_auc_score). NaN where a
    resample lacks a class."""
    order = np.argsort(score, kind="stable")
    s, pos, w = score[order], positive[order], w[:, order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # groups of equal scores
    p = np.add.reduceat(w * pos, starts, axis=1)
    q = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(q, axis=1) - q
    with np.errstate(invalid="ignore", divide="ignore"):
        return (p * (below + 0.5 * q)).sum(axis=1) / (p.sum(axis=1) * q.sum(axis=1))


def resampled(y: np.ndarray, scores: np.ndarray, task: str, metric: str, w: np.ndarray) -> np.ndarray:
    """``metric`` (auc, acc or bacc, as ``metrics.py`` computes it) of one run's test predictions on each resample
    (rows of ``w``); NaN throughout where a score is not finite (a diverged run)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():
        return np.full(len(w), math.nan)
    y = metrics._labels(y, task)
    if metric == "auc":
        if task == "binary":
            return _binary_auc(y == 1, scores[:, -1], w)
        if task == "multi-label":
            return np.nanmean([_binary_auc(y[:, i] == 1, scores[:, i], w) for i in range(y.shape[1])], axis=0)
        classes = [c for c in range(scores.shape[1]) if 0 < (y == c).sum() < len(y)]
        return np.nanmean([_binary_auc(y == c, scores[:, c], w) for c in classes], axis=0)
    pred = metrics.predictions(scores, task)
    if metric == "acc":
        right = (pred == y).reshape(len(y), -1).mean(axis=1)
        return w @ right / w.sum(axis=1)
    if metric == "bacc":
        labels = y.T if task == "multi-label" else [y]
        preds = pred.T if task == "multi-label" else [pred]
        per_label = []
        for yl, pl in zip(labels, preds):
            with np.errstate(invalid="ignore", divide="ignore"):
                recall = [w @ ((yl == c) & (pl == c)) / (w @ (yl == c)) for c in np.unique(yl)]
            per_label.append(np.nanmean(recall, axis=0))
        return np.mean(per_label, axis=0)
    raise ValueError(f"no resampled {metric!r}: one of auc, acc, bacc")


@dataclass(frozen=True)
class Sample:
    """The runs' metric on the resamples of their test images, and each task's test images."""

    scores: dict  # run key (RUN_KEY values) -> the metric on each resample (``resampled``)
    images: dict  # task (dataset, size) -> its test images


def predictions(metrics_file: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The test labels and predicted probabilities a run saved beside its ``metrics.json``."""
    path = Path(metrics_file).parent / PREDICTIONS
    if not path.exists():
        raise ScaleauditError(
            f"{path} is missing: every finished run writes it before metrics.json",
            "delete the run folder and train the run again",
        )
    with np.load(path) as p:
        return p["labels"], p["probabilities"]


def load(metrics_files: list[str | os.PathLike], metric: str) -> Sample:
    """Each run's ``metric`` on the resamples of its test images, from the predictions beside its ``metrics.json``;
    the runs of a task must share their test labels (the resamples pair images across runs)."""
    scores, labels = {}, {}
    for path in metrics_files:
        result = RunResult.load(path)
        key = tuple(getattr(result.run, k) for k in RUN_KEY)
        y, probabilities = predictions(path)
        task = key[:2]
        if not np.array_equal(labels.setdefault(task, y), y):
            raise ScaleauditError(
                f"{Path(path).parent / PREDICTIONS} has other test labels than the other runs on {task[0]} @ "
                f"{task[1]} px",
                "the runs of a study share one test split: re-run the runs trained on another copy of the data",
            )
        scores[key] = resampled(y, probabilities, result.task, metric, weights(len(y)))
    return Sample(scores=scores, images={task: len(y) for task, y in labels.items()})


def _or(values: np.ndarray, score: float) -> np.ndarray:
    return values if np.isfinite(values).all() else np.full(len(values), score)


def variances(runs: pd.DataFrame, scores: dict, metric: str) -> pd.DataFrame:
    """Per cell, large arm and small arm (every small arm, as ``stats.compare`` bounds the interval by each): the
    test-sample variance of the mean over paired seeds of the paired difference (``test_var``) with its degrees of
    freedom (``test_df``, the resamples less one). ``scores``: run key (RUN_KEY values) -> the run's metric on each
    resample (``resampled``). A diverged run without finite predictions counts as its (constant) scored value, as in
    ``stats.scored``. Comparisons with a run whose predictions were not given get no row."""
    pairs = stats.paired(runs, metric, every=True)
    rows = []
    for key, g in pairs.groupby(CELL + ["arm", "small_arm"], sort=True):
        cell, arm, small = key[:3], key[3], key[4]
        large = [scores.get((*cell, arm, s)) for s in g["seed"]]
        small_ = [scores.get((*cell, small, s)) for s in g["seed"]]
        if any(v is None for v in large + small_):
            continue
        diff = np.mean([_or(a, x) - _or(b, y) for a, b, x, y in zip(large, small_, g["large"], g["small"])], axis=0)
        rows.append(
            dict(zip(CELL + ["arm", "small_arm"], key)) | {"test_var": diff.var(ddof=1), "test_df": len(diff) - 1}
        )
    return pd.DataFrame(rows, columns=CELL + ["arm", "small_arm", "test_var", "test_df"])


def split(comparisons: pd.DataFrame, images: dict) -> pd.DataFrame:
    """Per task (dataset at one image size): its test images and how much of the variance of the gain (the cells'
    mean paired differences to the partner, averaged over its comparisons) is seeds and how much the test sample."""
    c = comparisons.dropna(subset=["seed_var", "test_var"])
    out = c.groupby(TASK, sort=True)[["seed_var", "test_var"]].mean().reset_index()
    out["test_images"] = [images.get(k) for k in zip(out["dataset"], out["size"])]
    out["test_share"] = out["test_var"] / (out["seed_var"] + out["test_var"])
    return out[TASK + ["test_images", "seed_var", "test_var", "test_share"]]
