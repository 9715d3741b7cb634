"""Robustness under acquisition shift: the statistics of the runs' scores on MedMNIST-C corrupted test sets.

Each run's ``shift.json`` (written by ``job.evaluate_shift`` from its kept weights) holds its clean and corrupted test
scores; ``table`` flattens them into one row per run, corruption and severity (severity 0: the clean test split).

``verdicts`` reuses the verdict's one path (``stats.compare``: pairs -> t-interval -> decide) with the corrupted
score in place of the test score; the small partner is still chosen on the clean validation split, so no choice
sees corrupted data. Conditions: ``clean``, each corruption family of medmnistc (digital, noise, blur, color,
task-specific: mean over its corruptions and their 5 severities) and ``all`` (mean over corruptions and severities).
Multiplicity: the clean verdicts stay in the study's per-cell family; the shift claims (each corrupted condition's
comparison, and whether the gain changed under shift) form one family of their own, of cells x large arms x
(corruption families + 1) x 2, decided by the main verdict's per-cell criterion (Benjamini-Hochberg, or Bonferroni
with adaptive seeds); whether the gain changed: Bonferroni over that family. The clean verdicts take the test
sample's variance where the runs' predictions are given (``testsample``); the corrupted conditions are seed-only.
``study_verdicts`` sets all this from the study's config: the report and ``scaleaudit shift-verdict`` both call it.
"""

from __future__ import annotations

import math

import pandas as pd

from . import adaptive, design, stats, testsample
from .design import CELL, RUN_KEY
from .files import read_json

CLEAN, ALL = "clean", "all"


def rows(record: dict) -> list[dict]:
    """One row per corruption and severity of one ``shift.json`` (severity 0, corruption and family 'none': clean)."""
    run, families = record["run"], record["corrupted_set"]["families"]
    key = {k: run[k] for k in RUN_KEY} | {
        "group": run["group"],
        "medmnistc": record["corrupted_set"]["medmnistc"],
        "shift_seed": record["corrupted_set"]["seed"],
    }
    out = [key | {"corruption": "none", "family": "none", "severity": 0} | record["clean"]]
    for name, levels in record["corrupted"].items():
        out += [
            key | {"corruption": name, "family": families[name], "severity": s} | m
            for s, m in zip(record["severities"], levels)
        ]
    return out


def table(paths: list) -> pd.DataFrame:
    return pd.DataFrame([r for p in paths for r in rows(read_json(p))]).sort_values(
        RUN_KEY + ["corruption", "severity"], ignore_index=True
    )


def condition_scores(shift: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Per run: its score under each condition: clean, each corruption family (mean over its corruptions and their
    severities), all (mean over corruptions and severities). Columns: RUN_KEY + condition + score."""
    clean = shift[shift["severity"] == 0]
    bad = shift[shift["severity"] > 0]
    parts = [
        clean[RUN_KEY].assign(condition=CLEAN, score=clean[metric].to_numpy()),
        bad.groupby(RUN_KEY + ["family"], as_index=False)[metric]
        .mean()
        .rename(columns={"family": "condition", metric: "score"}),
        bad.groupby(RUN_KEY, as_index=False)[metric].mean().assign(condition=ALL).rename(columns={metric: "score"}),
    ]
    return pd.concat(parts, ignore_index=True)


def _with_score(runs: pd.DataFrame, scores: pd.DataFrame, condition: str, metric: str) -> pd.DataFrame:
    """The run table with the condition's score as its test score (validation scores stay clean)."""
    s = scores[scores["condition"] == condition][RUN_KEY + ["score"]]
    merged = runs.drop(columns=[stats.score_column(metric)]).merge(s, on=RUN_KEY, how="inner")
    return merged.rename(columns={"score": stats.score_column(metric)})


def verdicts(
    runs: pd.DataFrame,
    shift: pd.DataFrame,
    metric: str = "auc",
    rope: float = 0.01,
    confidence: float = 0.95,
    cells: int | None = None,
    interval: stats.Interval = stats.t_interval,
    fdr: bool = True,
    scores: dict | None = None,
) -> pd.DataFrame:
    """Per cell, large arm and condition: the paired difference to the small partner and its decision
    (``stats.compare``), and for corrupted conditions the change of that gain from clean (``change``: the paired
    difference of differences, decided against the same ROPE: 'better' = the gain grows under shift, 'worse' =
    it shrinks) and a plain reading (``reading``). ``family``: the shift family's size (module docstring).
    On the main verdict's footing: ``cells`` is the design's per-cell family (design.families; at least the
    comparisons present), so comparisons without shift scores do not loosen it, ``interval`` the main verdict's
    interval method (adaptive seeds: the repeated confidence intervals) and ``fdr`` its per-cell criterion.
    ``scores``: each run's test metric on the test resamples (``testsample.load``): the clean condition is the
    study's test split, so its intervals take the test sample's variance as the main verdict's do. The corrupted
    conditions stay seed-only (no per-image predictions are kept for the corrupted sets): claims about these
    images."""
    by_condition = condition_scores(shift, metric)
    conditions = [CLEAN] + sorted(set(by_condition["condition"]) - {CLEAN, ALL}) + [ALL]
    present = len(runs.loc[runs["group"] == "large", CELL + ["arm"]].drop_duplicates())
    cells = max(cells or 0, present)
    family = cells * (len(conditions) - 1) * 2
    kw = dict(interval=interval, fdr=fdr)
    clean_runs = _with_score(runs, by_condition, CLEAN, metric)
    test_var = testsample.variances(clean_runs, scores, metric) if scores is not None else None
    # the report's per-cell family
    clean = stats.compare(clean_runs, metric, rope, confidence, family=cells, test_var=test_var, **kw)
    clean_pairs = stats.paired(clean_runs, metric)
    out = [clean.assign(condition=CLEAN)]
    for condition in conditions[1:]:
        shifted = _with_score(runs, by_condition, condition, metric)
        c = stats.compare(shifted, metric, rope, confidence, family=family, **kw)
        pairs = stats.paired(shifted, metric).merge(
            clean_pairs, on=CELL + ["arm", "seed", "small_arm"], suffixes=("", "_clean")
        )
        changes = []
        for key in c[CELL + ["arm"]].itertuples(index=False, name=None):
            g = pairs[(pairs[CELL + ["arm"]] == key).all(axis=1)]
            dd = (g["diff"] - g["diff_clean"]).to_numpy()
            if len(dd) >= stats.MIN_PAIRS:
                a = stats.assess([dd], rope, confidence, family, interval)
                changes.append(
                    {
                        "change": float(a["estimate"]),
                        "change_lo": float(a["adj_lo"]),
                        "change_hi": float(a["adj_hi"]),
                        "change_decision": a["decision"],
                    }
                )
            else:
                changes.append(
                    {
                        "change": float(dd.mean()) if len(dd) else math.nan,
                        "change_lo": math.nan,
                        "change_hi": math.nan,
                        "change_decision": "undecided",
                    }
                )
        out.append(
            pd.concat([c.assign(condition=condition, family=family), pd.DataFrame(changes, index=c.index)], axis=1)
        )
    table_ = pd.concat(out, ignore_index=True)
    clean_decision = table_[table_["condition"] == CLEAN].set_index(CELL + ["arm"])["decision"]
    table_["reading"] = [
        reading(
            clean_decision.get(tuple(r[k] for k in CELL + ["arm"]), "undecided"),
            r["decision"],
            r.get("change_decision"),
        )
        if r["condition"] != CLEAN
        else ""
        for _, r in table_.iterrows()
    ]
    return table_


def study_verdicts(runs: pd.DataFrame, shift: pd.DataFrame, config: dict, scores: dict | None = None) -> pd.DataFrame:
    """``verdicts`` on the study's main verdict's footing, from its resolved ``config``: its metric, ROPE and
    confidence, the design's per-cell family, and with adaptive seeds the repeated confidence intervals with the
    Bonferroni criterion. ``scores``: the runs' metric on the test resamples (``testsample.load``), for the clean
    rows' test-sample variance."""
    v = config["verdict"]
    seq = design.is_adaptive(config)
    return verdicts(
        runs,
        shift,
        v["metric"],
        v["rope"],
        v["confidence"],
        cells=design.families(config)[0],
        interval=adaptive.interval(config) if seq else stats.t_interval,
        fdr=not seq,
        scores=scores,
    )


def reading(clean: str, shifted: str, change: str | None) -> str:
    """What a corrupted condition says about a large arm's gain, from the clean decision, the shifted decision and
    the decision on the change of the gain."""
    if clean == "better" and shifted == "better":
        return "gain survives" + (" and shrinks" if change == "worse" else " and grows" if change == "better" else "")
    if clean == "better":
        return "gain shrinks under shift" if change == "worse" else "gain not shown under shift"
    if shifted == "better":
        return "gain only under shift"
    if change == "worse":
        return "falls further behind under shift"
    return "no gain shown"


def severity_curve(shift: pd.DataFrame, metric: str = "auc", confidence: float = 0.95) -> pd.DataFrame:
    """Per dataset, size, arm, fraction and severity (0 = clean): the mean over corruptions and seeds and the
    t-interval of the mean over seeds of each seed's corruption mean (the report's metric-vs-severity figure)."""
    per_seed = shift.groupby(RUN_KEY + ["severity"], as_index=False)[metric].mean()
    rows_ = []
    for key, g in per_seed.groupby(["dataset", "size", "arm", "fraction", "severity"], sort=True):
        est, lo, hi = stats.t_interval([g[metric].to_numpy()], confidence)
        rows_.append(
            dict(zip(["dataset", "size", "arm", "fraction", "severity"], key))
            | {
                "mean": float(est) if len(g) > 1 else float(g[metric].mean()),
                "lo": float(lo),
                "hi": float(hi),
                "seeds": len(g),
            }
        )
    return pd.DataFrame(rows_)
