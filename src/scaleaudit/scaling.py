"""The scale axis: the test metric against model size, training compute and data, and what the next 10x buys.

A *ladder* is a set of arms of one model family, pretraining and recipe at several sizes (the arms' ``ladder`` key,
e.g. ViT-Ti/S/B AugReg). Per cell of the design (dataset, size, fraction) each rung (arm) is one point: x = log10 of
its parameters (or of its training FLOPs), y = the mean test metric over its seeds, with its t-interval. The trend is
the least-squares line through the rung means; its slope is the gain per 10x. ``slope_interval`` gives it a
t-interval on k - 2 degrees of freedom from the residuals of the k rungs: they carry both the seed noise of the
means and any bend of the true curve, so the interval stays honest when the curve is not a line, and is wide with
few rungs (k = 3: one degree of freedom, t = 12.7). The slope is judged against the ROPE by ``stats.assess`` (the
verdict's path): better (the next 10x buys more than the ROPE), equivalent (less, either way), worse, or undecided;
the decision uses the family's simultaneous interval (one family per axis: every trend fitted on it). Across tasks,
the per-task slopes are summarised as the verdict summarises differences (``stats.t_interval`` of their mean).

The data axis is the same fit per arm, with the training fractions as its points (x = log10 training images).
``calibration.simulate_trend`` measures the coverage and the false claims of these intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import design, stats

AXES = {"params": "parameters", "train_flops": "training FLOPs", "n_train": "training images"}
MODEL_AXES = ("params", "train_flops")  # the axes of a model-size ladder
MIN_RUNGS = 3  # a line through two points has no residual: no interval, no decision


def slope_interval(points: Sequence, confidence: float) -> tuple:
    """The least-squares slope of y on x with its t-interval (k - 2 degrees of freedom, residual variance).
    ``points`` = (x, y), arrays whose last axis holds the k rungs (vectorised over leading axes, as
    ``stats.Interval``). Two rungs: the slope without an interval; NaN where every x is the same."""
    x, y = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in points))
    k = x.shape[-1]
    if k < 2:
        nan = np.full(x.shape[:-1], np.nan)
        return nan, nan, nan
    xc = x - x.mean(axis=-1, keepdims=True)
    sxx = (xc**2).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = (xc * y).sum(axis=-1) / sxx
        if k < MIN_RUNGS:  # two points: a slope, but no residual to measure its uncertainty
            return slope, np.full_like(slope, np.nan), np.full_like(slope, np.nan)
        resid = y - y.mean(axis=-1, keepdims=True) - slope[..., None] * xc
        half = sps.t.ppf(0.5 + confidence / 2, k - 2) * np.sqrt((resid**2).sum(axis=-1) / (k - 2) / sxx)
    return slope, slope - half, slope + half


def trend_band(points: Sequence, grid, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fitted line of ``slope_interval`` on ``grid`` (log10 x) with its pointwise t-band (k - 2 degrees of freedom):
    what the figures draw, one decade beyond the largest rung for "the next 10x". NaN where the slope has none."""
    x, y = (np.asarray(a, dtype=float) for a in points)
    grid = np.asarray(grid, dtype=float)
    slope, lo, _ = slope_interval((x, y), confidence)
    fit = y.mean() + slope * (grid - x.mean())
    # the slope's half-width is t * s / sqrt(Sxx); the band's at g is t * s * sqrt(1/k + (g - mean x)^2 / Sxx)
    sxx = ((x - x.mean()) ** 2).sum()
    half = (slope - lo) * np.sqrt(sxx / len(x) + (grid - x.mean()) ** 2)
    return fit, fit - half, fit + half


def trend_curves(points: pd.DataFrame, confidence: float, grid_points: int = 60) -> pd.DataFrame:
    """Each ladder's fitted trend and pointwise band per cell (``trend_band``) on a grid from its smallest rung to one
    decade beyond its largest (``observed`` False there: the next 10x), as the scale figures draw them."""
    by, parts = design.CELL + ["ladder"], []
    for key, g in points.groupby(by, sort=True):
        x = g["log10_x"].to_numpy()
        grid = np.linspace(x.min(), x.max() + 1, grid_points)
        fit, lo, hi = trend_band((x, g["mean"].to_numpy()), grid, confidence)
        curve = pd.DataFrame({"log10_x": grid, "fit": fit, "lo": lo, "hi": hi, "observed": grid <= x.max()})
        parts.append(curve.assign(**dict(zip(by, key))))
    columns = by + ["log10_x", "fit", "lo", "hi", "observed"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def rungs(
    runs: pd.DataFrame, by: list[str], point: str, axis: str, metric: str = "auc", confidence: float = 0.95
) -> pd.DataFrame:
    """One row per (``by`` group, ``point``) of the runs with a finite test score and a positive ``axis``: the runs
    (n), the mean test score with its t-interval over seeds, and x = the mean log10 of ``axis`` (training FLOPs vary
    a little between seeds where runs stop early)."""
    col = stats.score_column(metric)
    score, value = (pd.to_numeric(runs[c], errors="coerce") for c in (col, axis))
    usable = np.isfinite(score) & (value > 0)
    ok = runs[usable].assign(log10_x=np.log10(value[usable]))
    rows = []
    for key, g in ok.groupby(by + [point], sort=True):
        _, lo, hi = stats.t_interval([g[col].to_numpy()], confidence)
        rows.append(
            dict(zip(by + [point], key))
            | {
                "n": len(g),
                "mean": float(g[col].mean()),
                "lo": float(lo),
                "hi": float(hi),
                "x": float(10 ** g["log10_x"].mean()),
                "log10_x": float(g["log10_x"].mean()),
            }
        )
    return pd.DataFrame(rows, columns=by + [point, "n", "mean", "lo", "hi", "x", "log10_x"])


TREND_COLUMNS = ["rungs", "df", "x_min", "x_max", "slope", "lo", "hi", "adj_lo", "adj_hi", "family", "decision", "note"]


def trends(
    points: pd.DataFrame, by: list[str], rope: float, confidence: float, family: int | None = None
) -> pd.DataFrame:
    """Per ``by`` group of ``rungs`` output: the gain per 10x of x (slope of the rung means on log10 x) with its
    t-interval, the family's simultaneous interval (family: at least ``family``, else the number of groups) and the
    decision against the ROPE; the note says why a group cannot decide or how few degrees of freedom it has."""
    groups = list(points.groupby(by, sort=True))
    m = max(family or 0, len(groups))
    rows = []
    for key, g in groups:
        k = len(g)
        a = stats.assess((g["log10_x"].to_numpy(), g["mean"].to_numpy()), rope, confidence, m, interval=slope_interval)
        spread = g["log10_x"].max() - g["log10_x"].min() if k else 0.0
        note = (
            f"{k} rung(s): at least {MIN_RUNGS} needed for an interval"
            if k < MIN_RUNGS
            else "the rungs do not differ in x"
            if spread < 1e-9
            else f"{k - 2} degree(s) of freedom: a wide interval"
            if k - 2 < 3
            else ""
        )
        rows.append(
            dict(zip(by, key if isinstance(key, tuple) else (key,)))
            | {
                "rungs": k,
                "df": max(k - 2, 0),
                "x_min": g["x"].min(),
                "x_max": g["x"].max(),
                "family": m,
                "decision": a["decision"],
                "note": note,
            }
            | {c: float(a[c if c != "slope" else "estimate"]) for c in ("slope", "lo", "hi", "adj_lo", "adj_hi")}
        )
    return pd.DataFrame(rows, columns=by + TREND_COLUMNS)


def across_tasks(per_task: pd.DataFrame, by: list[str], rope: float, confidence: float) -> pd.DataFrame:
    """Per ``by`` group, across tasks: the mean of the finite per-task slopes with the t-interval of a mean (tasks - 1
    degrees of freedom, the spread of the slopes between tasks), the family's simultaneous interval and decision."""
    groups = list(per_task.groupby(by, sort=True))
    rows = []
    for key, g in groups:
        slopes = g["slope"].to_numpy(dtype=float)
        slopes = slopes[np.isfinite(slopes)]
        a = stats.assess([slopes], rope, confidence, len(groups))
        rows.append(
            dict(zip(by, key if isinstance(key, tuple) else (key,)))
            | {
                "tasks": len(slopes),
                "mean_slope": float(a["estimate"]) if len(slopes) else math.nan,
                "family": len(groups),
                "decision": a["decision"],
            }
            | {c: float(a[c]) for c in ("lo", "hi", "adj_lo", "adj_hi")}
        )
    return pd.DataFrame(
        rows, columns=by + ["tasks", "mean_slope", "lo", "hi", "adj_lo", "adj_hi", "family", "decision"]
    )


def ladder_runs(runs: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The runs of arms that are rungs of a ladder, with their ladder's name (column ``ladder``)."""
    ladder = {a: spec.get("ladder") for a, spec in config["arms"].items()}
    out = runs.assign(ladder=runs["arm"].map(ladder))
    return out[out["ladder"].notna()]


def ladders(runs: pd.DataFrame, config: dict) -> dict[str, list[str]]:
    """Each ladder with runs: its rungs (arms), smallest first (by their parameters)."""
    lr = ladder_runs(runs, config)
    size = lr.groupby("arm")["params"].median()
    return {name: sorted(g["arm"].unique(), key=lambda a: (size[a], a)) for name, g in lr.groupby("ladder", sort=True)}


def headline(per_task: pd.DataFrame, overall: pd.DataFrame) -> pd.DataFrame:
    """The answer per ladder and fraction: across datasets where at least two have a slope, else each dataset's own
    trend (columns ladder, fraction, dataset, size, tasks, rungs, slope, lo, hi, decision)."""
    rows = []
    for r in overall.itertuples():
        if r.tasks >= 2:
            rows.append(
                {
                    "ladder": r.ladder,
                    "fraction": r.fraction,
                    "dataset": None,
                    "size": None,
                    "tasks": r.tasks,
                    "rungs": None,
                    "slope": r.mean_slope,
                    "lo": r.lo,
                    "hi": r.hi,
                    "decision": r.decision,
                }
            )
            continue
        for t in per_task[(per_task["ladder"] == r.ladder) & (per_task["fraction"] == r.fraction)].itertuples():
            rows.append(
                {
                    "ladder": t.ladder,
                    "fraction": t.fraction,
                    "dataset": t.dataset,
                    "size": t.size,
                    "tasks": 1,
                    "rungs": t.rungs,
                    "slope": t.slope,
                    "lo": t.lo,
                    "hi": t.hi,
                    "decision": t.decision,
                }
            )
    return pd.DataFrame(
        rows, columns=["ladder", "fraction", "dataset", "size", "tasks", "rungs", "slope", "lo", "hi", "decision"]
    )


def t_quantile(df: int, confidence: float) -> float:
    """The two-sided t quantile of an interval at ``confidence`` on ``df`` degrees of freedom (for the report's words)."""
    return float(sps.t.ppf(0.5 + confidence / 2, df))


def model_scale(runs: pd.DataFrame, config: dict, axis: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The metric against ``axis`` ('params' or 'train_flops') along every ladder: the rung points per cell, the
    trend per cell and ladder, and the trend across tasks per ladder and fraction."""
    v = config["verdict"]
    by = design.CELL + ["ladder"]
    points = rungs(ladder_runs(runs, config), by, "arm", axis, v["metric"], v["confidence"])
    per_task = trends(points, by, v["rope"], v["confidence"])
    return points, per_task, across_tasks(per_task, ["ladder", "fraction"], v["rope"], v["confidence"])


def data_scale(runs: pd.DataFrame, config: dict) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The metric against the training set's size, per arm: points per (task, arm, fraction), the gain per 10x more
    training images per task and arm, and across tasks per arm."""
    v = config["verdict"]
    by = design.TASK + ["arm"]
    points = rungs(runs, by, "fraction", "n_train", v["metric"], v["confidence"])
    per_task = trends(points, by, v["rope"], v["confidence"])
    return points, per_task, across_tasks(per_task, ["arm"], v["rope"], v["confidence"])
