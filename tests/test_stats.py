"""The verdict statistics on synthetic run tables with known effects."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from runtable import make_runs

from scaleaudit import stats

DATASETS = (("breastmnist", 28), ("pneumoniamnist", 28), ("dermamnist", 28))


def decision(runs, **kw) -> pd.Series:
    c = stats.compare(runs, n_boot=1000, **kw)
    return c.set_index(["dataset", "arm"])["decision"]


def test_planted_gain_of_five_points_is_better():
    runs = make_runs({"vit_b16_pretrained": 0.05}, datasets=DATASETS)
    assert set(decision(runs)) == {"better"}
    over = stats.overall(runs, n_boot=500)
    assert over.loc[0, "decision"] == "better"
    assert over.loc[0, "iqm_diff"] == pytest.approx(0.05, abs=0.01)
    assert over.loc[0, "lo"] > 0.01 and over.loc[0, "p_improve"] > 0.9
    assert stats.verdict_sentence(over, 0.01, "auc").startswith("Scale pays")


def test_no_effect_is_equivalent():
    runs = make_runs({"vit_b16_pretrained": 0.0}, seeds=10, noise=0.003, datasets=DATASETS)
    assert set(decision(runs)) == {"equivalent"}
    over = stats.overall(runs, n_boot=500)
    assert over.loc[0, "decision"] == "equivalent"
    assert stats.verdict_sentence(over, 0.01, "auc").startswith("Scale does not pay")


def test_planted_loss_is_worse():
    runs = make_runs({"vit_b16_pretrained": -0.05})
    assert set(decision(runs)) == {"worse"}


def test_three_noisy_seeds_are_undecided_with_a_seed_estimate():
    runs = make_runs({"vit_b16_pretrained": 0.04}, seeds=3, noise=0.04, seed=3)
    c = stats.compare(runs, n_boot=1000).iloc[0]
    assert c["decision"] == "undecided"
    assert c["lo"] < 0.01 < c["hi"]
    assert c["seeds_needed"] > 3
    over = stats.overall(runs, n_boot=500)
    assert stats.verdict_sentence(over, 0.01, "auc").startswith("Not decided yet")


def test_two_run_tables_give_two_verdicts():
    gain = stats.overall(make_runs({"vit_b16_pretrained": 0.05}), n_boot=300)
    none = stats.overall(make_runs({"vit_b16_pretrained": 0.0}, seeds=10, noise=0.002), n_boot=300)
    assert stats.verdict_sentence(gain, 0.01, "auc") != stats.verdict_sentence(none, 0.01, "auc")
    # the ROPE from the config moves the decision: a 5-point gain is not "better" against a 10-point threshold
    assert stats.overall(make_runs({"vit_b16_pretrained": 0.05}), rope=0.1, n_boot=300).loc[0, "decision"] == "equivalent"


def test_best_small_arm_is_chosen_on_validation_not_test():
    runs = make_runs({"resnet18_scratch": -0.02})
    # resnet18 tests better but validates worse than cnn_small: the choice must follow validation
    is_res = runs["arm"] == "resnet18_scratch"
    runs.loc[is_res, "test_auc"] += 0.05
    best = stats.best_small(runs, "auc")
    assert best["small_arm"].tolist() == ["cnn_small"]
    pairs = stats.paired(runs, "auc")
    assert set(pairs["small_arm"]) == {"cnn_small"} and len(pairs) == 5


def test_pairing_keeps_only_seeds_both_arms_ran():
    runs = make_runs()
    runs = runs[~((runs["arm"] == "vit_b16_pretrained") & (runs["seed"] == 2))]
    assert stats.compare(runs, n_boot=100).loc[0, "n"] == 4


@pytest.mark.parametrize(("lo", "hi", "expected"), [
    (0.02, 0.05, "better"), (-0.05, -0.02, "worse"), (-0.005, 0.009, "equivalent"), (0.0, 0.03, "undecided"),
    (-0.03, 0.03, "undecided"), (math.nan, math.nan, "undecided"),
])
def test_decide_against_rope(lo, hi, expected):
    assert stats.decide(lo, hi, 0.01) == expected


def test_elementary_statistics_match_hand_values():
    assert stats.iqm([np.arange(1, 9)]) == 4.5  # middle half of 1..8: 3, 4, 5, 6
    assert stats.iqm([[1, 2, 3, 4], [5, 6, 7, 8]]) == 4.5  # pooled over tasks, as rliable
    assert stats.prob_improvement([1, 2], [1, 0]) == 0.875  # 3 wins + 1 tie of 4 pairs
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
    assert stats.wilcoxon_p([0.0, 0.0, 0.0]) == 1.0 and math.isnan(stats.wilcoxon_p([0.1]))
    assert stats.seeds_needed([0.1], 0.01, 0.95) is None
    # mean 0.04, sd 0.05, nearest ROPE edge 0.03 away: (1.96 * 0.05 / 0.03)^2 = 10.7 -> 11 seeds
    assert stats.seeds_needed([0.09, -0.01, 0.04], 0.01, 0.95) == 11


def test_stratified_bootstrap_resamples_within_tasks():
    rng = np.random.default_rng(0)
    # constant tasks: any within-task resample gives the same IQM, so the CI collapses onto it
    lo, hi = stats.stratified_bootstrap_ci([[1.0, 1.0], [3.0, 3.0]], stats.iqm, 0.95, 200, rng)
    assert lo == hi == 2.0
    # one run in a task shows no spread: no interval rather than a falsely narrow one
    assert all(map(math.isnan, stats.stratified_bootstrap_ci([[1.0], [3.0, 3.5]], stats.iqm, 0.95, 200, rng)))


def test_one_seed_is_never_decided():
    runs = make_runs({"vit_b16_pretrained": 0.05}, seeds=1, datasets=DATASETS)
    assert set(decision(runs)) == {"undecided"}
    over = stats.overall(runs, n_boot=100)
    assert over.loc[0, "decision"] == "undecided"
    assert "no CI: fewer than 2 seeds" in stats.verdict_sentence(over, 0.01, "auc")


def test_cost_normalised_gain_uses_device_hours_without_accelerator():
    runs = make_runs({"vit_b16_pretrained": 0.05})
    c = stats.cost_normalised(runs, stats.compare(runs, n_boot=100)).iloc[0]
    assert c["hours"] == "device_hours"
    assert c["extra_kwh"] == pytest.approx(2e-2 - 1e-4)
    assert c["gain_per_kwh"] == pytest.approx(c["diff"] / c["extra_kwh"])
    assert c["gain_per_hour"] == pytest.approx(c["diff"] / c["extra_hours"])
    gpu = make_runs({"vit_b16_pretrained": 0.05}, accelerator=True)
    assert stats.cost_normalised(gpu, stats.compare(gpu, n_boot=100)).iloc[0]["hours"] == "accelerator_hours"


def test_pareto_front():
    s = pd.DataFrame({"dataset": "d", "size": 28, "fraction": 1.0, "arm": list("abcd"),
                      "energy_kwh": [1.0, 2.0, 3.0, 2.5], "score_mean": [0.80, 0.90, 0.85, 0.95]})
    assert stats.pareto_front(s).tolist() == [True, True, False, True]


def test_data_efficiency_tracks_the_fraction():
    runs = make_runs({"vit_b16_pretrained": lambda f: 0.1 * (1 - f)}, fractions=(0.1, 0.5, 1.0))
    wide = stats.data_efficiency(stats.compare(runs, n_boot=100)).iloc[0]
    assert wide[0.1] == pytest.approx(0.09, abs=0.01) and wide[1.0] == pytest.approx(0.0, abs=0.01)


def test_reproduction_sets_arm_beside_published_number():
    runs = make_runs(base=0.90)
    arms = {"cnn_small": {"reproduces": "medmnist_v2/resnet18_28"}, "resnet18_scratch": {}}
    rep = stats.reproduction(runs, arms)
    assert len(rep) == 1
    r = rep.iloc[0]
    assert (r["arm"], r["pub_auc"], r["pub_acc"]) == ("cnn_small", 0.901, 0.863)
    assert r["auc_diff"] == pytest.approx(r["auc"] - 0.901) and bool(r["within"])
    # a dataset the paper did not report for that model is left out, not invented
    assert stats.reproduction(make_runs(datasets=(("octmnist", 28),)), arms).empty
