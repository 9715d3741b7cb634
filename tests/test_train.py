"""A short training run: outputs, metrics, and what it logs to a real MLflow store."""

import json

import mlflow
import numpy as np
import pytest
from mirror import REPO

from scaleaudit import config, data, job, records, tracking, train

EPOCHS = 3


@pytest.fixture
def spec():
    cfg = config.load(
        REPO / "config" / "config.yaml",
        REPO / "config" / "demo.yaml",
        overrides={"recipes": {"demo_v2": {"epochs": EPOCHS}}, "hardware": {"device": "cpu"}},
    )
    return config.run_spec(cfg, "breastmnist", 28, "cnn_small", 1.0, 1)


@pytest.fixture
def data_record(tiny_mirror, tmp_path):
    return data.fetch("breastmnist", 28, tmp_path / "data" / "breastmnist_28.npz", tiny_mirror)


@pytest.fixture
def experiment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_uri(None, root=tmp_path)
    return tracking.init_experiment(uri, "unit", tmp_path / "artifacts")


def test_training_writes_metrics_predictions_and_tracks_the_run(spec, data_record, experiment, tmp_path):
    out = tmp_path / "run"
    result = job.run(spec, data_record, out, experiment, weights=None, threads=1)

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"] == result["test"] and saved["epochs_run"] == EPOCHS
    assert len(saved["history"]) == EPOCHS and 1 <= saved["best_epoch"] <= EPOCHS
    assert saved["test"]["auc"] > 0.8  # the synthetic task is easy: the loop really learns
    assert saved["cost"]["params"] < 1_000_000 and saved["cost"]["flops_per_image"] > 0
    assert saved["cost"]["energy_kwh"] > 0 and "codecarbon" in saved["cost"]["energy_method"]
    assert saved["provenance"]["data"]["sha256"] == data_record["sha256"]
    assert not (out / "checkpoint.pt").exists()  # removed once the run is complete
    with np.load(out / "predictions.npz") as pred:
        assert pred["probabilities"].shape == (156, 2) and pred["labels"].shape == (156,)
        assert np.allclose(pred["probabilities"].sum(1), 1, atol=1e-5)

    client = mlflow.MlflowClient(experiment["tracking_uri"])
    runs = client.search_runs([experiment["experiment_id"]])
    assert [r.info.run_id for r in runs] == [saved["tracking"]["run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["config_hash"] == spec.config_hash
    assert run.data.params["data_sha256"] == data_record["sha256"]
    assert {"git_commit", "dataset", "arm", "fraction", "seed"} <= set(run.data.params)
    assert run.data.metrics["test_auc"] == pytest.approx(saved["test"]["auc"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_auc")] == list(range(1, EPOCHS + 1))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "predictions.npz", "run_config.json"} <= artifacts


def test_validation_cadence_and_early_stop(spec, data_record, tmp_path):
    spec = spec.with_changes(recipe=spec.recipe | {"epochs": 4, "eval_every": 2})
    result = job.run(spec, data_record, tmp_path / "run", None, None, threads=1)
    assert [("val_auc" in row) for row in result["history"]] == [False, True, False, True]

    spec = spec.with_changes(
        recipe=spec.recipe | {"epochs": 30, "eval_every": 1, "early_stop_patience": 1, "select": "val_loss", "lr": 0.5}
    )
    result = job.run(spec, data_record, tmp_path / "run2", None, None, threads=1)
    assert result["stopped_early"] and result["epochs_run"] < 30


def test_resize_and_normalisation_on_device():
    import torch

    recipe = {"normalize": "half", "resize": "nearest", "augment": "none"}
    t = train.BatchTransform(recipe, in_chans=1, input_size=56, device=torch.device("cpu"))
    x = torch.tensor([[[[0, 255], [255, 0]]]], dtype=torch.uint8)
    t.size = 4
    out = t(x)
    assert out.shape == (1, 1, 4, 4) and out.min() == -1 and out.max() == 1
    assert torch.equal(out[0, 0, :2, :2], torch.full((2, 2), -1.0))  # NEAREST: each pixel becomes a 2x2 block
    pad = train.BatchTransform(recipe | {"resize": "pad"}, 1, 4, torch.device("cpu"))(x)
    assert pad.shape == (1, 1, 4, 4) and pad[0, 0, 0].abs().sum() == 0 and pad[0, 0, 1, 1] == -1


def test_a_diverged_run_is_recorded_not_crashed(spec, data_record, experiment, tmp_path):
    """A run whose loss becomes non-finite stops, records NaN scores and is marked diverged in metrics.json, in its
    row of runs.csv and in MLflow (tag and metric)."""
    spec = spec.with_changes(recipe=spec.recipe | {"lr": float("inf")})
    out = tmp_path / "run"
    result = job.run(spec, data_record, out, experiment, weights=None, threads=1)
    assert result["diverged"] == "non-finite training loss"
    assert result["epochs_run"] < EPOCHS or not np.isfinite(result["history"][-1]["train_loss"])
    assert all(np.isnan(result["test"][k]) for k in ("auc", "acc", "bacc", "ece"))
    row = records.RunResult.load(out / "metrics.json").row()
    assert row["diverged"] is True and np.isnan(row["test_auc"])
    run = mlflow.MlflowClient(experiment["tracking_uri"]).get_run(result["tracking"]["run_id"])
    assert run.data.tags["diverged"] == "non-finite training loss" and run.data.metrics["diverged"] == 1.0


def test_divergence_rule():
    assert train.divergence({"diverged": True}, {"auc": float("nan")}) == "non-finite training loss"
    assert train.divergence({}, {"auc": 0.55}).startswith("best validation AUC 0.550")
    assert train.divergence({}, {"auc": 0.56}) == "" and train.divergence({}, {"auc": None}) == ""
