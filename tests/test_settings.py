"""Environment overrides: one resolver, config first, then the environment, recorded where they were used."""

import json
import subprocess

import pytest
import tiny_study

from scaleaudit import job, settings
from scaleaudit.files import read_json


@pytest.mark.parametrize("key", [s.key for s in settings.SETTINGS])
def test_config_first_then_environment_then_default(key):
    env = settings.BY_KEY[key].env
    assert settings.lookup(key, "from-config", {env: "from-env"}) == ("from-config", "config")
    assert settings.lookup(key, None, {env: "from-env"}) == ("from-env", f"${env}")
    assert settings.lookup(key, None, {env: ""}) == (None, "default")


def test_resolution_is_recorded_in_the_resolved_config_and_as_params(tmp_path, tiny_mirror):
    out = tmp_path / "config.resolved.json"
    inline = json.dumps(tiny_study.TINY_CONFIG | {"tracking": {"uri": "sqlite:///x.db"}})
    proc = subprocess.run(
        [*tiny_study.scaleaudit_cli(), "validate-config", "--inline", inline, "--resolved", str(out)],
        env=tiny_study.env(SCALEAUDIT_MIRROR=str(tiny_mirror)),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    resolved = read_json(out)["settings"]
    assert resolved["data.mirror"] == {
        "value": str(tiny_mirror),
        "source": "$SCALEAUDIT_MIRROR",
        "env": "SCALEAUDIT_MIRROR",
    }
    assert resolved["tracking.uri"]["source"] == "config" and resolved["tracking.uri"]["value"] == "sqlite:///x.db"
    assert resolved["weights.dir"] == {"value": None, "source": "default", "env": "SCALEAUDIT_WEIGHTS_DIR"}
    params = settings.as_params(resolved)
    assert params["setting.data.mirror.source"] == "$SCALEAUDIT_MIRROR" and params["setting.weights.dir"] == "(default)"


def test_fetch_data_records_where_its_mirror_came_from(tmp_path, tiny_mirror):
    out = tmp_path / "breastmnist_28.npz"
    proc = subprocess.run(
        [*tiny_study.scaleaudit_cli(), "fetch-data", "--dataset", "breastmnist", "--out", str(out)],
        env=tiny_study.env(SCALEAUDIT_MIRROR=str(tiny_mirror)),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert read_json(out.with_suffix(".json"))["settings"]["data.mirror"]["source"] == "$SCALEAUDIT_MIRROR"


def test_each_tracked_run_carries_the_settings_its_inputs_were_resolved_with(tmp_path, tiny_mirror, monkeypatch):
    import mlflow

    from scaleaudit import data, tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    record = data.fetch("breastmnist", 28, tmp_path / "b.npz", tiny_mirror)
    record |= {"settings": settings.record("data.mirror", None, {"SCALEAUDIT_MIRROR": str(tiny_mirror)})}
    uri = tracking.resolve_uri(None, root=tmp_path)
    experiment = tracking.init_experiment(uri, "unit", tmp_path / "artifacts") | {
        "settings": settings.record("tracking.uri", None, {})
    }
    result = job.run(tiny_study.spec(epochs=1), record, tmp_path / "run", experiment, weights=None, threads=1)
    params = mlflow.MlflowClient(uri).get_run(result["tracking"]["run_id"]).data.params
    assert (
        params["setting.data.mirror"] == str(tiny_mirror)
        and params["setting.data.mirror.source"] == "$SCALEAUDIT_MIRROR"
    )
    assert params["setting.tracking.uri.source"] == "default"
