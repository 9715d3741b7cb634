"""The reproduction check: arms with ``reproduces:`` beside the published numbers they claim to reproduce."""

from __future__ import annotations

import math

import pandas as pd

from . import published


def reproduction(runs: pd.DataFrame, arms: dict, spread: float = 2.0) -> pd.DataFrame:
    """Reproduced test AUC/ACC (full training set) of each arm with ``reproduces:`` beside the published value;
    "within" when the published AUC lies within ``spread`` seed standard deviations of the reproduced mean (the
    ACC where the paper published no AUC: MedMNIST+'s kNN; pub_auc and auc_diff are then NaN)."""
    rows = []
    full = runs[runs["fraction"] == 1.0]
    for (arm, dataset, size), g in full.groupby(["arm", "dataset", "size"], sort=True):
        ref = arms.get(arm, {}).get("reproduces")
        pub = published.find(ref, dataset, size) if ref else None
        if pub is None:
            continue
        auc_sd = g["test_auc"].std()
        pub_auc = math.nan if pub["auc"] is None else pub["auc"]
        judged, pub_judged = ("test_auc", pub_auc) if pub["auc"] is not None else ("test_acc", pub["acc"])
        rows.append(
            {
                "arm": arm,
                "dataset": dataset,
                "size": size,
                "reference": ref,
                "paper": pub["paper"],
                "protocol": pub["protocol"],
                "recipe": g["recipe"].iloc[0],
                "n": int(g[judged].count()),  # seeds with a score: a run without one is not counted
                "auc": g["test_auc"].mean(),
                "auc_sd": auc_sd,
                "acc": g["test_acc"].mean(),
                "acc_sd": g["test_acc"].std(),
                "pub_auc": pub_auc,
                "pub_acc": pub["acc"],
                "auc_diff": g["test_auc"].mean() - pub_auc,
                "acc_diff": g["test_acc"].mean() - pub["acc"],
                "within": bool(abs(g[judged].mean() - pub_judged) <= spread * g[judged].std())
                if g[judged].count() > 1
                else None,
            }
        )
    return pd.DataFrame(rows)
