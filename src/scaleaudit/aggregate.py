"""One table of all runs, built from the per-run ``metrics.json`` files (records.RunResult), each checked against its
predictions first (``verify``)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import verify
from .files import atomic_path


def collect(paths: list[str | os.PathLike]) -> pd.DataFrame:
    table = pd.DataFrame([verify.run(p).row() for p in paths])
    verify.unique(table)
    verify.scores(table, "the runs' metrics.json")
    return table.sort_values(["dataset", "size", "arm", "fraction", "seed"], ignore_index=True)


def write(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(Path(path)) as tmp:
        table.to_csv(tmp, index=False)
