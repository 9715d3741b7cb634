"""One table of all runs, built from the per-run ``metrics.json`` files (records.RunResult)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .files import atomic_path
from .records import RunResult


def collect(paths: list[str | os.PathLike]) -> pd.DataFrame:
    table = pd.DataFrame([RunResult.load(p).row() for p in paths])
    return table.sort_values(["dataset", "size", "arm", "fraction", "seed"], ignore_index=True)


def write(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(Path(path)) as tmp:
        table.to_csv(tmp, index=False)
