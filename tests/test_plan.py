"""`scaleaudit plan`: the study's cost before it starts, from FLOP counts and a measured calibration step."""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import tiny_study
import yaml
from mirror import REPO
from runtable import make_config, make_runs

from scaleaudit import config, cost, data, design, ledger, plan, report


def test_images_and_flops_of_a_run_follow_the_recipe():
    recipe = {"epochs": 10, "eval_every": 3}
    assert cost.evaluations(recipe) == 4  # epochs 3, 6, 9 and the last
    assert cost.images_per_run(recipe, n_train=100, n_val=20, n_test=30) == (1000, 20 * 5 + 30)
    assert cost.train_factor({"train": "finetune"}) == 3 and cost.train_factor({"train": "linear_probe"}) == 1
    assert plan.n_train_of("pathmnist", 0.1) == round(data.info("pathmnist")["n_samples"]["train"] * 0.1)


def test_plan_of_the_full_study_counts_every_run_and_its_flops():
    """No calibration: GPU arms from FLOPs at a share of a named GPU's peak, never faster than launches allow."""
    cfg = config.load(REPO / "config" / "config.yaml")
    cfg["design"]["arms"] = ["resnet18_scratch", "vit_b16_pretrained", "vit_b16_linear_probe"]
    est = plan.make(cfg, calibrate_steps=0, gpu_name="NVIDIA H100 80GB HBM3", utilization=0.5, log=lambda m: None)
    assert est["total"]["runs"] == sum(1 for _ in design.runs(cfg))
    row = next(r for r in est["rows"] if r["arm"] == "vit_b16_pretrained" and r["dataset"] == "pathmnist")
    spec = config.run_spec(cfg, "pathmnist", 28, "vit_b16_pretrained", 1.0, 1)
    fpi = plan.count_step(spec)["flops_per_image"]
    assert 34e9 < fpi < 36e9  # ViT-B/16 at 224 px: 17.6 GMACs, attention included
    n = data.info("pathmnist")["n_samples"]
    expected = sum(
        5 * fpi * (3 * 100 * plan.n_train_of("pathmnist", f) + n["val"] * 101 + n["test"]) for f in (0.1, 0.3, 1.0)
    )
    assert row["flops"] == pytest.approx(expected)
    arithmetic = sum(5 * 3 * fpi * 100 * plan.n_train_of("pathmnist", f) for f in (0.1, 0.3, 1.0)) / (0.5 * 989e12)
    assert row["device_hours"] * 3600 > arithmetic and row["energy_kwh"] == pytest.approx(row["device_hours"] * 0.7)
    probe = next(r for r in est["rows"] if r["arm"] == "vit_b16_linear_probe" and r["dataset"] == "pathmnist")
    assert probe["flops"] < row["flops"] / 2  # a frozen backbone is never back-propagated
    shared = next(r for r in est["rows"] if r["arm"] == "resnet18_scratch" and r["dataset"] == "pathmnist")
    assert shared["runs_per_gpu"] == 8
    cfg["arms"]["resnet18_scratch"]["resources"]["runs_per_gpu"] = 1
    alone = next(
        r
        for r in plan.make(
            cfg, calibrate_steps=0, gpu_name="NVIDIA H100 80GB HBM3", utilization=0.5, log=lambda m: None
        )["rows"]
        if r["arm"] == "resnet18_scratch" and r["dataset"] == "pathmnist"
    )
    assert "launch-bound" in alone["method"]  # 28 px on an H100: kernel launches, not FLOPs, set the pace
    assert shared["device_hours"] < alone["device_hours"] / 2 and shared["flops"] == alone["flops"]
    with pytest.raises(Exception, match="no dense bf16 peak"):
        plan.make(cfg, calibrate_steps=0, gpu_name="NVIDIA H100", log=lambda m: None)


def test_cli_plan_calibrates_on_this_machine_and_writes_the_plan(tmp_path):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny_study.TINY_CONFIG))
    out = tmp_path / "plan.json"
    done = subprocess.run(
        [*tiny_study.scaleaudit_cli(), "plan", str(tmp_path / "tiny.yaml"), "--out", str(out), "--brief"],
        env=tiny_study.env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "plan for study 'tiny': 4 runs" in done.stdout and "calibrating cnn_a at 28 px on cpu" in done.stderr
    est = json.loads(out.read_text())
    assert [r["method"] for r in est["rows"]] == ["measured on cpu"] * 2
    assert all(r["device_hours"] > 0 and not math.isnan(r["energy_kwh"]) for r in est["rows"])


def test_report_sets_the_estimate_against_the_measured_cost():
    runs = make_runs(
        {"vit_b16_pretrained": 0.05}, seeds=3, datasets=(("breastmnist", 28),), fractions=(1.0,), published=False
    )
    measured = ledger.study_total(runs)
    estimate = {
        "study": "synthetic",
        "startup_s": 20.0,
        "total": {
            "runs": len(runs),
            "device_hours": 2 * measured["device_hours"],
            "energy_kwh": measured["energy_kwh"] / 2,
            "flops": 1e15,
        },
    }
    res = report.Results.of(runs, make_config(runs), estimate=estimate)
    text = report.to_markdown(
        report.document(res, {k: [] for k in ("scores", "calibration", "pareto", "forest")}), REPO
    )
    assert "scaleaudit plan estimated" in text
    assert "estimate / measured: 2.00x in time, 0.50x in energy" in text
