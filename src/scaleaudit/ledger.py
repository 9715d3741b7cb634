"""The cost ledger: what each arm cost, the gain per extra kWh and accelerator-hour, the Pareto front, totals."""

from __future__ import annotations

import math

import pandas as pd

from .design import CELL
from .sharing import SHARED
from .stats import score_column


def hours_column(runs: pd.DataFrame) -> str:
    """accelerator_hours, or device_hours when no run used an accelerator (a CPU study)."""
    return "accelerator_hours" if runs["accelerator_hours"].fillna(0).gt(0).any() else "device_hours"


def billed(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs with their device- and accelerator-hours as billed. A run alone on its device: its own time. Runs
    sharing a GPU: their booking held it from its first member's claim to its last member's end (``gpu_start``,
    ``gpu_end``), plus, where the booking was requeued, its longest member's earlier attempts (the run's training time
    beyond its last attempt); that holding time is split among the members in proportion to their own training time,
    so a short run does not pay for the long one's tail and the members' hours add up to the booking's."""
    shared = (
        runs["gpu_sharing"].isin(SHARED) & runs["gpu_booking"].ne("") & runs[["gpu_start", "gpu_end"]].notna().all(1)
    )
    if not shared.any():
        return runs
    g = runs[shared]
    booking = g.groupby("gpu_booking")
    earlier = (g["train_seconds"] - (g["gpu_end"] - g["gpu_start"])).clip(lower=0)
    held = booking["gpu_end"].transform("max") - booking["gpu_start"].transform("min")
    held += earlier.groupby(g["gpu_booking"]).transform("max")
    hours = held * g["train_seconds"] / booking["train_seconds"].transform("sum") / 3600
    return runs.assign(
        device_hours=runs["device_hours"].mask(shared, hours),
        accelerator_hours=runs["accelerator_hours"].mask(shared, hours),
    )


def sharing(runs: pd.DataFrame) -> dict | None:
    """How the study's runs shared GPUs: runs, bookings and the ways (MPS, time-slicing); None when none shared."""
    shared = runs[runs["gpu_sharing"].isin(SHARED)]
    if shared.empty:
        return None
    return {
        "runs": len(shared),
        "bookings": shared["gpu_booking"].nunique(),
        "modes": sorted(set(shared["gpu_sharing"])),
    }


def cost_normalised(runs: pd.DataFrame, comparisons: pd.DataFrame) -> pd.DataFrame:
    """Each comparison's gain per extra kWh and per extra accelerator-hour (device-hours on a CPU-only study).
    NaN where the large arm costs no more than the small one (then the gain is free, or the loss is saved)."""
    hours = hours_column(runs)
    mean_cost = runs.groupby(CELL + ["arm"])[["energy_kwh", hours]].mean()
    out = comparisons.copy()
    large = mean_cost.reindex(pd.MultiIndex.from_frame(out[CELL + ["arm"]]))
    small = mean_cost.reindex(pd.MultiIndex.from_frame(out[CELL + ["small_arm"]]))
    out["extra_kwh"] = large["energy_kwh"].to_numpy() - small["energy_kwh"].to_numpy()
    out["extra_hours"] = large[hours].to_numpy() - small[hours].to_numpy()
    out["energy_ratio"] = large["energy_kwh"].to_numpy() / small["energy_kwh"].to_numpy()
    out["gain_per_kwh"] = (out["diff"] / out["extra_kwh"]).where(out["extra_kwh"] > 0)
    out["gain_per_hour"] = (out["diff"] / out["extra_hours"]).where(out["extra_hours"] > 0)
    out["hours"] = hours
    return out


def arm_summary(runs: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Per cell and arm: runs, those with a test score (n; the mean and sd are over them), mean and sd of the test
    score, accuracy and ECE; mean cost per run."""
    col = score_column(metric)
    hours = hours_column(runs)
    return (
        runs.groupby(CELL + ["arm"], sort=True)
        .agg(
            group=("group", "first"),
            runs=("seed", "size"),
            n=(col, "count"),
            score_mean=(col, "mean"),
            score_sd=(col, "std"),
            acc_mean=("test_acc", "mean"),
            ece_mean=("test_ece", "mean"),
            params=("params", "first"),
            flops=("flops_per_image", "first"),
            train_seconds=("train_seconds", "mean"),
            hours=(hours, "mean"),
            energy_kwh=("energy_kwh", "mean"),
            co2e_kg=("co2e_kg", "mean"),
            peak_mem_mb=("peak_mem_mb", "max"),
        )
        .reset_index()
    )


def pareto_front(summary: pd.DataFrame, cost: str = "energy_kwh", perf: str = "score_mean") -> pd.Series:
    """True for the arms of each cell that no other arm beats on both cost (lower) and performance (higher)."""
    front = pd.Series(False, index=summary.index)
    for _, g in summary.groupby(CELL):
        best = -math.inf
        for i, r in g.sort_values([cost, perf], ascending=[True, False]).iterrows():
            if r[perf] > best:
                front[i], best = True, r[perf]
    return front


def study_total(runs: pd.DataFrame) -> dict:
    """What the study's training runs spent in all."""
    return {
        "runs": len(runs),
        "train_hours": runs["train_seconds"].sum() / 3600,
        "device_hours": runs["device_hours"].sum(),
        "accelerator_hours": runs["accelerator_hours"].sum(),
        "energy_kwh": runs["energy_kwh"].sum(),
        "co2e_kg": runs["co2e_kg"].sum(),
    }
