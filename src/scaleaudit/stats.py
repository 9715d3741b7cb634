"""The verdict: does a large arm beat the best small arm by more than a practical threshold?

Pure functions on the run table (one row per run, columns as ``aggregate`` writes them). A *cell* of the design is
one (dataset, size, fraction); a *task* is one dataset at one image size. Each large-arm run is paired by seed with
the run of the cell's partner (``small_choice``: the small arm best on validation over all seeds); the cell's
interval is for the gain over the best small arm (``versus_best``).

One path serves every statistic, as rliable's ``get_interval_estimates`` serves every estimator: paired differences
grouped into tasks -> ``interval`` -> ``decide``. Per cell the interval is ``versus_best`` of paired t-intervals;
across tasks the study-level claim is ``between_tasks`` (random effects: the t-interval of the task means), with the
fixed-effect ``t_interval`` (Welch-Satterthwaite) beside it as a statement about these tasks only.
``decide`` sees only an interval, so another interval method with ``t_interval``'s signature can replace it: adaptive
seeds use the repeated confidence intervals of ``sequential.interval``, valid under repeated looks. ``benchmarks/calibrate_stats.py`` measures coverage and error rates by simulation.

Multiplicity (Bonferroni): the claims of a family of m comparisons are made from simultaneous intervals at confidence
1 - alpha/m, so the chance that any claim of the family (better, worse or equivalent) is false is at most alpha.
The families: the per-cell comparisons (cells x large arms) and the study-level summaries (large arms x training
fractions, across tasks); the report's "Scale pays" is a claim of the second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import metrics, verify
from .design import CELL, TASK

DECISIONS = ("better", "equivalent", "worse", "undecided")
MIN_PAIRS = 3  # no decision from fewer pairs: two differences say almost nothing about their spread
MAX_SEEDS = 1000  # seeds_needed gives up beyond this
# The least sd a task's values are taken to have. Identical paired differences over seeds mean deterministic training
# (e.g. a probe), not a known difference: the test set still samples. 0.005 AUC is a quarter of typical seed noise
# (0.01-0.03), so it binds rarely where noise is real (at sd 0.02 and 3 seeds in 6 % of cells, only widening them).
# Where the test sample's variance is given (``testsample``, ``compare(test_var=...)``), that is what the floor stood
# in for; the floor stays for tables without run folders and for the simulations.
SD_FLOOR = 0.005

Interval = Callable[[Sequence, float], tuple]  # (tasks, confidence) -> (estimate, lo, hi)


def score_column(metric: str, split: str = "test") -> str:
    return f"{split}_{metric}"


# --- estimators and intervals on arrays (vectorised over leading axes, as the simulations use them) ---------------


def t_interval(tasks: Sequence, confidence: float, extra: Sequence | None = None, extra_df: float = math.inf) -> tuple:
    """The mean over tasks of each task's mean, with its t-interval. Each task is an array whose last axis holds its
    values (seeds). One task: the paired t-interval; several: standard error from the per-task variances and
    Welch-Satterthwaite degrees of freedom. Each task's sd is at least SD_FLOOR, so zero spread decides nothing.
    ``extra``: per task, a further variance of its mean from another source (the test sample, ``testsample``),
    estimated with ``extra_df`` degrees of freedom; it adds to the seed variance, and Satterthwaite's degrees of
    freedom weigh both (with none, or 0, the seed-only interval). NaN where a task has fewer than 2 values."""
    tasks = [np.asarray(t, dtype=float) for t in tasks]
    if not tasks or min(t.shape[-1] for t in tasks) < 2:
        nan = np.full(np.broadcast_shapes(*(t.shape[:-1] for t in tasks)) if tasks else (), np.nan)
        return nan, nan, nan
    k = len(tasks)
    estimate = sum(t.mean(axis=-1) for t in tasks) / k
    v = [np.maximum(t.var(axis=-1, ddof=1), SD_FLOOR**2) / t.shape[-1] for t in tasks]  # variance of each task mean
    e = [np.asarray(x, dtype=float) for x in extra] if extra is not None else [0.0] * k
    total = sum(v) + sum(e)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = total**2 / sum(vi**2 / (t.shape[-1] - 1) + ei**2 / extra_df for vi, ei, t in zip(v, e, tasks))
        half = np.where(total > 0, sps.t.ppf(0.5 + confidence / 2, df) * np.sqrt(total) / k, 0.0)
    return estimate, estimate - half, estimate + half


def between_tasks(tasks: Sequence, confidence: float) -> tuple:
    """Random effects for few tasks: the mean of the task means with the t-interval of those k means (k - 1 degrees
    of freedom), so that tasks whose true gains differ widen it. Its variance is never below the mean within-task
    variance of a task mean (the Hartung-Knapp-type floor, Roever et al. 2015: k near-equal means are not a known
    mean). The population is tasks like these: a claim about such tasks, not only these. NaN with fewer than 2
    tasks (or a task with fewer than 2 values)."""
    tasks = [np.asarray(t, dtype=float) for t in tasks]
    if len(tasks) < 2 or min(t.shape[-1] for t in tasks) < 2:
        nan = np.full(np.broadcast_shapes(*(t.shape[:-1] for t in tasks)) if tasks else (), np.nan)
        return nan, nan, nan
    k = len(tasks)
    means = np.stack(np.broadcast_arrays(*(t.mean(axis=-1) for t in tasks)), axis=-1)
    within = np.stack(
        np.broadcast_arrays(*(np.maximum(t.var(axis=-1, ddof=1), SD_FLOOR**2) / t.shape[-1] for t in tasks)), axis=-1
    )
    estimate = means.mean(axis=-1)
    half = sps.t.ppf(0.5 + confidence / 2, k - 1) * np.sqrt(np.maximum(means.var(axis=-1, ddof=1), within.mean(-1)) / k)
    return estimate, estimate - half, estimate + half


def heterogeneity(tasks: Sequence, confidence: float) -> dict:
    """How much the tasks' true gains differ: tau (DerSimonian-Laird, between-task sd), I2 (the share of the task
    means' spread that is not seed noise) and the prediction interval for a new task's gain (the k means' t
    prediction interval, mean +- t(k - 1) sd sqrt(1 + 1/k), sd with ``between_tasks``'s floor). NaN with fewer than 2 (tau, I2) or 3 tasks."""
    means = np.array([np.mean(t) for t in tasks], dtype=float)
    within = np.array([max(np.var(t, ddof=1), SD_FLOOR**2) / len(t) for t in tasks], dtype=float)
    k, out = len(means), dict.fromkeys(("tau", "i2", "pred_lo", "pred_hi"), math.nan)
    if k < 2:
        return out
    w = 1 / within
    q = float(np.sum(w * (means - np.sum(w * means) / w.sum()) ** 2))
    out["tau"] = math.sqrt(max(0.0, (q - (k - 1)) / (w.sum() - np.sum(w**2) / w.sum())))
    out["i2"] = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    if k >= 3:
        sd = math.sqrt(max(means.var(ddof=1), within.mean()))
        half = sps.t.ppf(0.5 + confidence / 2, k - 1) * sd * math.sqrt(1 + 1 / k)
        out |= {"pred_lo": means.mean() - half, "pred_hi": means.mean() + half}
    return out


def decide(lo, hi, rope: float):
    """Place an interval against the region of practical equivalence [-rope, +rope]: better (above it), worse
    (below it), equivalent (inside it) or undecided (across an edge, or no interval). Vectorised."""
    lo, hi = np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
    out = np.select(
        [lo > rope, hi < -rope, (lo >= -rope) & (hi <= rope)], ["better", "worse", "equivalent"], "undecided"
    )
    return str(out) if out.ndim == 0 else out


def family_confidence(confidence: float, family: int) -> float:
    """Confidence of each interval of a family of ``family`` comparisons (Bonferroni: alpha / m each)."""
    return 1 - (1 - confidence) / max(family, 1)


def claim_level(tasks: Sequence, rope: float, interval: Interval = t_interval, steps: int = 40):
    """The least alpha at which ``interval`` at confidence 1 - alpha makes a claim (better, worse or equivalent):
    the claim's p-value, by inverting the interval (bisection, so any interval method serves; 1 where it never
    decides). Vectorised like the intervals."""
    shape = np.shape(interval(tasks, 0.5)[0])
    low, high = np.zeros(shape), np.ones(shape)
    for _ in range(steps):
        mid = (low + high) / 2
        _, lo, hi = interval(tasks, 1 - mid)
        decided = decide(lo, hi, rope) != "undecided"
        low, high = np.where(decided, low, mid), np.where(decided, mid, high)
    return high


def fdr_confidence(levels, confidence: float, family: int) -> float:
    """Benjamini-Hochberg at q = 1 - confidence over a family of ``family`` comparisons whose claims have p-values
    ``levels`` (missing comparisons count as claims never made): the R claims with p <= R q / m are made, i.e. each
    comparison is decided by its interval at confidence 1 - R q / m, the false-coverage-rate adjusted interval of
    Benjamini & Yekutieli (2005). With no claim, the Bonferroni level 1 - q / m. Vectorised over leading axes."""
    q, m = 1 - confidence, max(family, np.shape(levels)[-1], 1)
    p = np.sort(np.asarray(levels, dtype=float), axis=-1)
    rank = np.arange(1, p.shape[-1] + 1)
    hits = np.concatenate([np.zeros(p.shape[:-1] + (1,), bool), p <= rank * q / m], axis=-1)  # no claim: index 0
    r = np.where(hits.any(axis=-1), p.shape[-1] - np.argmax(hits[..., ::-1], axis=-1), 1)
    return 1 - r * q / m


def assess(tasks: Sequence, rope: float, confidence: float, family: int = 1, interval: Interval = t_interval) -> dict:
    """The one path: the estimate and its interval at ``confidence`` (shown, and what the calibration measures),
    the simultaneous interval of the family, and the decision that interval supports."""
    estimate, lo, hi = interval(tasks, confidence)
    _, adj_lo, adj_hi = interval(tasks, family_confidence(confidence, family))
    return {
        "estimate": estimate,
        "lo": lo,
        "hi": hi,
        "adj_lo": adj_lo,
        "adj_hi": adj_hi,
        "decision": decide(adj_lo, adj_hi, rope),
    }


def prob_improvement(diffs) -> float:
    """Paired probability of improvement: the share of seeds on which the large arm beat its partner (ties half)."""
    d = np.asarray(diffs, dtype=float)
    return float((d > 0).mean() + 0.5 * (d == 0).mean()) if len(d) else math.nan


def iqm(values) -> float:
    """Interquartile mean: the mean of the middle 50 % of all values (scipy's 25 % trimmed mean, as rliable)."""
    pooled = np.concatenate([np.ravel(v) for v in values]) if len(values) else np.array([])
    return float(sps.trim_mean(pooled, 0.25)) if len(pooled) else math.nan


def seeds_needed(
    tasks: Sequence, rope: float, confidence: float, interval: Callable[[int], Interval] = lambda n: t_interval
) -> int | None:
    """Seeds per task that would likely decide, assuming each task's observed mean and sd stay: the smallest n at
    which ``interval(n)``, the interval for n seeds per task, decides at ``confidence`` on tasks of n values with those
    means and sds (the interval may change with n beyond its data: e.g. the bound on an arm's divergence rate
    narrows with its runs, a test-sample variance does not). None when a task has fewer than 2 values or no n up
    to MAX_SEEDS decides (e.g. a mean on a ROPE edge)."""
    tasks = [np.asarray(t, dtype=float) for t in tasks]
    if min(len(t) for t in tasks) < 2:
        return None

    def decides(n: int) -> bool:
        z = sps.norm.ppf((np.arange(n) + 0.5) / n)
        z = (z - z.mean()) / z.std(ddof=1)  # n values of mean 0 and sd 1
        _, lo, hi = interval(n)([t.mean() + t.std(ddof=1) * z for t in tasks], confidence)
        return decide(lo, hi, rope) != "undecided"

    low, high = max(len(t) for t in tasks), MAX_SEEDS
    if not decides(high):
        return None
    while high - low > 1:  # deciding is monotone in n: the interval narrows as seeds are added
        mid = (low + high) // 2
        low, high = (low, mid) if decides(mid) else (mid, high)
    return high


# --- the run table: usable runs, diverged runs, choice of the small arm, pairs -------------------------------------

CHANCE = {"auc": metrics.CHANCE_AUC}  # the score of a run that learned nothing, where the metric has one


def diverged(runs: pd.DataFrame) -> pd.Series:
    """Which runs diverged (``train.divergence``: non-finite loss, or validation AUC near chance); a table written
    before the rule has none."""
    if "diverged" not in runs:
        return pd.Series(False, index=runs.index)
    return runs["diverged"].astype("boolean").fillna(False).astype(bool)


def unusable(runs: pd.DataFrame, metric: str) -> pd.Series:
    """Why each run cannot enter the pairs ('' when it can): a diverged run (a small one is never a partner: the
    question is whether scale beats a small model that trained; a large one enters its cell's claim through the
    arm's divergence rate, ``with_divergence``), a non-finite test score, or, for a small arm, a non-finite
    validation score (the partner is chosen on it)."""
    test = pd.to_numeric(runs[score_column(metric)], errors="coerce")
    val = pd.to_numeric(runs[score_column(metric, "val")], errors="coerce")
    small = runs["group"] == "small"
    why = pd.Series("", index=runs.index)
    why = why.mask(small & ~np.isfinite(val), f"non-finite {score_column(metric, 'val')}")
    why = why.mask(~np.isfinite(test), f"non-finite {score_column(metric)}")
    why = why.mask(small & diverged(runs), "diverged small-arm run (never a partner)")
    return why.mask(~small & diverged(runs), "diverged large-arm run (in the arm's divergence rate)")


def small_choice(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """For each cell: the partner, the small arm with the highest mean validation score over all its usable runs of
    the cell (diverged runs are not usable) (one partner for every seed; exact ties go to the first arm by name, whatever the rows' order)."""
    val = score_column(metric, "val")
    small = runs[(runs["group"] == "small") & (unusable(runs, metric) == "")].sort_values(CELL + ["arm", "seed"])
    # rounded so that the order of summation (the table's row order) cannot break a tie
    mean = small.groupby(CELL + ["arm"], sort=True)[val].mean().round(12).rename("val_mean").reset_index()
    pick = mean.sort_values(CELL + ["val_mean", "arm"], ascending=[True] * 3 + [False, True], kind="stable")
    return pick.drop_duplicates(CELL)[CELL + ["arm"]].rename(columns={"arm": "small_arm"}).reset_index(drop=True)


def paired(runs: pd.DataFrame, metric: str, every: bool = False) -> pd.DataFrame:
    """One row per (cell, large arm, seed) of usable runs: the large arm's and its partner's test score and their
    difference; ``every``: one row per small arm of the cell instead of the partner only."""
    col = score_column(metric)
    runs = runs[unusable(runs, metric) == ""]
    small = runs[runs["group"] == "small"][CELL + ["seed", "arm", col]].rename(columns={"arm": "small_arm"})
    if not every:
        small = small.merge(small_choice(runs, metric), on=CELL + ["small_arm"])
    large = runs[runs["group"] == "large"][CELL + ["seed", "arm", col]]
    pairs = large.merge(small, on=CELL + ["seed"], suffixes=("_large", "_small"))
    pairs = pairs.rename(columns={f"{col}_large": "large", f"{col}_small": "small"})
    pairs["diff"] = pairs["large"] - pairs["small"]
    return pairs.sort_values(CELL + ["arm", "small_arm", "seed"], ignore_index=True)


def versus_best(interval: Interval = t_interval) -> Interval:
    """An interval for the gain over the *best* small arm of a cell, from tasks = (differences to the partner, then
        to every small arm). Lower end: the partner's, as chosen on validation (choosing the best-validating arm can
        only flatter the small side, so it stays valid). Upper end: the least upper end over every small arm, each at
        confidence 1 - alpha/J (Bonferroni over the J small arms): the gain over the best is at most the gain over any
        one. Where the partner's lower end lies above that upper end, validation chose a partner that another small arm
    clearly beats on test, and the interval has no lower end (only "worse" can be decided). The estimate is the
    partner's. ``extra``, ``extra_df``: as ``t_interval``'s, one per task. Measured in
    ``calibration.simulate_partners``."""

    def interval_versus_best(tasks, confidence: float, extra: Sequence | None = None, extra_df: float = math.inf):
        partner, *every = (np.asarray(t, dtype=float) for t in tasks)
        kw = [{} for _ in tasks] if extra is None else [{"extra": [x], "extra_df": extra_df} for x in extra]
        est, lo, _ = interval([partner], confidence, **kw[0])
        wide = 1 - (1 - confidence) / max(len(every), 1)
        his = [interval([d], wide, **k)[2] for d, k in zip(every, kw[1:]) if d.shape[-1] >= 2]
        hi = np.fmin.reduce(his) if his else np.full(np.shape(est), np.nan)
        return est, np.where(lo > hi, -np.inf, lo), hi

    interval_versus_best.__name__ = f"versus_best({getattr(interval, '__name__', 'interval')})"
    return interval_versus_best


def divergence_rate(failed, total, confidence: float) -> tuple:
    """The exact (Clopper-Pearson) interval of a divergence rate, ``failed`` of ``total`` runs. Vectorised."""
    k, n, tail = np.asarray(failed, dtype=float), np.asarray(total, dtype=float), (1 - confidence) / 2
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, sps.beta.ppf(tail, np.maximum(k, 1), n - k + 1), 0.0)
        hi = np.where(k < n, sps.beta.ppf(1 - tail, k + 1, np.maximum(n - k, 1)), 1.0)
    return lo, hi


def diverged_score(metric: str) -> tuple[float, float]:
    """The range taken for a diverged run's test score: within metrics.DIVERGED_MARGIN of chance (its validation
    score is, by the rule), or anywhere in [0, 1] for a metric without a chance level."""
    if metric not in CHANCE:
        return 0.0, 1.0
    return CHANCE[metric] - metrics.DIVERGED_MARGIN, CHANCE[metric] + metrics.DIVERGED_MARGIN


def divergences(runs: pd.DataFrame) -> pd.DataFrame:
    """Per large arm: its diverged runs (``sum``) of all its runs (``size``) in the study."""
    large = runs[runs["group"] == "large"]
    return large.assign(failed=diverged(large)).groupby("arm")["failed"].agg(["sum", "size"])


def with_divergence(interval: Interval, failed, total: int, gain_lo: float, gain_hi: float) -> Interval:
    """An interval for the expected gain of training a large arm, failures included, E = (1 - p) g + p f, from
    ``interval``, the gain g when it trains (the pairs of its non-diverged runs). The arm diverged in ``failed`` of its
    ``total`` runs of the study, pooled over datasets, sizes, fractions and seeds: divergence is taken to be a
    property of the arm and its recipe, not of the cell (a 5-seed cell sees no failure of an arm that fails 10 % of
    the time in 59 % of cells). A diverged run gains f between ``gain_lo`` and ``gain_hi`` (its score,
    ``diverged_score``, minus the partner's). The ends combine the trained interval [L, U] and the rate's
    Clopper-Pearson interval [p_lo, p_hi], both at the full level, as the method of variance estimates recovery
    does (MOVER, Zou & Donner 2008) for E = g - p (g - f): lower end (1 - p) g + p gain_lo minus the root of the
    summed squares of (1 - p)(g - L) and (g - gain_lo)(p_hi - p), the upper end alike; p = failed / total. With no
    failure seen p_hi stays above 0 (0 of 35 runs: 0.10), so the claim still pays for the failures it could not
    see. One rule at every rate; ``calibration.divergence_table`` measures it. Vectorised over ``failed``."""

    def interval_with_divergence(tasks, confidence: float) -> tuple:
        est, lo, hi = interval(tasks, confidence)
        p_lo, p_hi = divergence_rate(failed, total, confidence)
        p = np.asarray(failed) / total
        # versus_best's upper end may lie below its estimate (the partner's): each end recovers from its own side
        up = np.fmin(est, hi)
        low = (1 - p) * est + p * gain_lo - np.hypot((1 - p) * (est - lo), np.abs(est - gain_lo) * (p_hi - p))
        high = (1 - p) * up + p * gain_hi + np.hypot((1 - p) * (hi - up), np.abs(up - gain_hi) * (p - p_lo))
        return (1 - p) * est + p * (gain_lo + gain_hi) / 2, low, high

    interval_with_divergence.__name__ = f"with_divergence({getattr(interval, '__name__', 'interval')})"
    return interval_with_divergence


def with_seeds(
    interval: Interval, failed, total: int, seeds: int, gain_lo: float, gain_hi: float
) -> Callable[[int], Interval]:
    """``with_divergence`` for s seeds per cell instead of ``seeds`` (``seeds_needed``): the arm's runs and failures
    scale by s / seeds, its rate staying as seen."""
    return lambda s: with_divergence(interval, failed * s / seeds, total * s / seeds, gain_lo, gain_hi)


# --- per cell: each large arm against its small partner -------------------------------------------------------


COMPARE_COLUMNS = CELL + [
    "arm",
    "small_arm",
    "small_arms",
    "n",
    "dropped",
    "large_mean",
    "small_mean",
    "diff",
    "lo",
    "hi",
    "adj_lo",
    "adj_hi",
    "family",
    "adj_level",
    "p_improve",
    "decision",
    "seeds_needed",
    "seed_var",
    "test_var",
    "note",
]


def compare(
    runs: pd.DataFrame,
    metric: str = "auc",
    rope: float = 0.01,
    confidence: float = 0.95,
    family: int | None = None,
    interval: Interval = t_interval,
    fdr: bool = True,
    test_var: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per cell and large arm (every one that has a run, paired or not): the mean paired difference to the small
    partner with its interval for the gain over the best small arm (``versus_best``), the adjusted interval over
    the family of all comparisons (at least ``family``, e.g. the design's count, so missing cells do not loosen it)
    and the decision it supports; thin cells are kept, with a note. ``fdr``: the family's claims control the false
    discovery rate (Benjamini-Hochberg, ``fdr_confidence``): a per-task finding, not a family-wise guarantee;
    otherwise Bonferroni (the adaptive rounds keep it: their looks are not a BH step-up). ``interval``: another
    interval method, e.g. the repeated confidence intervals of adaptive seeds. ``test_var``: the test sample's
    variance of each mean difference (``testsample.variances``: CELL, arm, small_arm, test_var, test_df), added to
    the seed variance (``t_interval``'s ``extra``); without it the claim is about these test images only.
    ``seed_var`` and ``test_var``: the two parts of the partner's variance."""
    verify.unique(runs)
    why, failed = unusable(runs, metric), diverged(runs)
    pairs, every = paired(runs, metric), paired(runs, metric, every=True)
    keys = runs.loc[runs["group"] == "large", CELL + ["arm"]].drop_duplicates().sort_values(CELL + ["arm"])
    m = max(family or 0, len(keys))
    rate = divergences(runs)
    score_lo, score_hi = diverged_score(metric)
    has_small = set(map(tuple, runs.loc[runs["group"] == "small", CELL].drop_duplicates().to_numpy()))
    by = {k: g for k, g in pairs.groupby(CELL + ["arm"], sort=False)}
    by_every = {k: g for k, g in every.groupby(CELL + ["arm"], sort=False)}
    rows, tasks, bound, projected = [], {}, {}, {}  # the decidable comparisons' paired differences, their interval
    # and the interval projected to more seeds (seeds_needed), by row
    tv = (
        {}
        if test_var is None
        else {
            tuple(k): (v, d)
            for *k, v, d in test_var[CELL + ["arm", "small_arm", "test_var", "test_df"]].itertuples(index=False)
        }
    )
    for key in keys.itertuples(index=False, name=None):
        g = by.get(key, pairs.iloc[:0])
        in_cell = (runs[CELL] == key[:3]).all(axis=1) & ((runs["arm"] == key[3]) | (runs["group"] == "small"))
        dropped = int((why[in_cell] != "").sum())
        gone = runs[in_cell & failed].sort_values(["group", "arm", "seed"])
        grouped = list(by_every.get(key, every.iloc[:0]).groupby("small_arm", sort=True))
        others = [e["diff"].to_numpy() for _, e in grouped]
        row = dict(zip(CELL + ["arm"], key)) | {
            "small_arm": g["small_arm"].iloc[0] if len(g) else None,
            "small_arms": len(others),
            "n": len(g),
            "dropped": dropped,
            "large_mean": g["large"].mean(),
            "small_mean": g["small"].mean(),
            "diff": g["diff"].mean(),
            "family": m,
            "p_improve": prob_improvement(g["diff"]),
            "seeds_needed": None,
        }
        notes = [f"diverged: {', '.join(f'{r.arm} seed {r.seed}' for r in gone.itertuples())}"] if len(gone) else []
        if dropped > len(gone):
            notes.append(f"{dropped - len(gone)} run(s) with a non-finite score dropped")
        if key[:3] not in has_small:
            notes.append("no small arm in this cell")
        elif len(g) == 0:
            notes.append("no seed shared with a small arm")
        if len(g) >= MIN_PAIRS:
            k, n = rate.loc[key[3]]
            i, t = len(rows), [g["diff"].to_numpy(), *others]
            trained = versus_best(interval)
            row["seed_var"] = max(float(np.var(t[0], ddof=1)), SD_FLOOR**2) / len(g)
            if test_var is not None:
                parts = [tv.get((*key, s)) for s in [row["small_arm"], *(s for s, _ in grouped)]]
                if any(p is None for p in parts):
                    notes.append("test sample not accounted for (predictions of a run not given)")
                else:
                    df = min(d for _, d in parts)
                    trained = partial(trained, extra=[v for v, _ in parts], extra_df=df)
                    row["test_var"] = parts[0][0]
            tasks[i] = t
            gains = score_lo - g["small"].max(), score_hi - g["small"].min()
            projected[i] = with_seeds(trained, k, n, len(g), *gains)
            bound[i] = projected[i](len(g))
            est, lo, hi = (float(x) for x in bound[i](t, confidence))
            row |= {"diff": est, "lo": lo, "hi": hi}
            if k:
                notes.append(f"{key[3]} diverged in {k} of its {n} runs: the claim is on its expected gain")
        else:
            row |= dict.fromkeys(("lo", "hi", "adj_lo", "adj_hi"), math.nan) | {"decision": "undecided"}
            if len(g):
                notes.append(f"{len(g)} pair(s): at least {MIN_PAIRS} needed for a decision")
        rows.append(row | {"note": "; ".join(notes)})
    if fdr:
        level = fdr_confidence([float(claim_level(t, rope, bound[i])) for i, t in tasks.items()], confidence, m)
    else:
        level = family_confidence(confidence, m)
    for i, t in tasks.items():
        _, lo, hi = bound[i](t, level)
        rows[i] |= {"adj_lo": float(lo), "adj_hi": float(hi), "decision": decide(lo, hi, rope), "adj_level": level}
        if rows[i]["decision"] == "undecided":
            rows[i]["seeds_needed"] = seeds_needed(t, rope, level, projected[i])
    out = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    out["seeds_needed"] = out["seeds_needed"].astype("Int64")
    return out


# --- across tasks, per training fraction ---------------------------------------------------------------------------


def overall(
    runs: pd.DataFrame,
    metric: str = "auc",
    rope: float = 0.01,
    confidence: float = 0.95,
    family: int | None = None,
    test_var: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per large arm and training fraction, across tasks (datasets at one image size) with at least MIN_PAIRS pairs:
    the mean of the task mean differences with its random-effects interval (``between_tasks``: a claim about such
    tasks) and the simultaneous interval of the family of all such summaries (at least ``family``), the decision
    (the study-level claim), the fixed-effect interval about these tasks only (``fe_lo``, ``fe_hi``: seed noise
    alone, Welch), tau, I2 and the prediction interval for a new task (``heterogeneity``), the tasks where scale
    won, tied, lost and undecided (per-cell decisions better, equivalent, worse, undecided), the IQM of all paired differences and the
    task-averaged paired probability of improvement. Thin tasks are left out and named, never void the summary.
    ``test_var`` (``compare``'s) serves the won/tied/lost counts; the random-effects interval needs none: the spread
    of the task means already holds each task's test-sample noise."""
    cells = compare(runs, metric, rope, confidence, test_var=test_var)
    pairs = paired(runs, metric)
    keys = cells[["arm", "fraction"]].drop_duplicates().sort_values(["arm", "fraction"])
    m = max(family or 0, len(keys))
    rate, (score_lo, score_hi) = divergences(runs), diverged_score(metric)
    rows = []
    for arm, fraction in keys.itertuples(index=False, name=None):
        c = cells[(cells["arm"] == arm) & (cells["fraction"] == fraction)]
        full, thin = c[c["n"] >= MIN_PAIRS], c[c["n"] < MIN_PAIRS]
        p = pairs[(pairs["arm"] == arm) & (pairs["fraction"] == fraction)]
        tasks = [
            g["diff"].to_numpy() for k, g in p.groupby(TASK, sort=True) if k in set(zip(full["dataset"], full["size"]))
        ]
        row = {
            "arm": arm,
            "fraction": fraction,
            "tasks": len(tasks),
            "pairs": int(full["n"].sum()),
            "thin": "; ".join(f"{r.dataset} @ {r.size} px ({r.n} pair(s))" for r in thin.itertuples()),
            "dropped": int(c["dropped"].sum()),
            "iqm_diff": iqm(tasks),
            "family": m,
            "p_improve": float(np.mean([prob_improvement(t) for t in tasks])) if tasks else math.nan,
        }
        counts = c["decision"].value_counts()  # a thin cell (too few pairs) counts as undecided
        row |= {"won": counts.get("better", 0), "tied": counts.get("equivalent", 0), "lost": counts.get("worse", 0)}
        row["undecided"] = counts.get("undecided", 0)
        row |= heterogeneity(tasks, confidence)
        if tasks:
            # the same claim as per cell: on the expected gain, the arm's pooled divergence rate included
            bounds = (
                rate.loc[arm, "sum"],
                rate.loc[arm, "size"],
                score_lo - p["small"].max(),
                score_hi - p["small"].min(),
            )
            a = assess(tasks, rope, confidence, m, with_divergence(between_tasks, *bounds))
            row |= {"mean_diff": float(a["estimate"])} | {k: float(a[k]) for k in ("lo", "hi", "adj_lo", "adj_hi")}
            _, fe_lo, fe_hi = with_divergence(t_interval, *bounds)(tasks, confidence)
            row |= {"fe_lo": float(fe_lo), "fe_hi": float(fe_hi), "decision": a["decision"]}
        else:
            row |= dict.fromkeys(("mean_diff", "lo", "hi", "adj_lo", "adj_hi", "fe_lo", "fe_hi"), math.nan)
            row["decision"] = "undecided"
        rows.append(row)
    return pd.DataFrame(
        rows,
        columns=[
            "arm",
            "fraction",
            "tasks",
            "pairs",
            "thin",
            "dropped",
            "mean_diff",
            "iqm_diff",
            "lo",
            "hi",
            "adj_lo",
            "adj_hi",
            "fe_lo",
            "fe_hi",
            "tau",
            "i2",
            "pred_lo",
            "pred_hi",
            "won",
            "tied",
            "lost",
            "undecided",
            "family",
            "p_improve",
            "decision",
        ],
    )


def score_summary(runs: pd.DataFrame, metric: str = "auc", confidence: float = 0.95) -> pd.DataFrame:
    """Per arm and training fraction, across tasks: the IQM of the arm's finite test scores and the mean of its task
    means with the same t-interval as the verdict (tasks with fewer than 2 runs are left out of the interval)."""
    col = score_column(metric)
    ok = runs[np.isfinite(pd.to_numeric(runs[col], errors="coerce"))]
    rows = []
    for (arm, fraction), g in ok.groupby(["arm", "fraction"], sort=True):
        tasks = [t[col].to_numpy() for _, t in g.groupby(TASK, sort=True)]
        estimate, lo, hi = t_interval([t for t in tasks if len(t) >= 2], confidence)
        rows.append(
            {
                "arm": arm,
                "group": g["group"].iloc[0],
                "fraction": fraction,
                "tasks": len(tasks),
                "iqm": iqm(tasks),
                "mean": float(estimate),
                "lo": float(lo),
                "hi": float(hi),
            }
        )
    return pd.DataFrame(rows, columns=["arm", "group", "fraction", "tasks", "iqm", "mean", "lo", "hi"])
