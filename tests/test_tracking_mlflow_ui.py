"""Issue 14 (MLflow part): what the MLflow UI shows of a run, read back from a real store."""

from __future__ import annotations

import sys

import pytest
import tiny_study
from mlflow import MlflowClient

from scaleaudit import job, provenance, tracking
from scaleaudit.errors import ScaleauditError


@pytest.fixture
def tiny_data(tiny_mirror, tmp_path):
    return tiny_study.fetch(tiny_mirror, tmp_path / "data")


def test_experiment_names_are_namespaced_unless_configured():
    assert tracking.experiment_name(None, "demo") == "scaleaudit/demo"
    assert tracking.experiment_name("team/medimg-demo", "demo") == "team/medimg-demo"


@pytest.mark.parametrize("system_metrics", [True, False])
def test_run_carries_standard_tags_cell_tags_dataset_input_and_system_metrics(
    tiny_data, tmp_path, monkeypatch, system_metrics
):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # 10 s in use: a tiny run is shorter
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    record = tracking.init_experiment(uri, tracking.experiment_name(None, "tiny"), tmp_path / "artifacts")
    spec = tiny_study.spec(seed=2, epochs=4)
    result = job.run(spec, tiny_data, tmp_path / "run", record | {"system_metrics": system_metrics}, None, threads=1)

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result["tracking"]["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "scaleaudit/tiny"
    tags = run.data.tags
    assert tags["mlflow.source.git.commit"] == provenance.code_version()["commit"]
    assert "cnn_a" in tags["mlflow.note.content"] and "seed 2" in tags["mlflow.note.content"]
    assert {k: tags[k] for k in ("dataset", "size", "arm", "fraction", "seed", "study")} == {
        "dataset": "breastmnist",
        "size": "28",
        "arm": "cnn_a",
        "fraction": "1",
        "seed": "2",
        "study": "tiny",
    }
    assert tags["cell"] == "breastmnist_28/cnn_a/f1"  # one value for all seeds of a cell: the UI groups by it
    assert tags["config_hash"] == spec.config_hash and tags["data_sha256"] == tiny_data["sha256"]
    # how the run used its device: a CPU run shares nothing, has no booking and no GPU time
    assert (tags["gpu_sharing"], tags["gpu_booking"], run.data.metrics["runs_per_gpu"]) == ("exclusive", "none", 1)
    assert "gpu_start" not in run.data.metrics

    (data_input,) = run.inputs.dataset_inputs
    assert data_input.dataset.name == "breastmnist_28" and data_input.dataset.digest == tiny_data["sha256"][:36]
    assert data_input.dataset.source == tiny_data["file"]
    assert {t.key: t.value for t in data_input.tags} == {
        "mlflow.data.context": "training",
        "sha256": tiny_data["sha256"],
    }

    system = sorted(k for k in run.data.metrics if k.startswith("system/"))
    if system_metrics:
        assert "system/cpu_utilization_percentage" in system and "system/system_memory_usage_megabytes" in system
    else:
        assert system == []


def test_system_metrics_need_psutil(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # as if not installed
    with pytest.raises(ScaleauditError, match="psutil is not installed") as err:
        tracking.check_system_metrics()
    assert "pip install psutil" in str(err.value)
