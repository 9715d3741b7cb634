"""The whole workflow on a tiny study: real Snakemake DAG, real MLflow store, real PDF."""

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import timm
import tiny_study
import yaml
from safetensors.torch import save_file

TINY = {
    "study": "tiny",
    "data": {"datasets": [{"flag": "breastmnist", "sizes": [28]}]},
    "design": {"arms": ["cnn_small", "vit_pt"], "fractions": [0.5, 1.0], "seeds": 2},
    "recipes": {"tiny": {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 2}},
    "shift": {"enabled": False},  # the shift steps run in the catalog study (test_deploy), once
    "arms": {
        "cnn_small": {"recipe": "tiny"},
        "vit_pt": {
            "model": "vit_tiny_patch16_224",
            "pretrained": True,
            "weights_tag": "augreg_in21k_ft_in1k",
            "input_size": 32,
            "recipe": "tiny",
            "group": "large",
        },
    },
}


@pytest.fixture
def study(tmp_path, tiny_mirror):
    work = tiny_study.copy_workflow(tmp_path / "study")
    (work / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    weights = tmp_path / "weights"
    weights.mkdir()
    state = timm.create_model("vit_tiny_patch16_224").state_dict()
    save_file(
        {k: v.contiguous() for k, v in state.items()},
        str(weights / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"),
    )
    return work, tiny_study.env(SCALEAUDIT_MIRROR=str(tiny_mirror), SCALEAUDIT_WEIGHTS_DIR=str(weights))


def snakemake(work: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--profile",
        "workflow/profiles/local",
        "--cores",
        "2",
        "--configfile",
        "tiny.yaml",
        *args,
    ]
    return subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_tiny_study_end_to_end(study):
    work, env = study
    done = snakemake(work, env)
    assert done.returncode == 0, done.stderr[-3000:]

    runs = pd.read_csv(work / "results" / "tiny" / "runs.csv")
    assert len(runs) == 8  # 2 arms x 2 fractions x 2 seeds
    assert set(runs["n_train"]) == {273, 546}
    assert runs.loc[runs["arm"] == "vit_pt", "weights_published"].eq(False).all()
    assert runs.loc[runs["arm"] == "cnn_small", "weights_source"].str.contains("scratch").all()

    client = mlflow.MlflowClient(f"sqlite:///{work / 'results' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("scaleaudit/tiny")
    tracked = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_id for r in tracked) == sorted(runs["mlflow_run_id"])  # each job once
    assert all(r.info.status == "FINISHED" for r in tracked)

    pdf = work / "reports" / "tiny.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    md = pdf.with_suffix(".md").read_text()  # the report rule hands the run folders on: curves of every run
    assert "learning_val_1.png" in md and "reliability_1.png" in md and "Not drawn" not in md
    assert (work / "results" / "tiny" / "config.resolved.json").exists()

    again = snakemake(work, env, "--dry-run")
    assert "Nothing to be done" in again.stdout + again.stderr
