"""What the report shows, computed once from the run table: the statistics, the costs, the reproduction check,
the runs left out or missing, and how arms and numbers are written."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import pandas as pd

from .. import adaptive, ledger, reproduction, stats
from .. import config as study_config
from ..aggregate import RUN_KEY
from .curves import Curves

TEXT_COLUMNS = ["weights_source", "weights_sha256", "mlflow_run_id", "code_commit", "config_hash", "data_sha256"]
NOT_PUBLISHED = "†"


def read_runs(runs_csv: str | os.PathLike) -> pd.DataFrame:
    """The run table; hashes and ids stay text (an all-digit hash is no number), an empty cell means none."""
    runs = pd.read_csv(runs_csv, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    runs[TEXT_COLUMNS] = runs[TEXT_COLUMNS].fillna("")
    return runs


def num(x, spec: str = ".3f") -> str:
    """A number for a table; a dash where there is none."""
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return "–"
    return format(x, spec)


def ci(lo, hi, spec: str = "+.3f") -> str:
    return "–" if math.isnan(lo) else f"[{format(lo, spec)}, {format(hi, spec)}]"


def cell_name(r) -> str:
    return f"{r.dataset} @ {r.size} px"


def partner(r, labels: dict) -> str:
    """The small arm a comparison is paired with; how the seeds split when they chose different ones."""
    if r.small_arm is None or (isinstance(r.small_arm, float) and math.isnan(r.small_arm)):
        return "–"
    return labels[r.small_arm] + (f"\n({r.small_choice})" if r.small_choice else "")


def arm_labels(runs: pd.DataFrame, config: dict) -> dict[str, str]:
    """Display label of each arm, marked when any of its runs used weights that are not the published ones."""
    off_release = set(runs.loc[~runs["weights_published"].astype(bool), "arm"])
    return {
        a: (config["arms"].get(a, {}).get("label") or a) + (f" {NOT_PUBLISHED}" if a in off_release else "")
        for a in runs["arm"].unique()
    }


@dataclass
class Results:
    """Everything the report shows, computed once from the run table."""

    runs: pd.DataFrame
    config: dict
    labels: dict
    summary: pd.DataFrame
    comparisons: pd.DataFrame
    overall: pd.DataFrame
    scores: pd.DataFrame
    reproduction: pd.DataFrame
    dropped: pd.DataFrame
    missing: pd.DataFrame
    savings: pd.DataFrame | None = None  # adaptive seeds: per cell and arm, the seeds and hours not run
    curves: Curves | None = None  # learning curves and reliability diagrams, where the run files were given
    shift: pd.DataFrame | None = None  # MedMNIST-C: runs_shift.csv (shift.enabled), else None

    @classmethod
    def of(cls, runs: pd.DataFrame, config: dict, curves: Curves | None = None) -> Results:
        v = config["verdict"]
        cells, summaries = families(config)
        kw = dict(metric=v["metric"], rope=v["rope"], confidence=v["confidence"])
        why = stats.unusable(runs, v["metric"])
        seq = adaptive.settings(config)
        # adaptive seeds: each comparison's decision frozen at its round; the study-level summaries from the first
        # round, the seeds every cell ran whatever the data (see scaleaudit.adaptive)
        cells_verdict = adaptive.verdict(runs, config) if seq else stats.compare(runs, family=cells, **kw)
        first = runs[adaptive.with_rounds(runs, config)["round"] == 1] if seq else runs
        return cls(
            runs=runs,
            config=config,
            labels=arm_labels(runs, config),
            summary=ledger.arm_summary(runs, v["metric"]),
            comparisons=ledger.cost_normalised(runs, cells_verdict),
            overall=stats.overall(first, family=summaries, **kw),
            scores=stats.score_summary(runs, v["metric"], v["confidence"]),
            reproduction=reproduction.reproduction(runs, config["arms"]),
            dropped=runs[why != ""].assign(reason=why[why != ""]),
            missing=missing_runs(runs, config),
            savings=adaptive.savings(runs, config) if seq else None,
            curves=curves,
        )

    @property
    def metric(self) -> str:
        return self.config["verdict"]["metric"].upper()


def families(config: dict) -> tuple[int, int]:
    """The design's multiplicity families: per-cell comparisons (tasks x fractions x large arms) and study-level
    summaries (large arms x fractions). Counted from the design, so cells that did not run do not loosen them."""
    large = sum(config["arms"][a]["group"] == "large" for a in config["design"]["arms"])
    tasks = sum(len(d["sizes"]) for d in config["data"]["datasets"])
    fractions = len(config["design"]["fractions"])
    return tasks * fractions * large, large * fractions


def missing_runs(runs: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Per cell and arm of the design with fewer runs in the table than designed: runs present and designed."""
    designed = (
        adaptive.planned(runs, config) if adaptive.settings(config) else pd.DataFrame(study_config.runs(config))
    )[RUN_KEY]
    have = designed.merge(runs[RUN_KEY].drop_duplicates(), on=RUN_KEY, how="left", indicator=True)
    have["present"] = have.pop("_merge") == "both"
    count = have.groupby(stats.CELL + ["arm"], sort=True)["present"].agg(present="sum", designed="count").reset_index()
    return count[count["present"] < count["designed"]]


def data_efficiency(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The gain of each large arm as a function of training fraction: one row per (dataset, size, arm),
    one column per fraction (mean paired difference)."""
    if comparisons.empty:
        return pd.DataFrame()
    wide = comparisons.pivot_table(index=["dataset", "size", "arm"], columns="fraction", values="diff")
    return wide.reset_index()


def listed(items: list[str], most: int = 12) -> str:
    return "; ".join(items[:most]) + (f"; and {len(items) - most} more" if len(items) > most else "")
