"""The cost ledger and the reproduction check on synthetic run tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from runtable import make_config, make_runs

from scaleaudit import ledger, reproduction, stats
from scaleaudit.report import sections
from scaleaudit.report.document import Para
from scaleaudit.report.results import Results


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


def shared_booking(runs: pd.DataFrame) -> pd.DataFrame:
    """The resnet18 runs of ``runs`` as one booking of 5 runs time-slicing a GPU: they start together and end after
    100, 200, ... 500 s of training, each recorded (as job.py does) with 1/5 of its own time."""
    arm = runs["arm"] == "resnet18_scratch"
    own = 100.0 * runs.loc[arm, "seed"]
    return runs.assign(
        runs_per_gpu=runs["runs_per_gpu"].mask(arm, 5),
        gpu_sharing=runs["gpu_sharing"].mask(arm, "time-slicing"),
        gpu_booking=runs["gpu_booking"].mask(arm, "4242"),
        gpu_start=runs["gpu_start"].mask(arm, 1000.0),
        gpu_end=runs["gpu_end"].mask(arm, 1000.0 + own + 5),  # 5 s of start-up besides training
        train_seconds=runs["train_seconds"].mask(arm, own),
        accelerator_hours=runs["accelerator_hours"].mask(arm, own / 3600 / 5),
        device_hours=runs["device_hours"].mask(arm, own / 3600 / 5),
    )


def test_a_shared_booking_is_billed_the_time_it_held_the_gpu_split_by_the_members_time():
    runs = shared_booking(make_runs(accelerator=True))
    bill = ledger.billed(runs)
    arm = runs["arm"] == "resnet18_scratch"
    # the booking held the GPU 505 s (its longest member), not the sum of 1/5 shares (300 s)
    assert bill.loc[arm, "accelerator_hours"].sum() == pytest.approx(505 / 3600)
    assert bill.loc[arm, "device_hours"].sum() == pytest.approx(505 / 3600)
    assert bill.loc[arm & (runs["seed"] == 5), "accelerator_hours"].item() == pytest.approx(505 / 3600 * 5 / 15)
    assert bill[~arm].equals(runs[~arm])  # a run alone on its device: its own time


def test_a_requeued_booking_is_billed_its_earlier_attempt_too():
    runs = shared_booking(make_runs(accelerator=True))
    arm = runs["arm"] == "resnet18_scratch"
    runs.loc[arm, "train_seconds"] += 50.0  # every member ran 50 s before the booking was preempted and requeued
    # the earlier attempt: training time beyond the last attempt's GPU span (which holds the 5 s of start-up)
    assert ledger.billed(runs).loc[arm, "accelerator_hours"].sum() == pytest.approx((505 + 45) / 3600)


def test_the_report_bills_shared_runs_by_their_bookings_holding_time():
    runs = shared_booking(make_runs(accelerator=True))
    res = Results.of(runs, make_config(runs))
    assert res.total["accelerator_hours"] == pytest.approx(ledger.billed(runs)["accelerator_hours"].sum())
    assert res.total["accelerator_hours"] > runs["accelerator_hours"].sum()
    small = res.summary.query("arm == 'resnet18_scratch'")["hours"].item()
    assert small == pytest.approx(505 / 3600 / 5)  # the mean per run of the booking's bill
    assert ledger.sharing(runs) == {"runs": 5, "bookings": 1, "modes": ["time-slicing"]}
    assert ledger.sharing(make_runs()) is None
    said = [b.text for b in sections.costs_section(res) if isinstance(b, Para)]
    assert any("5 runs shared a GPU" in t and "1 booking of one GPU, time-sliced" in t for t in said)
    alone = make_runs(accelerator=True)
    assert not any(
        "shared" in b.text for b in sections.costs_section(Results.of(alone, make_config(alone))) if isinstance(b, Para)
    )
