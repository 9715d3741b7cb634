"""The cost ledger and the reproduction check on synthetic run tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from runtable import make_runs

from scaleaudit import ledger, reproduction, stats


def test_cost_normalised_gain_uses_device_hours_without_accelerator():
    runs = make_runs({"vit_b16_pretrained": 0.05})
    c = ledger.cost_normalised(runs, stats.compare(runs)).iloc[0]
    assert c["hours"] == "device_hours"
    assert c["extra_kwh"] == pytest.approx(2e-2 - 1e-4)
    assert c["gain_per_kwh"] == pytest.approx(c["diff"] / c["extra_kwh"])
    assert c["gain_per_hour"] == pytest.approx(c["diff"] / c["extra_hours"])
    gpu = make_runs({"vit_b16_pretrained": 0.05}, accelerator=True)
    assert ledger.cost_normalised(gpu, stats.compare(gpu)).iloc[0]["hours"] == "accelerator_hours"


def test_cost_of_a_comparison_without_partner_is_unknown_not_an_error():
    alone = make_runs().query("group == 'large'")
    c = ledger.cost_normalised(alone, stats.compare(alone)).iloc[0]
    assert pd.isna(c["extra_kwh"]) and pd.isna(c["gain_per_kwh"])


def test_pareto_front():
    s = pd.DataFrame(
        {
            "dataset": "d",
            "size": 28,
            "fraction": 1.0,
            "arm": list("abcd"),
            "energy_kwh": [1.0, 2.0, 3.0, 2.5],
            "score_mean": [0.80, 0.90, 0.85, 0.95],
        }
    )
    assert ledger.pareto_front(s).tolist() == [True, True, False, True]


def test_study_total_adds_every_run():
    runs = make_runs()
    t = ledger.study_total(runs)
    assert t["runs"] == 15 and t["energy_kwh"] == pytest.approx(5 * (1e-4 + 1e-3 + 2e-2))


def test_reproduction_sets_arm_beside_published_number():
    runs = make_runs(base=0.90)
    arms = {"cnn_small": {"reproduces": "medmnist_v2/resnet18_28"}, "resnet18_scratch": {}}
    rep = reproduction.reproduction(runs, arms)
    assert len(rep) == 1
    r = rep.iloc[0]
    assert (r["arm"], r["pub_auc"], r["pub_acc"]) == ("cnn_small", 0.901, 0.863)
    assert r["auc_diff"] == pytest.approx(r["auc"] - 0.901) and bool(r["within"])
    # a dataset the paper did not report for that model is left out, not invented
    assert reproduction.reproduction(make_runs(datasets=(("octmnist", 28),)), arms).empty


def test_reproduction_of_a_result_published_without_auc_is_judged_on_acc():
    """MedMNIST+ reports no AUC for its kNN: the row shows none, and the spread check uses the ACC."""
    runs = make_runs(base=0.90)
    arms = {"cnn_small": {"reproduces": "medmnist_plus/resnet18_knn"}}
    r = reproduction.reproduction(runs, arms).iloc[0]
    assert math.isnan(r["pub_auc"]) and math.isnan(r["auc_diff"]) and r["pub_acc"] == 0.7821
    assert r["within"] == (abs(r["acc"] - 0.7821) <= 2 * r["acc_sd"])
