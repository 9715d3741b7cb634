"""Issue 15, defects 2-4 and the resume part of 7: an MLflow run is one run identity, in its own study's experiment."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import tiny_study
import torch
from mlflow import MlflowClient

from scaleaudit import cli, config, job, tracking, train
from scaleaudit.files import read_json


@pytest.fixture
def tiny_data(tiny_mirror, tmp_path):
    return tiny_study.fetch(tiny_mirror, tmp_path / "data")


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    return uri, tracking.init_experiment(uri, "scaleaudit/tiny", tmp_path / "artifacts")


def _steps(client, run_id, key="train_loss"):
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_changed_spec_starts_a_new_run_and_marks_the_old_one(tiny_data, store, tmp_path):
    """Defect 2: recipe.epochs 2 -> 3 retrains; the new run's params say 3, the old run is kept and marked."""
    uri, record = store
    out = tmp_path / "run"
    first = job.run(tiny_study.spec(epochs=2), tiny_data, out, record, None, threads=1)
    (out / "metrics.json").unlink()  # what Snakemake does before it re-runs a job whose params changed
    spec = tiny_study.spec(epochs=3)
    second = job.run(spec, tiny_data, out, record, None, threads=1)

    old, new = first["tracking"]["run_id"], second["tracking"]["run_id"]
    assert new != old
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(new)
    assert run.data.params["recipe.epochs"] == "3" and run.data.tags["config_hash"] == spec.config_hash
    assert run.data.tags["scaleaudit.supersedes"] == old
    assert _steps(client, new) == [1, 2, 3]
    old_run = client.get_run(old)
    assert old_run.data.params["recipe.epochs"] == "2" and _steps(client, old) == [1, 2]  # not overwritten
    assert old_run.data.tags["scaleaudit.superseded_by"] == new and old_run.info.status == "FINISHED"


def test_resumed_run_logs_each_step_once(tiny_data, store, tmp_path, monkeypatch):
    """Defect 7 (resume): epochs logged after the last checkpoint are trained again but not logged again."""
    uri, record = store
    out = tmp_path / "run"
    spec = tiny_study.spec(epochs=3)
    fit_epoch = train.Trainer.train_epoch

    def crash_in_epoch_3(self):
        if self.state["epoch"] == 2:
            raise RuntimeError("killed")
        return fit_epoch(self)

    monkeypatch.setattr(train.Trainer, "train_epoch", crash_in_epoch_3)
    with pytest.raises(RuntimeError):  # checkpointed after epoch 1 only; epochs 1 and 2 were logged
        job.run(spec, tiny_data, out, record, None, threads=1, checkpoint_every_s=1e9)
    run_id = (out / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=uri)
    assert _steps(client, run_id) == [1, 2] and client.get_run(run_id).info.status == "FAILED"

    monkeypatch.undo()
    result = job.run(spec, tiny_data, out, record, None, threads=1)
    assert result["tracking"]["run_id"] == run_id
    assert _steps(client, run_id) == [1, 2, 3]
    assert _steps(client, run_id, "val_auc") == [1, 2, 3]
    assert client.get_run(run_id).info.status == "FINISHED"


def _init_in_subprocess(uri, name, folder):
    out = folder / f"{name.replace('/', '_')}.json"
    subprocess.run(
        tiny_study.scaleaudit_cli()
        + [
            "init-tracking",
            "--uri",
            uri,
            "--experiment",
            name,
            "--artifact-root",
            str(folder / "artifacts"),
            "--out",
            str(out),
        ],
        env=tiny_study.env(),
        check=True,
        timeout=900,
    )
    return read_json(out)


def test_stale_experiment_id_does_not_misfile_runs(tiny_data, tmp_path):
    """Defect 3: the store was reset and another study got id 1; this study's runs still go to its own experiment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _init_in_subprocess(uri, "scaleaudit/first", tmp_path)  # (this process caches no handle of the old store)
    (tmp_path / "mlflow.db").unlink()
    other = _init_in_subprocess(uri, "scaleaudit/other", tmp_path)
    assert other["experiment_id"] == first["experiment_id"]  # the cached id now names the other study

    result = job.run(tiny_study.spec(epochs=1), tiny_data, tmp_path / "run", first, None, threads=1)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result["tracking"]["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "scaleaudit/first"
    assert client.search_runs([other["experiment_id"]]) == []
    assert result["tracking"]["experiment_id"] == run.info.experiment_id != first["experiment_id"]


def _init_tracking(capsys, study_dir, monkeypatch):
    monkeypatch.chdir(study_dir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code = cli.main(["init-tracking", "--experiment", "scaleaudit/tiny", "--out", "results/tiny/tracking.json"])
    assert code == 0, capsys.readouterr().err
    return study_dir / "results" / "tiny" / "tracking.json"


@pytest.mark.parametrize("how", ["copied", "moved"])
def test_copied_or_moved_study_logs_into_its_own_store(capsys, tiny_data, tmp_path, monkeypatch, how):
    """Defect 3: the default store is resolved against the study's folder, not an absolute path cached in tracking.json."""
    original = tmp_path / "original"
    original.mkdir()
    _init_tracking(capsys, original, monkeypatch)
    cli.main(
        [
            "train",
            "--spec",
            json.dumps(tiny_study.spec(epochs=1).to_dict()),
            "--data",
            str(tmp_path / "data" / "breastmnist_28.json"),
            "--tracking",
            "results/tiny/tracking.json",
            "--out",
            "results/tiny/runs/s1",
        ]
    )
    copy = tmp_path / "copy"
    (shutil.copytree if how == "copied" else shutil.move)(original, copy)
    monkeypatch.chdir(copy)

    spec = tiny_study.spec(seed=2, epochs=1)  # a seed added to the study in its new folder
    code = cli.main(
        [
            "train",
            "--spec",
            json.dumps(spec.to_dict()),
            "--data",
            str(tmp_path / "data" / "breastmnist_28.json"),
            "--tracking",
            "results/tiny/tracking.json",
            "--out",
            "results/tiny/runs/s2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    result = read_json(copy / "results" / "tiny" / "runs" / "s2" / "metrics.json")
    assert result["tracking"]["tracking_uri"] == f"sqlite:///{copy / 'results' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=result["tracking"]["tracking_uri"])
    run = client.get_run(result["tracking"]["run_id"])
    assert run.info.artifact_uri.startswith((copy / "results" / "mlartifacts").as_uri())
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "predictions.npz"}
    assert len(client.search_runs([run.info.experiment_id])) == 2
    if how == "copied":  # the original store did not get the copy's run
        original_client = MlflowClient(tracking_uri=f"sqlite:///{original / 'results' / 'mlflow.db'}")
        assert len(original_client.search_runs([run.info.experiment_id])) == 1


def test_changed_data_file_starts_a_new_run(tiny_data, store, tmp_path):
    """The run identity includes the data's checksum: other data are another run, even with the same spec."""
    uri, record = store
    out = tmp_path / "run"
    spec = tiny_study.spec(epochs=1)
    first = job.run(spec, tiny_data, out, record, None, threads=1)
    second = job.run(spec, tiny_data | {"sha256": "0" * 64}, out, record, None, threads=1)
    assert second["tracking"]["run_id"] != first["tracking"]["run_id"]
    assert MlflowClient(tracking_uri=uri).get_run(second["tracking"]["run_id"]).data.tags["data_sha256"] == "0" * 64


# -- weights ---------------------------------------------------------------------------------------


def test_weights_file_overwritten_after_it_was_recorded_is_refused(capsys, tiny_data, tmp_path):
    """Defect 4: a job verifies the weights file against the SHA-256 that fetch-weights recorded."""
    from safetensors.torch import save_file
    from timm import create_model

    weights_file = tmp_path / "resnet18.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("resnet18").state_dict().items()}, str(weights_file))
    raw = json.loads(json.dumps(tiny_study.TINY_CONFIG))
    raw["arms"]["r18"] = {
        "model": "resnet18",
        "pretrained": True,
        "weights_file": str(weights_file),
        "recipe": "tiny",
        "group": "large",
    }
    spec = config.run_spec(config.validate(raw), "breastmnist", 28, "r18", 1.0, 1)
    record = tmp_path / "weights" / "r18.json"
    assert (
        cli.main(["fetch-weights", "--arm", "r18", "--arm-spec", json.dumps(raw["arms"]["r18"]), "--out", str(record)])
        == 0
    )
    recorded = read_json(record)["sha256"]

    torch.manual_seed(1)  # other weights of the same architecture, same file name
    save_file({k: v.contiguous() for k, v in create_model("resnet18").state_dict().items()}, str(weights_file))
    capsys.readouterr()
    code = cli.main(
        [
            "train",
            "--spec",
            json.dumps(spec.to_dict()),
            "--data",
            str(tmp_path / "data" / "breastmnist_28.json"),
            "--weights",
            str(record),
            "--out",
            str(tmp_path / "run"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2, err
    assert "changed since fetch-weights recorded it" in err and recorded in err and "weights/<arm>.json" in err
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / train.CHECKPOINT).exists()
