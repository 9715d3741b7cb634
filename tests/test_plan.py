"""`scaleaudit plan`: the study's cost before it starts, from FLOP counts and a measured calibration step."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import tiny_study
import yaml
from mirror import REPO
from runtable import make_config, make_runs

from scaleaudit import cli, config, corrupt, cost, data, design, ledger, plan, report, verify


def test_images_and_flops_of_a_run_follow_the_recipe():
    recipe = {"epochs": 10, "eval_every": 3}
    assert cost.evaluations(recipe) == 4  # epochs 3, 6, 9 and the last
    assert cost.images_per_run(recipe, n_train=100, n_val=20, n_test=30) == (1000, 20 * 5 + 30)
    assert cost.train_factor({"train": "finetune"}) == 3 and cost.train_factor({"train": "linear_probe"}) == 1
    assert plan.n_train_of("pathmnist", 0.1) == round(data.info("pathmnist")["n_samples"]["train"] * 0.1)


def test_plan_of_the_full_study_counts_every_run_and_its_flops():
    """No calibration: GPU arms from FLOPs at a share of a named GPU's peak, never faster than launches allow (three
    arms on two datasets of the full study; test_docs plans all of it)."""
    cfg = config.load(REPO / "config" / "config.yaml")
    cfg["design"]["arms"] = ["resnet18_scratch", "vit_b16_pretrained", "vit_b16_linear_probe"]
    cfg["data"]["datasets"] = [d for d in cfg["data"]["datasets"] if d["flag"] in ("breastmnist", "pathmnist")]
    est = plan.make(cfg, calibrate_steps=0, gpu_name="NVIDIA H100 80GB HBM3", utilization=0.5, log=lambda m: None)
    assert est["total"]["runs"] == sum(1 for _ in design.runs(cfg))
    row = next(r for r in est["rows"] if r["arm"] == "vit_b16_pretrained" and r["dataset"] == "pathmnist")
    spec = config.run_spec(cfg, "pathmnist", 28, "vit_b16_pretrained", 1.0, 1)
    fpi = plan.count_step(spec)["flops_per_image"]
    assert 34e9 < fpi < 36e9  # ViT-B/16 at 224 px: 17.6 GMACs, attention included
    n = data.info("pathmnist")["n_samples"]
    assert row["epochs"] == 15 and row["epochs_from"] == "modelled"  # MedMNIST+ stops early: 10 + patience 5
    expected = sum(
        5 * fpi * (3 * 15 * plan.n_train_of("pathmnist", f) + n["val"] * 16 + n["test"]) for f in (0.1, 0.3, 1.0)
    )
    assert row["flops"] - row["shift_flops"] == pytest.approx(expected)
    arithmetic = sum(5 * 3 * fpi * 15 * plan.n_train_of("pathmnist", f) for f in (0.1, 0.3, 1.0)) / (0.5 * 989e12)
    assert row["train_hours"] * 3600 > arithmetic and row["energy_kwh"] == pytest.approx(row["device_hours"] * 0.7)
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


def test_early_stopping_runs_the_typical_best_epoch_plus_patience_or_the_measured_median():
    full = {"epochs": 100, "early_stop_patience": None}
    assert cost.stop_epoch(full) == 100 and cost.stop_epoch(full, measured=12) == 100  # no early stop: every epoch
    plus = {"epochs": 100, "early_stop_patience": 5}
    assert cost.stop_epoch(plus) == round(cost.TYPICAL_BEST_SHARE * 100) + 5
    assert cost.stop_epoch(plus | {"eval_every": 2}) == round(cost.TYPICAL_BEST_SHARE * 100) + 10  # in validations
    assert cost.stop_epoch(plus, measured=21.5) == 22 and cost.stop_epoch(plus | {"epochs": 5}) == 5


def small_config(arms: list[str], shift: bool = True) -> dict:
    cfg = config.load(REPO / "config" / "config.yaml")
    cfg["design"]["arms"], cfg["shift"]["enabled"] = arms, shift
    cfg["data"]["datasets"] = [{"flag": "pathmnist", "sizes": [28]}, {"flag": "breastmnist", "sizes": [28]}]
    return cfg


def gpu_plan(cfg: dict, **kw) -> dict:
    rows = plan.make(cfg, calibrate_steps=0, log=lambda m: None, **kw)["rows"]
    return {(r["arm"], r["dataset"]): r for r in rows}


def test_measured_stop_epochs_replace_the_model(tmp_path):
    """The run table's median epochs_run per arm and dataset (else per arm) sets an early-stopping arm's epochs."""
    runs = make_runs({"vit_b16_pretrained": 0.02}, seeds=3, datasets=(("pathmnist", 28),), fractions=(1.0,))
    runs.loc[runs["arm"] == "vit_b16_pretrained", "epochs_run"] = [30, 40, 90]
    runs.to_csv(tmp_path / "runs.csv", index=False)
    stops = plan.measured_stops(tmp_path / "runs.csv")
    assert stops[("vit_b16_pretrained", "pathmnist")] == 40 and stops["vit_b16_pretrained"] == 40
    cfg = small_config(["resnet18_scratch", "vit_b16_pretrained"])
    modelled, measured = gpu_plan(cfg), gpu_plan(cfg, stops=stops)
    row = measured[("vit_b16_pretrained", "pathmnist")]
    assert row["epochs"] == 40 and row["epochs_from"] == "measured"
    assert measured[("vit_b16_pretrained", "breastmnist")]["epochs"] == 40  # the arm's median where its task has none
    assert row["train_hours"] > 2 * modelled[("vit_b16_pretrained", "pathmnist")]["train_hours"]
    assert measured[("resnet18_scratch", "pathmnist")]["epochs"] == 100  # no early stopping: the recipe's epochs


def test_cli_plan_reads_the_study_s_run_table_by_default(tmp_path, monkeypatch):
    runs = make_runs({"vit_b16_pretrained": 0.02}, seeds=3, datasets=(("breastmnist", 28),), fractions=(1.0,))
    runs["epochs_run"] = 33
    cfg_file = tmp_path / "small.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {"design": {"arms": ["vit_b16_pretrained"]}, "data": {"datasets": [{"flag": "breastmnist", "sizes": [28]}]}}
        )
    )
    monkeypatch.chdir(tmp_path)
    table = design.run_table_path(config.load(REPO / "config" / "config.yaml", cfg_file))
    table.parent.mkdir(parents=True)
    runs.to_csv(table, index=False)
    argv = ["plan", str(REPO / "config" / "config.yaml"), str(cfg_file), "--calibration-steps", "0", "--brief"]
    assert cli.main(argv) == 0
    (row,) = json.loads(design.plan_path(config.load(REPO / "config" / "config.yaml", cfg_file)).read_text())["rows"]
    assert row["epochs"] == 33 and row["epochs_from"] == "measured"


def test_plan_counts_the_knn_votes_and_the_shift_stage_in_its_own_columns():
    cfg = small_config(["vit_b16_pretrained", "vit_b16_knn"])
    rows = gpu_plan(cfg)
    knn, tuned = rows[("vit_b16_knn", "pathmnist")], rows[("vit_b16_pretrained", "pathmnist")]
    n = data.info("pathmnist")["n_samples"]
    sets = corrupt.N_CORRUPTIONS["pathmnist"] * len(corrupt.SEVERITIES)
    votes = sum(5 * 2 * (n["val"] + n["test"]) * plan.n_train_of("pathmnist", f) * 768 for f in (0.1, 0.3, 1.0))
    assert knn["knn_flops"] == pytest.approx(votes) and knn["knn_hours"] == pytest.approx(
        votes / cost.KNN_GPU_FLOPS / 3600
    )
    assert tuned["knn_flops"] == tuned["knn_hours"] == 0
    fpi = plan.count_step(config.run_spec(cfg, "pathmnist", 28, "vit_b16_pretrained", 1.0, 1))["flops_per_image"]
    assert tuned["shift_flops"] == pytest.approx(15 * fpi * n["test"] * (1 + sets))
    shift_votes = sum(5 * 2 * n["test"] * (1 + sets) * plan.n_train_of("pathmnist", f) * 768 for f in (0.1, 0.3, 1.0))
    assert knn["shift_flops"] == pytest.approx(15 * fpi * n["test"] * (1 + sets) + shift_votes)
    assert tuned["device_hours"] == pytest.approx(tuned["train_hours"] + tuned["shift_hours"])
    assert tuned["shift_hours"] * 3600 > 15 * cost.STARTUP_S
    est = plan.make(cfg, calibrate_steps=0, log=lambda m: None)
    assert "shift-h" in plan.table(est) and "kNN-h" in plan.table(est)
    assert f"shift {est['total']['shift_hours']:.3g}" in plan.summary_line(est)
    off = gpu_plan(small_config(["vit_b16_pretrained"], shift=False))[("vit_b16_pretrained", "pathmnist")]
    assert off["shift_hours"] == off["shift_flops"] == 0 and off["train_hours"] == pytest.approx(tuned["train_hours"])


def test_a_gpu_check_s_measured_share_of_peak_replaces_the_assumed_one(tmp_path):
    """The figures gpu_check.py --out writes (its own writer): the ViT-B arms at the measured 20% of peak."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    figures = {
        "device": "NVIDIA H100 80GB HBM3",
        "vit": [{"model": "vit_base_patch16_224", "batch_size": 64, "images_per_s": 900.0, "share_of_peak": 0.2}],
        "knn_flops_per_s": 1e12,
    }
    gpu_check.write_figures(tmp_path / "check.json", figures)
    cfg = small_config(["resnet18_pretrained", "vit_b16_pretrained", "vit_b16_knn"])
    assumed = gpu_plan(cfg, utilization=0.35)
    measured = gpu_plan(cfg, utilization=0.35, gpu_check=json.loads((tmp_path / "check.json").read_text()))
    row = measured[("vit_b16_pretrained", "pathmnist")]
    assert "20% of NVIDIA H100 80GB HBM3 bf16 peak (measured by gpu-check)" in row["method"]
    assert row["train_hours"] > 1.5 * assumed[("vit_b16_pretrained", "pathmnist")]["train_hours"]
    assert "35%" in measured[("resnet18_pretrained", "pathmnist")]["method"]  # not measured: the assumed share
    knn = ("vit_b16_knn", "pathmnist")
    assert measured[knn]["knn_hours"] == pytest.approx(assumed[knn]["knn_hours"] * cost.KNN_GPU_FLOPS / 1e12)
    with pytest.raises(Exception, match="the GPU check ran on"):
        gpu_plan(cfg, gpu_name="NVIDIA L4", gpu_check=figures)


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
    est = verify.plan(out)  # the layout the report reads
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
            "training_hours": 2 * measured["device_hours"],
            "training_energy_kwh": measured["energy_kwh"] / 2,
            "device_hours": 3 * measured["device_hours"],  # with the shift stage, which no run books
            "energy_kwh": measured["energy_kwh"],
            "flops": 1e15,
        },
    }
    res = report.Results.of(runs, make_config(runs), estimate=estimate)
    text = report.to_markdown(
        report.document(res, {k: [] for k in ("scores", "calibration", "pareto", "forest")}), REPO
    )
    assert "scaleaudit plan estimated" in text
    assert "estimate / measured: 2.00x in time, 0.50x in energy" in text
