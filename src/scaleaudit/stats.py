"""The verdict: does a large arm beat the best small arm by more than a practical threshold, and at what cost?

Pure functions on the run table (one row per run, columns as written by ``aggregate``). A *cell* of the
design is one (dataset, size, fraction); runs of two arms in a cell are paired by seed.

The across-task statistics follow Agarwal et al., "Deep reinforcement learning at the edge of the
statistical precipice" (NeurIPS 2021), as the ``rliable`` package implements them: the interquartile mean
(25 % trimmed mean over all runs of all tasks), percentile confidence intervals from a stratified
bootstrap (runs resampled with replacement within each task), and the probability of improvement
P(X > Y) + P(X = Y) / 2 averaged over tasks. They are written here with numpy because rliable pulls in
``arch`` and ``absl`` for three short formulas; ``tests/test_stats.py`` checks them against hand-worked values.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import published

CELL = ["dataset", "size", "fraction"]
DECISIONS = ("better", "equivalent", "worse", "undecided")


def score_column(metric: str, split: str = "test") -> str:
    return f"{split}_{metric}"


# --- elementary statistics ---------------------------------------------------------------------------


def bootstrap_ci(x, confidence: float, n_boot: int, rng: np.random.Generator, stat=np.mean) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over the values ``x`` (NaN for fewer than 2 values)."""
    x = np.asarray(x, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    boot = stat(x[rng.integers(0, len(x), size=(n_boot, len(x)))], axis=1)
    alpha = (1 - confidence) / 2
    return float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))


def prob_improvement(x, y) -> float:
    """P(X > Y) + P(X = Y) / 2 for a random run of X and one of Y (the Mann-Whitney U over n_x * n_y)."""
    x, y = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[None, :]
    return float((x > y).mean() + 0.5 * (x == y).mean())


def wilcoxon_p(diffs) -> float:
    """Two-sided paired Wilcoxon signed-rank p-value (1 when every difference is zero, NaN below 2 pairs)."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return math.nan
    if not np.any(d):
        return 1.0
    return float(sps.wilcoxon(d).pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error over all comparisons of the study); NaN stays NaN."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok])]
    m = len(order)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out


def decide(lo: float, hi: float, rope: float) -> str:
    """Place a confidence interval against the region of practical equivalence [-rope, +rope]."""
    if math.isnan(lo) or math.isnan(hi):
        return "undecided"
    if lo > rope:
        return "better"
    if hi < -rope:
        return "worse"
    if -rope <= lo and hi <= rope:
        return "equivalent"
    return "undecided"


def seeds_needed(diffs, rope: float, confidence: float) -> int | None:
    """How many paired seeds in all would likely decide: the CI half-width z*sd/sqrt(n) must shrink below the
    distance from the mean difference to the nearest ROPE edge (assuming mean and spread stay as observed).
    None when that distance is ~0 (the mean sits on an edge) or the spread is unknown."""
    d = np.asarray(diffs, dtype=float)
    if len(d) < 2:
        return None
    mean, sd = d.mean(), d.std(ddof=1)
    gap = min(abs(mean - rope), abs(mean + rope))
    if gap < 1e-9 or sd == 0:
        return None
    z = sps.norm.ppf(0.5 + confidence / 2)
    return max(len(d) + 1, math.ceil((z * sd / gap) ** 2))


# --- per cell: each large arm against the best small arm ----------------------------------------------


def best_small(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The small arm of each cell with the highest mean *validation* score (choosing on test would flatter it)."""
    small = runs[runs["group"] == "small"]
    means = small.groupby(CELL + ["arm"], as_index=False)[score_column(metric, "val")].mean()
    best = means.sort_values(score_column(metric, "val"), ascending=False, kind="stable").drop_duplicates(CELL)
    return best[CELL + ["arm"]].rename(columns={"arm": "small_arm"}).reset_index(drop=True)


def paired(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (cell, large arm, seed): the large arm's and the best small arm's test score and difference."""
    col = score_column(metric)
    small = runs.merge(best_small(runs, metric), on=CELL)
    small = small[small["arm"] == small["small_arm"]][CELL + ["seed", "small_arm", col]]
    large = runs[runs["group"] == "large"][CELL + ["seed", "arm", col]]
    pairs = large.merge(small, on=CELL + ["seed"], suffixes=("_large", "_small"))
    pairs = pairs.rename(columns={f"{col}_large": "large", f"{col}_small": "small"})
    pairs["diff"] = pairs["large"] - pairs["small"]
    return pairs.sort_values(CELL + ["arm", "seed"], ignore_index=True)


def compare(runs: pd.DataFrame, metric: str = "auc", rope: float = 0.01, confidence: float = 0.95,
            n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per cell and large arm: mean paired difference to the best small arm with a bootstrap CI, probability of
    improvement, paired Wilcoxon p (Holm-adjusted over all comparisons) and the decision against the ROPE."""
    rng = np.random.default_rng(seed)
    rows = []
    for (dataset, size, fraction, arm), g in paired(runs, metric).groupby(CELL + ["arm"], sort=True):
        lo, hi = bootstrap_ci(g["diff"], confidence, n_boot, rng)
        decision = decide(lo, hi, rope)
        rows.append({
            "dataset": dataset, "size": size, "fraction": fraction, "arm": arm, "small_arm": g["small_arm"].iloc[0],
            "n": len(g), "large_mean": g["large"].mean(), "small_mean": g["small"].mean(), "diff": g["diff"].mean(),
            "lo": lo, "hi": hi, "p_improve": prob_improvement(g["large"], g["small"]), "p_wilcoxon": wilcoxon_p(g["diff"]),
            "decision": decision,
            "seeds_needed": seeds_needed(g["diff"], rope, confidence) if decision == "undecided" else None,
        })
    out = pd.DataFrame(rows, columns=CELL + ["arm", "small_arm", "n", "large_mean", "small_mean", "diff", "lo", "hi",
                                             "p_improve", "p_wilcoxon", "decision", "seeds_needed"])
    out["p_holm"] = holm(out["p_wilcoxon"])
    out["seeds_needed"] = out["seeds_needed"].astype("Int64")
    return out


# --- across tasks (Agarwal et al. 2021) ---------------------------------------------------------------------


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50 % of all values (scipy's 25 % trimmed mean, as rliable)."""
    return float(sps.trim_mean(np.concatenate([np.ravel(v) for v in values]), 0.25))


def stratified_bootstrap_ci(tasks: list, stat, confidence: float, n_boot: int,
                            rng: np.random.Generator) -> tuple[float, float]:
    """Percentile CI of ``stat(list of per-task arrays)``, resampling runs with replacement within each task.
    NaN when a task has fewer than 2 runs: resampling one run shows no spread, and the CI would be falsely narrow."""
    tasks = [np.asarray(t, dtype=float) for t in tasks]
    if not tasks or min(len(t) for t in tasks) < 2:
        return math.nan, math.nan
    boot = [stat([t[rng.integers(0, len(t), len(t))] for t in tasks]) for _ in range(n_boot)]
    alpha = (1 - confidence) / 2
    return float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))


def overall(runs: pd.DataFrame, metric: str = "auc", rope: float = 0.01, confidence: float = 0.95,
            n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per large arm, across all cells (the tasks): IQM of the paired differences to the best small arm with a
    stratified-bootstrap CI, the decision against the ROPE, and the probability of improvement averaged over tasks."""
    rng = np.random.default_rng(seed)
    rows = []
    for arm, g in paired(runs, metric).groupby("arm", sort=True):
        cells = [c for _, c in g.groupby(CELL, sort=True)]
        diffs = [c["diff"].to_numpy() for c in cells]
        lo, hi = stratified_bootstrap_ci(diffs, iqm, confidence, n_boot, rng)
        rows.append({
            "arm": arm, "tasks": len(cells), "runs": len(g), "iqm_diff": iqm(diffs), "lo": lo, "hi": hi,
            "p_improve": float(np.mean([prob_improvement(c["large"], c["small"]) for c in cells])),
            "decision": decide(lo, hi, rope),
        })
    return pd.DataFrame(rows, columns=["arm", "tasks", "runs", "iqm_diff", "lo", "hi", "p_improve", "decision"])


def iqm_scores(runs: pd.DataFrame, metric: str = "auc", confidence: float = 0.95, n_boot: int = 2000,
               seed: int = 0) -> pd.DataFrame:
    """IQM of each arm's test score over all its runs of all cells, with a stratified-bootstrap CI."""
    rng = np.random.default_rng(seed)
    rows = []
    for arm, g in runs.groupby("arm", sort=True):
        tasks = [c[score_column(metric)].to_numpy() for _, c in g.groupby(CELL, sort=True)]
        lo, hi = stratified_bootstrap_ci(tasks, iqm, confidence, n_boot, rng)
        rows.append({"arm": arm, "group": g["group"].iloc[0], "tasks": len(tasks), "iqm": iqm(tasks), "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=["arm", "group", "tasks", "iqm", "lo", "hi"])


def verdict_sentence(over: pd.DataFrame, rope: float, metric: str, labels: dict | None = None) -> str:
    """One sentence that the across-task decisions support; its wording follows from them, never fixed."""
    name = metric.upper()
    if over.empty:
        return f"No verdict: the study has no large arm paired with a small arm (same cells and seeds) on {name}."

    def desc(r) -> str:
        interval = "no CI: fewer than 2 seeds" if math.isnan(r.lo) else f"CI [{r.lo:+.3f}, {r.hi:+.3f}]"
        return f"{(labels or {}).get(r.arm, r.arm)} ({r.iqm_diff:+.3f} {name}, {interval}, over {r.tasks} task(s))"

    by = {d: over[over["decision"] == d].sort_values("iqm_diff", ascending=False) for d in DECISIONS}
    margin = f"more than the practical threshold of ±{rope:g} {name}"
    if len(by["better"]):
        others = len(over) - len(by["better"])
        tail = f"; {others} other large arm(s) do not" if others else ""
        return (f"Scale pays: {', '.join(desc(r) for r in by['better'].itertuples())} beat(s) the best small model by "
                f"{margin}{tail}.")
    if len(by["undecided"]):
        return (f"Not decided yet: no large arm is shown to beat the best small model by {margin}, but "
                f"{', '.join(desc(r) for r in by['undecided'].itertuples())} could still; more seeds are needed.")
    best = over.sort_values("iqm_diff", ascending=False).iloc[0]
    if len(by["worse"]) == len(over):
        return f"Scale does not pay: every large arm is worse than the best small model by {margin}; the closest is {desc(best)}."
    return (f"Scale does not pay: no large arm beats the best small model by {margin}; the best large arm is "
            f"{desc(best)}, {best.decision} to it.")


# --- cost -----------------------------------------------------------------------------------------------------


def hours_column(runs: pd.DataFrame) -> str:
    """accelerator_hours, or device_hours when no run used an accelerator (a CPU study)."""
    return "accelerator_hours" if runs["accelerator_hours"].fillna(0).gt(0).any() else "device_hours"


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
    """Per cell and arm: seeds, mean and sd of the test score, accuracy and ECE; mean cost per run."""
    col = score_column(metric)
    hours = hours_column(runs)
    return runs.groupby(CELL + ["arm"], sort=True).agg(
        group=("group", "first"), n=("seed", "size"), score_mean=(col, "mean"), score_sd=(col, "std"),
        acc_mean=("test_acc", "mean"), ece_mean=("test_ece", "mean"), params=("params", "first"),
        flops=("flops_per_image", "first"), train_seconds=("train_seconds", "mean"), hours=(hours, "mean"),
        energy_kwh=("energy_kwh", "mean"), co2e_kg=("co2e_kg", "mean"), peak_mem_mb=("peak_mem_mb", "max"),
    ).reset_index()


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
    return {"runs": len(runs), "train_hours": runs["train_seconds"].sum() / 3600,
            "device_hours": runs["device_hours"].sum(), "accelerator_hours": runs["accelerator_hours"].sum(),
            "energy_kwh": runs["energy_kwh"].sum(), "co2e_kg": runs["co2e_kg"].sum()}


# --- data efficiency and reproduction ---------------------------------------------------------------------


def data_efficiency(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The gain of each large arm as a function of training fraction: one row per (dataset, size, arm),
    one column per fraction (mean paired difference)."""
    if comparisons.empty:
        return pd.DataFrame()
    wide = comparisons.pivot_table(index=["dataset", "size", "arm"], columns="fraction", values="diff")
    return wide.reset_index()


def reproduction(runs: pd.DataFrame, arms: dict, spread: float = 2.0) -> pd.DataFrame:
    """Reproduced test AUC/ACC (full training set) of each arm with ``reproduces:`` beside the published value;
    "within" when the published AUC lies within ``spread`` seed standard deviations of the reproduced mean."""
    rows = []
    full = runs[runs["fraction"] == 1.0]
    for (arm, dataset, size), g in full.groupby(["arm", "dataset", "size"], sort=True):
        ref = arms.get(arm, {}).get("reproduces")
        pub = published.find(ref, dataset, size) if ref else None
        if pub is None:
            continue
        auc_sd = g["test_auc"].std()
        rows.append({
            "arm": arm, "dataset": dataset, "size": size, "reference": ref, "paper": pub["paper"],
            "protocol": pub["protocol"], "recipe": g["recipe"].iloc[0], "n": len(g),
            "auc": g["test_auc"].mean(), "auc_sd": auc_sd, "acc": g["test_acc"].mean(), "acc_sd": g["test_acc"].std(),
            "pub_auc": pub["auc"], "pub_acc": pub["acc"], "auc_diff": g["test_auc"].mean() - pub["auc"],
            "acc_diff": g["test_acc"].mean() - pub["acc"],
            "within": bool(abs(g["test_auc"].mean() - pub["auc"]) <= spread * auc_sd) if len(g) > 1 else None,
        })
    return pd.DataFrame(rows)
