"""The run table verified, not trusted: before ``aggregate`` writes it and before ``report`` reads it.

- every run's test AUC, ACC, balanced accuracy and ECE, recomputed from its ``predictions.npz`` with ``metrics``,
  equal its ``metrics.json`` (a hand-edited or mixed-up run folder is refused), and its selected weights are the file
  whose SHA-256 it recorded;
- at ``aggregate``, where the study's tracking store answers, every run's final test metrics in MLflow equal its
  ``metrics.json`` (an unreachable store is a warning, and the run table records which runs were compared);
- every row of ``runs.csv`` equals the ``metrics.json`` it came from (a hand-edited table is refused);
- every score is in range, and finite or absent (NaN: the run has no such score, and is counted without it);
- every run the design asks for is in the table;
- the plan ``scaleaudit plan`` wrote before the study has the layout this version reads (an older plan is refused).

A failed check is a ``ScaleauditError`` naming the run and the fix (exit 2).
"""

from __future__ import annotations

import io
import math
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics, tracking
from .design import RUN_KEY
from .errors import ScaleauditError
from .files import file_digest, read_json
from .records import PREDICTIONS, SPLIT_METRICS, RunResult, read_runs

RECOMPUTED = metrics.METRICS  # the test metrics the predictions give (the loss needs the logits)
RANGES = dict.fromkeys(RECOMPUTED, (0.0, 1.0)) | {"loss": (0.0, math.inf)}
TOLERANCE = 1e-9  # the same arrays give the same metrics; only the JSON round trip may differ in the last bit
RETRAIN = "delete the run folder {} and re-run the workflow to train the run again"
MOST = 5  # runs named in one message
MLFLOW_CHECKED = "mlflow_checked"  # run table column: the run's MLflow metrics were compared at aggregate


def run_name(r) -> str:
    return f"{r.arm} on {r.dataset} @ {r.size} px, fraction {r.fraction:g}, seed {r.seed}"


def _listed(items: list[str]) -> str:
    return "; ".join(items[:MOST]) + (f"; and {len(items) - MOST} more" if len(items) > MOST else "")


def run(path: str | os.PathLike) -> RunResult:
    """One run folder: its ``metrics.json``, checked against the predictions beside it."""
    result = RunResult.load(path)
    folder = Path(path).parent
    predictions = folder / PREDICTIONS
    if not predictions.exists():
        raise ScaleauditError(
            f"{predictions} is missing: every finished run writes it before metrics.json", RETRAIN.format(folder)
        )
    with np.load(predictions) as p:
        again = metrics.evaluate(p["labels"], p["probabilities"], result.task)  # as training computed them
    off = [
        f"test {k} {result.test[k]!r} in metrics.json, {again[k]!r} from predictions.npz"
        for k in RECOMPUTED
        if not _same(result.test[k], again[k])
    ]
    if off:
        raise ScaleauditError(
            f"{path} does not match its predictions ({run_name(result.run)}): {'; '.join(off)}",
            RETRAIN.format(folder) + " (a metrics.json edited by hand, or files of two runs mixed)",
        )
    if result.best_weights is not None:  # a kNN probe or an older run keeps none
        weights(folder, result.best_weights, run_name(result.run))
    return result


def weights(folder: str | os.PathLike, record: dict, name: str = "") -> None:
    """The run folder's selected weights are the file its ``metrics.json`` recorded (``best_weights``: its SHA-256)."""
    path = Path(folder) / record["file"]
    of = f" ({name})" if name else ""
    if not path.exists():
        raise ScaleauditError(f"{path} (the run's selected weights{of}) is missing", RETRAIN.format(folder))
    if file_digest(path, "sha256") != record["sha256"]:
        raise ScaleauditError(
            f"{path} is not the file its run recorded{of}: SHA-256 differs from best_weights in metrics.json",
            RETRAIN.format(folder),
        )


def tracked(results: list[RunResult], record: dict | None) -> list[bool]:
    """Each run's final test metrics in the study's MLflow store (``record``: ``tracking.job_tracking``'s) equal its
    ``metrics.json``; per run, whether it was compared. An unreachable store, or a run it lacks (a store reset since),
    is a warning on stderr and the run is not compared: ``metrics.json`` was checked against the predictions."""
    ids = [(r.tracking or {}).get("run_id") for r in results]
    if record is None or not any(ids):
        return [False] * len(results)
    try:
        logged = tracking.final_metrics(record, [i for i in ids if i])
    except tracking.TrackingUnavailable as exc:
        _warn(f"MLflow metrics not compared with metrics.json: {exc.problem}")
        return [False] * len(results)
    off, lacking = [], []
    for r, run_id in zip(results, ids):
        if run_id and logged.get(run_id) is None:
            lacking.append(run_name(r.run))
            continue
        off += [
            f"{run_name(r.run)} (MLflow run {run_id}): test_{k} {got!r} in MLflow, {v!r} in metrics.json"
            for k, v in r.test.items()
            if run_id and v is not None and not _same(got := logged[run_id].get(f"test_{k}", math.nan), v)
        ]
    if off:
        raise ScaleauditError(
            f"{len(off)} test metric(s) in MLflow differ from the runs' metrics.json: {_listed(off)}",
            "delete the named run folders and re-run the workflow to train them again (a metrics.json edited by hand, "
            "or a run folder that is not the MLflow run it names)",
        )
    if lacking:
        _warn(f"{record['tracking_uri']} has no MLflow run for {len(lacking)} run(s), not compared: {_listed(lacking)}")
    return [bool(i) and logged.get(i) is not None for i in ids]


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, abs_tol=TOLERANCE) or (math.isnan(a) and math.isnan(b))


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def rows(runs: pd.DataFrame, paths: list[str | os.PathLike], runs_csv: str | os.PathLike = "runs.csv") -> None:
    """Each row of the table whose run folder is given equals that run's ``metrics.json`` (after the same CSV round
    trip), and each given folder is a row of the table."""
    results = [run(p) for p in paths]
    if not results:
        return
    expected = read_runs(io.StringIO(pd.DataFrame([r.row() for r in results]).to_csv(index=False)))
    both = runs.reset_index(drop=True).merge(expected, on=RUN_KEY, how="right", suffixes=("", "_json"), indicator=True)
    absent = both[both["_merge"] == "right_only"]
    if len(absent):
        raise ScaleauditError(
            f"{runs_csv} has no row for {len(absent)} run(s) given: {_listed([run_name(r) for r in absent.itertuples()])}",
            "re-run the workflow: aggregate writes the run table again from every run's metrics.json",
        )
    differ = []
    for column in [c for c in expected.columns if c not in RUN_KEY]:
        if column not in runs:
            differ.append(f"column {column} is missing")
            continue
        got, want = both[column], both[f"{column}_json"]
        if pd.api.types.is_numeric_dtype(want) and pd.api.types.is_numeric_dtype(got):
            same = np.isclose(got.astype(float), want.astype(float), rtol=0, atol=TOLERANCE, equal_nan=True)
        else:
            same = got.astype(str) == want.astype(str)
        differ += [
            f"{run_name(r)}: {column} {g!r}, metrics.json {w!r}"
            for r, g, w in zip(both[~same].itertuples(), got[~same], want[~same])
        ]
    if differ:
        raise ScaleauditError(
            f"{runs_csv} differs from the runs' metrics.json in {len(differ)} value(s): {_listed(differ)}",
            f"do not edit the run table: delete {runs_csv} and re-run the workflow to aggregate it again",
        )


def scores(runs: pd.DataFrame, where: str | os.PathLike = "runs.csv") -> None:
    """Every score of the table (read from ``where``) in range, and finite or absent (NaN)."""
    bad = []
    for split in ("test", "val"):
        for k in SPLIT_METRICS:
            column = f"{split}_{k}"
            if column not in runs:
                continue
            lo, hi = RANGES[k]
            value = pd.to_numeric(runs[column], errors="coerce").astype(float)
            wrong = ~value.isna() & ~((value >= lo) & (value <= hi))
            bad += [f"{run_name(r)}: {column} = {v}" for r, v in zip(runs[wrong].itertuples(), value[wrong])]
    if bad:
        raise ScaleauditError(
            f"{where} has {len(bad)} score(s) out of range or infinite: {_listed(bad)}",
            "no training run writes these: re-run the workflow after deleting the run table (to aggregate it again) "
            "or the named runs' folders (to train them again)",
        )


def seeds(designed: pd.DataFrame, runs_csv: str | os.PathLike = "runs.csv") -> None:
    """Every run (every seed) the design asks for is in the table: ``designed`` is ``adaptive.designed``'s."""
    gone = designed.query("~present")
    if len(gone):
        raise ScaleauditError(
            f"{runs_csv} lacks {len(gone)} run(s) the design asks for: {_listed([run_name(r) for r in gone.itertuples()])}",
            "re-run the workflow (it trains the missing runs and aggregates again); to report fewer seeds, change "
            "design.seeds in the config",
        )


def unique(table: pd.DataFrame) -> None:
    """Reject a table in which a run appears twice: pairing by seed would silently count it twice."""
    dup = table[table.duplicated(RUN_KEY, keep=False)]
    if len(dup):
        keys = dup.drop_duplicates(RUN_KEY)
        listed = "; ".join(run_name(r) for r in keys.head(5).itertuples())
        raise ScaleauditError(
            f"{len(keys)} run(s) appear more than once in the run table ({len(dup)} rows): {listed}"
            + (" ..." if len(keys) > 5 else ""),
            "each (dataset, size, fraction, arm, seed) must appear once: aggregate the metrics.json of one study "
            "only (or remove the duplicated rows of runs.csv)",
        )


PLAN_TOTALS = ("runs", "training_hours", "training_energy_kwh")  # what the report sets against the measured cost


def plan(path: str | os.PathLike) -> dict:
    """The plan file, if it holds the totals the report reads; one from an older ``scaleaudit plan`` (its total
    counted the shift stage and no kNN votes) would be compared as if it were the training runs' own estimate."""
    estimate = read_json(path)
    missing = [k for k in PLAN_TOTALS if k not in estimate.get("total", {})]
    if missing:
        raise ScaleauditError(
            f"{path} was written by an older scaleaudit plan: its total has no {', '.join(missing)}",
            f"write it again (scaleaudit plan <config> --out {path}; make study does) or delete it",
        )
    return estimate
