"""One table of all runs, built from the per-run ``metrics.json`` files (records.RunResult), each checked against its
predictions first (``verify``)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from . import verify
from .design import RUN_KEY
from .errors import ScaleauditError
from .files import atomic_path


def check(table: pd.DataFrame) -> None:
    """Reject a table in which a run appears twice: pairing by seed would silently count it twice."""
    dup = table[table.duplicated(RUN_KEY, keep=False)]
    if len(dup):
        keys = dup.drop_duplicates(RUN_KEY)
        listed = "; ".join(verify.run_name(r) for r in keys.head(5).itertuples())
        raise ScaleauditError(
            f"{len(keys)} run(s) appear more than once in the run table ({len(dup)} rows): {listed}"
            + (" ..." if len(keys) > 5 else ""),
            "each (dataset, size, fraction, arm, seed) must appear once: aggregate the metrics.json of one study "
            "only (or remove the duplicated rows of runs.csv)",
        )


def collect(paths: list[str | os.PathLike]) -> pd.DataFrame:
    table = pd.DataFrame([verify.run(p).row() for p in paths])
    check(table)
    verify.scores(table, "the runs' metrics.json")
    return table.sort_values(["dataset", "size", "arm", "fraction", "seed"], ignore_index=True)


def write(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(Path(path)) as tmp:
        table.to_csv(tmp, index=False)
