"""Per run, what the run table does not hold: the learning curve (the per-epoch history of ``metrics.json``) and the
reliability diagram of the test predictions (``predictions.npz`` beside it), matched to the run table's rows, and
the run's metric on resamples of the test images (``testsample``)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pandas as pd

from .. import metrics, testsample
from ..design import RUN_KEY
from ..errors import ScaleauditError
from ..records import RunResult


@dataclass
class Curves:
    history: pd.DataFrame  # RUN_KEY + the history's columns (epoch, train_loss, val_<metric> on eval epochs, ...)
    reliability: pd.DataFrame  # RUN_KEY + bin, confidence, accuracy, count (metrics.reliability)
    missing: pd.DataFrame  # RUN_KEY of the runs in the table whose run files were not given
    test_sample: testsample.Sample  # the verdict metric of each run on the resamples of its test images


def load(metrics_files: list[str | os.PathLike], runs: pd.DataFrame, metric: str = "auc") -> Curves:
    """The curves of the runs whose ``metrics.json`` files are given; each must be a run of the table (same key
    and config hash), so a stale or foreign run folder cannot slip into the figures; the test sample's resamples
    from their predictions (``testsample.load``)."""
    hashes = {tuple(k): h for k, h in zip(runs[RUN_KEY].itertuples(index=False), runs["config_hash"])}
    history, reliability, seen = [], [], set()
    for path in metrics_files:
        result = RunResult.load(path)
        key = {k: getattr(result.run, k) for k in RUN_KEY}
        if hashes.get(tuple(key.values())) != result.run.config_hash:
            raise ScaleauditError(
                f"{path} is not a run of the run table (no row with its dataset, size, fraction, arm, seed and config "
                f"hash {result.run.config_hash})",
                "give the report the metrics.json files the run table was aggregated from (re-run aggregate)",
            )
        curve = metrics.reliability(*testsample.predictions(path), result.task)
        history.append(pd.DataFrame(result.history).assign(**key))
        reliability.append(pd.DataFrame(curve).assign(**key))
        seen.add(tuple(key.values()))
    missing = runs[[tuple(k) not in seen for k in runs[RUN_KEY].itertuples(index=False)]][RUN_KEY]
    return Curves(
        history=pd.concat(history, ignore_index=True) if history else pd.DataFrame(columns=RUN_KEY),
        reliability=pd.concat(reliability, ignore_index=True) if reliability else pd.DataFrame(columns=RUN_KEY),
        missing=missing.reset_index(drop=True),
        test_sample=testsample.load(metrics_files, metric),
    )
