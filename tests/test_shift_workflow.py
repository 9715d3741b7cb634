"""The shift steps in the workflow: MedMNIST-C built once in its own env, every run's kept weights scored, the verdict."""

import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import yaml

import tiny_study

STUDY = {
    "study": "shift",
    "data": {"datasets": [{"flag": "breastmnist", "sizes": [28]}]},
    "design": {"arms": ["cnn_small", "cnn_probe"], "fractions": [1.0], "seeds": 3},
    "hardware": {"device": "cpu"},
    "recipes": {"one_epoch": {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 1}},
    "arms": {"cnn_small": {"model": "scaleaudit_cnn_small", "recipe": "one_epoch", "group": "small"},
             "cnn_probe": {"model": "scaleaudit_cnn_small", "recipe": "one_epoch", "group": "large",
                           "train": "linear_probe"}},
    "shift": {"enabled": True},
    "tracking": {"log_model": True},
}
KEY = ["dataset", "size", "fraction", "arm", "seed"]


@pytest.mark.slow
def test_shift_steps_end_to_end(tmp_path, tiny_mirror):
    work = tiny_study.copy_workflow(tmp_path / "study")
    (work / "shift.yaml").write_text(yaml.safe_dump(STUDY))
    env = tiny_study.env(SCALEAUDIT_MIRROR=str(tiny_mirror))
    cmd = [sys.executable, "-m", "snakemake", "--profile", "workflow/profiles/local", "--cores", "2",
           "--configfile", "shift.yaml"]
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    record = yaml.safe_load((work / "results" / "data" / "corrupted" / "breastmnist_28.json").read_text())
    assert record["corruptions"][0] == "pixelate" and record["versions"]["medmnistc"] == "0.1.0"
    runs = pd.read_csv(work / "results" / "shift" / "runs.csv")
    shifted = pd.read_csv(work / "results" / "shift" / "runs_shift.csv")
    assert len(shifted) == 6 * (1 + 7 * 5)  # runs x (clean + 7 corruptions x 5 severities)
    clean = shifted[shifted["severity"] == 0].merge(runs, on=KEY)
    assert (clean["auc"] == clean["test_auc"]).all()  # the kept weights are the tested ones
    verdict = pd.read_csv(work / "results" / "shift" / "shift_verdict.csv")
    assert list(verdict["condition"]) == ["clean", *sorted(record["corruptions"]), "all"]
    assert verdict["reading"].fillna("").str.len().iloc[1:].gt(0).all()

    assert "Robustness under acquisition shift" in (work / "reports" / "shift.md").read_text()
    assert (work / "results" / "shift" / "report" / "shift_severity.png").exists()

    client = mlflow.MlflowClient(f"sqlite:///{work / 'results' / 'mlflow.db'}")
    for run_id in runs["mlflow_run_id"]:  # tracking.log_model: an MLflow model beside the kept weights
        names = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "model")}
        assert {"best.safetensors", "model/MLmodel"} <= names

    again = subprocess.run(cmd + ["--dry-run"], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert "Nothing to be done" in again.stdout + again.stderr  # resumable: nothing is evaluated twice
