"""What the report shows, computed once from the run table (and the shift table and plan where given): the
statistics, the costs, the scale trends, the shift verdicts, the reproduction check, the runs left out or missing,
and how arms and numbers are written."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .. import adaptive, design, fidelity, ledger, reproduction, scaling, shift, stats, testsample
from .curves import Curves

NOT_PUBLISHED = "†"


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
    """The small arm a comparison is paired with, and how many small arms bound its interval's upper end."""
    if r.small_arm is None or (isinstance(r.small_arm, float) and math.isnan(r.small_arm)):
        return "–"
    return labels[r.small_arm] + (f"\n(upper end: all {r.small_arms})" if r.small_arms > 1 else "")


def arm_labels(runs: pd.DataFrame, config: dict) -> dict[str, str]:
    """Display label of each arm, marked when any of its runs used weights that are not the published ones."""
    off_release = set(runs.loc[~runs["weights_published"].astype(bool), "arm"])
    return {
        a: (config["arms"].get(a, {}).get("label") or a) + (f" {NOT_PUBLISHED}" if a in off_release else "")
        for a in runs["arm"].unique()
    }


@dataclass
class Results:
    """Everything the report shows, computed once from the run table, the shift table and the plan; sections and
    figures only render it."""

    runs: pd.DataFrame
    config: dict
    labels: dict
    summary: pd.DataFrame  # per cell and arm, with its Pareto-front flag (``front``)
    comparisons: pd.DataFrame
    overall: pd.DataFrame
    task_forest: pd.DataFrame  # per large arm and fraction: each dataset's gain, the pooled claim, a new task's range
    scores: pd.DataFrame
    divergence: pd.DataFrame  # per arm: runs, diverged runs, the rate with its exact interval
    reproduction: pd.DataFrame
    dropped: pd.DataFrame
    missing: pd.DataFrame
    total: dict  # what the study's runs spent in all (ledger.study_total)
    efficiency: pd.DataFrame  # the gain of each large arm per training fraction
    fidelity: pd.DataFrame  # where a recipe departs from the protocol it follows
    ladders: dict[str, list[str]]  # model-size ladders: name -> arms, smallest first
    model_scale: dict[str, tuple]  # axis ('params', 'train_flops') -> (points, per task, across tasks)
    scale_headlines: dict[str, pd.DataFrame]  # axis -> what the next 10x buys, per ladder (scaling.headline)
    rungs: dict[str, pd.DataFrame]  # axis -> every arm's mean test score at its x (the scale figures' points)
    trend_curves: dict[str, pd.DataFrame]  # axis -> each ladder's fitted trend and band on a grid (figures)
    data_scale: tuple | None  # (points, per task, across tasks) along the training fractions; None with one
    savings: pd.DataFrame | None = None  # adaptive seeds: per cell and arm, the seeds and hours not run
    savings_total: dict | None = None  # adaptive seeds: adaptive.summary of the savings
    curves: Curves | None = None  # learning curves and reliability diagrams, where the run files were given
    shift: pd.DataFrame | None = None  # MedMNIST-C: runs_shift.csv (shift.enabled), else None
    shift_verdicts: pd.DataFrame | None = None  # the verdict clean and per corrupted condition (shift.verdicts)
    severity: pd.DataFrame | None = None  # the metric against severity per arm (shift.severity_curve)
    estimate: dict | None = None  # the plan `scaleaudit plan` wrote before the study started (this study's)
    test_sample: pd.DataFrame | None = None  # per task: seed and test-sample variance of the gain (testsample.split)
    verified: bool = False  # the run table passed scaleaudit.verify (and its folders, where curves were given)

    @classmethod
    def of(
        cls,
        runs: pd.DataFrame,
        config: dict,
        curves: Curves | None = None,
        shift_table: pd.DataFrame | None = None,
        estimate: dict | None = None,
        verified: bool = False,
    ) -> Results:
        runs = ledger.billed(runs)  # GPU-hours as billed: a shared GPU's booking by the time it held the GPU
        v = config["verdict"]
        cells, summaries = design.families(config)
        kw = dict(metric=v["metric"], rope=v["rope"], confidence=v["confidence"])
        why = stats.unusable(runs, v["metric"])
        seq = design.is_adaptive(config)
        # the test sample's part of each interval, from the runs' predictions where given
        scores = curves.test_sample.scores if curves else None
        first = adaptive.first_round(runs, config)
        test_var = testsample.variances(first, scores, v["metric"]) if curves else None
        # adaptive seeds: each comparison's decision frozen at its round, each look with its own seeds' test-sample
        # variance; the study-level summaries from the first round, the seeds every cell ran whatever the data
        # (see scaleaudit.adaptive)
        cells_verdict = (
            adaptive.verdict(runs, config, scores)
            if seq
            else stats.compare(runs, family=cells, test_var=test_var, **kw)
        )
        comparisons = ledger.cost_normalised(runs, cells_verdict)
        summary = ledger.arm_summary(runs, v["metric"])
        model_scale = {axis: scaling.model_scale(runs, config, axis) for axis in scaling.MODEL_AXES}
        savings = adaptive.savings(runs, config) if seq else None
        overall = stats.overall(first, family=summaries, test_var=test_var, **kw)
        has_shift = shift_table is not None and not shift_table.empty
        return cls(
            runs=runs,
            config=config,
            labels=arm_labels(runs, config),
            summary=summary.assign(front=ledger.pareto_front(summary)),
            comparisons=comparisons,
            overall=overall,
            task_forest=task_forest(cells_verdict, overall),
            scores=stats.score_summary(runs, v["metric"], v["confidence"]),
            divergence=divergence(runs, v["confidence"]),
            reproduction=reproduction.reproduction(runs, config["arms"]),
            dropped=runs[why != ""].assign(reason=why[why != ""]),
            missing=missing_runs(runs, config, scores),
            total=ledger.study_total(runs),
            efficiency=data_efficiency(comparisons),
            fidelity=fidelity.differences(config),
            ladders=scaling.ladders(runs, config),
            model_scale=model_scale,
            scale_headlines={
                axis: scaling.headline(per_task, over) for axis, (_, per_task, over) in model_scale.items()
            },
            rungs={
                axis: scaling.rungs(runs, design.CELL, "arm", axis, v["metric"], v["confidence"])
                for axis in scaling.MODEL_AXES
            },
            trend_curves={
                axis: scaling.trend_curves(points, v["confidence"]) for axis, (points, _, _) in model_scale.items()
            },
            data_scale=scaling.data_scale(runs, config) if runs["fraction"].nunique() > 1 else None,
            savings=savings,
            savings_total=adaptive.summary(savings) if seq else None,
            curves=curves,
            shift=shift_table if has_shift else None,
            shift_verdicts=shift.study_verdicts(runs, shift_table, config, scores) if has_shift else None,
            severity=shift.severity_curve(shift_table, v["metric"], v["confidence"]) if has_shift else None,
            estimate=estimate if estimate and estimate["study"] == config["study"] else None,
            test_sample=testsample.split(cells_verdict, curves.test_sample.images) if curves else None,
            verified=verified,
        )

    @property
    def metric(self) -> str:
        return self.config["verdict"]["metric"].upper()


def missing_runs(runs: pd.DataFrame, config: dict, scores: dict | None = None) -> pd.DataFrame:
    """Per cell and arm of the design with fewer runs in the table than designed: runs present and designed (with
    adaptive seeds, the rounds the decisions called for; ``scores``: ``adaptive.history``'s)."""
    have = adaptive.designed(runs, config, scores)
    count = have.groupby(design.CELL + ["arm"], sort=True)["present"].agg(present="sum", designed="count").reset_index()
    return count[count["present"] < count["designed"]]


def task_forest(comparisons: pd.DataFrame, overall: pd.DataFrame) -> pd.DataFrame:
    """The rows of the forest plot per large arm and fraction: each dataset's gain with its interval and decision,
    then, across at least 2 datasets, the pooled study-level claim (random effects, simultaneous interval) and,
    where it is defined (``stats.heterogeneity``: 3 datasets), the prediction for a new task. One dataset has no
    pooled row: it would only repeat the dataset's own."""
    rows = [
        {"arm": r.arm, "fraction": r.fraction, "label": cell_name(r), "kind": "dataset"}
        | {"estimate": r.diff, "lo": r.lo, "hi": r.hi, "decision": r.decision}
        for r in comparisons.itertuples()
    ]
    for r in overall[overall["tasks"] >= 2].itertuples():
        rows.append(
            {"arm": r.arm, "fraction": r.fraction, "label": f"pooled ({r.tasks} datasets)", "kind": "pooled"}
            | {"estimate": r.mean_diff, "lo": r.adj_lo, "hi": r.adj_hi, "decision": r.decision}
        )
        if math.isfinite(r.pred_lo):
            rows.append(
                {"arm": r.arm, "fraction": r.fraction, "label": "a new task", "kind": "prediction"}
                | {"estimate": r.mean_diff, "lo": r.pred_lo, "hi": r.pred_hi, "decision": "undecided"}
            )
    return pd.DataFrame(rows, columns=["arm", "fraction", "label", "kind", "estimate", "lo", "hi", "decision"])


def divergence(runs: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Per arm: its runs, how many diverged (``train.divergence``), the rate and its exact (Clopper-Pearson)
    interval at ``confidence``, and the cells' diverged runs named (dataset, fraction, seed)."""
    failed = stats.diverged(runs)
    rows = []
    for arm, g in runs.groupby("arm", sort=True):
        k, n = int(failed[g.index].sum()), len(g)
        lo, hi = (float(x) for x in stats.divergence_rate(k, n, confidence))
        named = [f"{cell_name(r)}, fraction {r.fraction:g}, seed {r.seed}" for r in g[failed[g.index]].itertuples()]
        rows.append(
            {"arm": arm, "group": g["group"].iloc[0], "runs": n, "diverged": k, "rate": k / n}
            | {"lo": lo, "hi": hi, "which": listed(named, 6)}
        )
    return pd.DataFrame(rows, columns=["arm", "group", "runs", "diverged", "rate", "lo", "hi", "which"])


def data_efficiency(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The gain of each large arm as a function of training fraction: one row per (dataset, size, arm),
    one column per fraction (mean paired difference)."""
    if comparisons.empty:
        return pd.DataFrame()
    wide = comparisons.pivot_table(index=["dataset", "size", "arm"], columns="fraction", values="diff")
    return wide.reset_index()


def listed(items: list[str], most: int = 12) -> str:
    return "; ".join(items[:most]) + (f"; and {len(items) - most} more" if len(items) > most else "")
