"""Adaptive seeds: rounds of seeds spent only on the comparisons whose verdict is still undecided.

The rounds and their seeds are the design's (``design.looks``, ``design.round_of``). After each round every
comparison (a cell and one large arm) is judged on the runs of the rounds so far with the repeated confidence
intervals of ``sequential`` (looks at the round sizes, the per-cell Bonferroni family as in a fixed study). A
comparison keeps the first decision it reaches, frozen at that round, and gets no more runs; each one still undecided
below ``max`` gets the next round's seeds for its large arm and for every small arm of its cell, so its pairs stay
complete and its small partner is chosen as in a fixed study. Given the runs' metric on the test resamples
(``scores``, ``testsample.load``: ``scaleaudit next-round`` and the report read them from the run folders), each
look's interval also takes the test sample's variance of that look's seeds. The run table (with those scores) is
all it takes to re-derive every round's decisions, the plan and the compute saved.

Across datasets the study-level summaries use the first round only: those seeds ran in every cell whatever the data,
so the fixed-n t-interval stays valid there; later rounds were chosen by the data and only serve their own cell.
"""

from __future__ import annotations

import math

import pandas as pd

from . import design, ledger, sequential, stats, testsample
from .design import RUN_KEY

KEY = design.CELL + ["arm"]


def interval(config: dict) -> stats.Interval:
    s = design.adaptive_seeds(config)
    return sequential.interval(design.looks(s), s.get("spending", "pocock"))


def with_rounds(runs: pd.DataFrame, config: dict) -> pd.DataFrame:
    s = design.adaptive_seeds(config)
    return runs.assign(round=[design.round_of(s, int(x)) for x in runs["seed"]])


def first_round(runs: pd.DataFrame, config: dict) -> pd.DataFrame:
    """The runs of round 1: the seeds every cell ran whatever the data (all runs of a fixed design)."""
    return runs[with_rounds(runs, config)["round"] == 1] if design.is_adaptive(config) else runs


def _look(runs: pd.DataFrame, scores: dict | None, metric: str, **kw) -> pd.DataFrame:
    """``stats.compare`` on the runs of one look, with the test sample's variance of that look's seeds where the
    runs' ``scores`` on the test resamples are given (``testsample``)."""
    test_var = testsample.variances(runs, scores, metric) if scores is not None else None
    return stats.compare(runs, metric, test_var=test_var, **kw)


def history(runs: pd.DataFrame, config: dict, scores: dict | None = None) -> pd.DataFrame:
    """Every round's look: ``stats.compare`` on the runs of rounds 1..r with the repeated confidence intervals,
    one block per round r present in the table (column ``round``). ``scores``: each run's metric on the test
    resamples (``testsample.load``), so that each look's interval takes the test sample's variance too."""
    v = config["verdict"]
    runs = with_rounds(runs, config)
    kw = dict(
        rope=v["rope"],
        confidence=v["confidence"],
        family=design.families(config)[0],
        interval=interval(config),
        fdr=False,
    )
    last = int(runs["round"].max()) if len(runs) else 0
    return (
        pd.concat(
            [_look(runs[runs["round"] <= r], scores, v["metric"], **kw).assign(round=r) for r in range(1, last + 1)],
            ignore_index=True,
        )
        if last
        else pd.DataFrame(columns=stats.COMPARE_COLUMNS + ["round"])
    )


def verdict(runs: pd.DataFrame, config: dict, scores: dict | None = None) -> pd.DataFrame:
    """Per comparison: the row of ``stats.compare`` at the round its decision was reached (frozen there), or at its
    last round if it stayed undecided, with ``rounds`` (rounds it ran), ``decided_round`` and ``stopped``
    (why it got no more seeds: decided, or max). ``scores``: as ``history``'s."""
    h = history(runs, config, scores)
    if h.empty:
        return h.assign(rounds=pd.Series(dtype=int), decided_round=pd.Series(dtype="Int64"), stopped="")
    open_ = _open(h)
    rows = []
    for _, g in h[open_].groupby(KEY, sort=True):
        decided = g[g["decision"] != "undecided"]
        row = (decided if len(decided) else g).iloc[0 if len(decided) else -1]
        rows.append(row)
    out = pd.DataFrame(rows).reset_index(drop=True)
    out["rounds"] = out["round"].astype(int)
    out["decided_round"] = out["round"].where(out["decision"] != "undecided").astype("Int64")
    full = len(design.looks(design.adaptive_seeds(config)))
    out["stopped"] = [
        "decided" if d != "undecided" else ("max" if r >= full else "") for d, r in zip(out["decision"], out["rounds"])
    ]
    return out.drop(columns="round")


def _open(h: pd.DataFrame) -> pd.Series:
    """True for the looks at which a comparison was still running: no decision at any earlier round."""
    h = h.sort_values(KEY + ["round"])
    decided_before = (
        (h["decision"] != "undecided")
        .groupby([h[k] for k in KEY])
        .transform(lambda d: d.shift(fill_value=False).cummax())
    )
    return ~decided_before.astype(bool).sort_index()


def undecided(runs: pd.DataFrame, config: dict, r: int, scores: dict | None = None) -> pd.DataFrame:
    """The comparisons (cell, large arm) that round ``r`` continues: undecided after round r - 1 (and at every round
    before), still below ``max``. ``runs`` may hold later rounds too; only rounds < r are looked at. ``scores``: as
    ``history``'s, so the decision is the report's."""
    if r > len(design.looks(design.adaptive_seeds(config))):
        return pd.DataFrame(columns=KEY)
    earlier = with_rounds(runs, config)
    v = verdict(earlier[earlier["round"] < r], config, scores)
    return v.loc[(v["decision"] == "undecided") & (v["rounds"] == r - 1), KEY].reset_index(drop=True)


def next_round(runs: pd.DataFrame, config: dict, r: int, scores: dict | None = None) -> list[dict]:
    """The runs of round ``r`` (r >= 2), as wildcard values: its seeds for the large arm of every comparison still
    undecided and for all the small arms of that comparison's cell. ``scores``: as ``history``'s."""
    go = undecided(runs, config, r, scores)
    small = design.arms(config, "small")
    seeds = design.round_seeds(design.adaptive_seeds(config), r)
    out: dict[tuple, dict] = {}
    for c in go.itertuples(index=False):
        for arm in small + [c.arm]:
            for seed in seeds:
                run = {
                    "dataset": c.dataset,
                    "size": int(c.size),
                    "arm": arm,
                    "fraction": float(c.fraction),
                    "seed": int(seed),
                }
                out[tuple(run.values())] = run
    return sorted(out.values(), key=lambda x: tuple(x[k] for k in RUN_KEY))


def planned(runs: pd.DataFrame, config: dict, scores: dict | None = None) -> pd.DataFrame:
    """Every run the procedure asked for, given the runs of the table: round 1 of the design, then each later round
    that the table's decisions called for (up to one round past the table's last). ``scores``: as ``history``'s."""
    plan = [dict(run, round=1) for run in design.runs(config)]
    r = 2
    while new := next_round(runs, config, r, scores):
        plan += [dict(run, round=r) for run in new]
        r += 1
    return pd.DataFrame(plan, columns=list(plan[0]) if plan else RUN_KEY + ["round"])


def savings(runs: pd.DataFrame, config: dict) -> pd.DataFrame:
    """Per cell and arm: rounds run, seeds used against ``max``, and the device- (or accelerator-) hours used and
    saved against running ``max`` seeds everywhere (saved runs priced at the arm's mean hours per run in the cell)."""
    s, hours = design.adaptive_seeds(config), ledger.hours_column(runs)
    g = (
        with_rounds(runs, config)
        .groupby(KEY, sort=True)
        .agg(rounds=("round", "max"), seeds=("seed", "nunique"), hours=(hours, "sum"), per_run=(hours, "mean"))
    )
    g["max"] = s["max"]
    g["saved_seeds"] = (g["max"] - g["seeds"]).clip(lower=0)
    g["saved_hours"] = g["saved_seeds"] * g["per_run"]
    g["hours_column"] = hours
    return g.reset_index()


def summary(saved: pd.DataFrame) -> dict:
    """Totals of ``savings``: runs and hours used, at ``max`` everywhere, and the share saved."""
    used, at_max = int(saved["seeds"].sum()), int(saved["max"].sum())
    hours = float(saved["hours"].sum())
    full = hours + float(saved["saved_hours"].sum())
    return {
        "runs": used,
        "runs_at_max": at_max,
        "runs_saved": at_max - used,
        "hours": hours,
        "hours_at_max": full,
        "hours_saved": full - hours,
        "share_saved": (full - hours) / full if full > 0 else math.nan,
        "hours_column": saved["hours_column"].iloc[0] if len(saved) else "device_hours",
    }


def designed(runs: pd.DataFrame, config: dict, scores: dict | None = None) -> pd.DataFrame:
    """Every run the design asks for, with whether the table has it (``present``); with adaptive seeds, the rounds
    the table's decisions called for (``scores``: as ``history``'s)."""
    want = (planned(runs, config, scores) if design.is_adaptive(config) else pd.DataFrame(design.runs(config)))[RUN_KEY]
    have = want.merge(runs[RUN_KEY].drop_duplicates(), on=RUN_KEY, how="left", indicator=True)
    have["present"] = have.pop("_merge") == "both"
    return have
