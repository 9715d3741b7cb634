"""Environment overrides: one resolver, config first, then the environment, recorded where they were used."""

import json
import subprocess

import pytest

import tiny_study
from scaleaudit import settings
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
    proc = subprocess.run([*tiny_study.scaleaudit_cli(), "validate-config", "--inline", inline, "--resolved", str(out)],
                          env=tiny_study.env(SCALEAUDIT_MIRROR=str(tiny_mirror)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    resolved = read_json(out)["settings"]
    assert resolved["data.mirror"] == {"value": str(tiny_mirror), "source": "$SCALEAUDIT_MIRROR", "env": "SCALEAUDIT_MIRROR"}
    assert resolved["tracking.uri"]["source"] == "config" and resolved["tracking.uri"]["value"] == "sqlite:///x.db"
    assert resolved["weights.dir"] == {"value": None, "source": "default", "env": "SCALEAUDIT_WEIGHTS_DIR"}
    params = settings.as_params(resolved)
    assert params["setting.data.mirror.source"] == "$SCALEAUDIT_MIRROR" and params["setting.weights.dir"] == "(default)"


def test_fetch_data_records_where_its_mirror_came_from(tmp_path, tiny_mirror):
    out = tmp_path / "breastmnist_28.npz"
    proc = subprocess.run([*tiny_study.scaleaudit_cli(), "fetch-data", "--dataset", "breastmnist", "--out", str(out)],
                          env=tiny_study.env(SCALEAUDIT_MIRROR=str(tiny_mirror)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert read_json(out.with_suffix(".json"))["settings"]["data.mirror"]["source"] == "$SCALEAUDIT_MIRROR"
