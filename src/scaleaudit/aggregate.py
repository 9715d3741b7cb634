"""One table of all runs, built from the per-run ``metrics.json`` files (records.RunResult), each checked against its
predictions and selected weights first, and with their MLflow runs where the store answers (``verify``)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import verify
from .files import atomic_path


def collect(paths: list[str | os.PathLike], tracking: dict | None = None) -> pd.DataFrame:
    """The run table; with the study's tracking record (``tracking.job_tracking``), each run is also compared with its
    MLflow run, and the column ``verify.MLFLOW_CHECKED`` says whether it was."""
    results = [verify.run(p) for p in paths]
    table = pd.DataFrame([r.row() for r in results])
    table[verify.MLFLOW_CHECKED] = verify.tracked(results, tracking)
    verify.unique(table)
    verify.scores(table, "the runs' metrics.json")
    return table.sort_values(["dataset", "size", "arm", "fraction", "seed"], ignore_index=True)


def write(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(Path(path)) as tmp:
        table.to_csv(tmp, index=False)
