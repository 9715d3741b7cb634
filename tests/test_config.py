import copy
import subprocess
import sys

import pytest
import tiny_study
import yaml
from mirror import REPO

from scaleaudit import config, design
from scaleaudit.errors import ScaleauditError

FULL, DEMO = REPO / "config" / "config.yaml", REPO / "config" / "demo.yaml"


def test_shipped_configs_are_valid():
    full = config.load(FULL)
    assert len(full["design"]["arms"]) >= 7 and design.seeds(full) == [1, 2, 3, 4, 5]
    demo = config.load(FULL, DEMO)
    assert demo["study"] == "demo" and len(list(design.runs(demo))) == 12
    assert demo["recipes"]["demo_v2"]["scheduler"] == "multistep"
    assert demo["arms"]["cnn_small"]["input_size"] is None  # schema defaults filled in


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"design": {"arms": ["cnn_small"], "seeds": 1, "fractoins": [0.5]}}))
    with pytest.raises(ScaleauditError, match="'fractoins' was unexpected") as err:
        config.load(FULL, bad)
    assert "at design" in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ({"design": {"seeds": 0}}, "design/seeds"),
        ({"design": {"seeds": -2}}, "design/seeds"),
        ({"design": {"fractions": [0.0]}}, "design/fractions/0"),
        ({"design": {"fractions": [1.2]}}, "design/fractions/0"),
        ({"data": {"datasets": [{"flag": "breastmnist", "sizes": [32]}]}}, "data/datasets/0/sizes/0"),
        ({"data": {"datasets": [{"flag": "nosuchmnist"}]}}, "unknown dataset flag 'nosuchmnist'"),
        ({"design": {"arms": ["cnn_smal"]}}, "unknown arm 'cnn_smal'"),
        ({"arms": {"cnn_small": {"recipe": "nope"}}}, "unknown recipe 'nope'"),
        ({"arms": {"cnn_small": {"model": "resnet19"}}}, "unknown model 'resnet19'"),
    ],
)
def test_bad_values_are_rejected_with_their_place(override, message):
    with pytest.raises(ScaleauditError, match=message):
        config.load(FULL, DEMO, overrides=override)


def test_run_spec_hash_identifies_the_configuration():
    cfg = config.load(FULL, DEMO)
    a = config.run_spec(cfg, "breastmnist", 28, "cnn_small", 1.0, 1)
    assert a == config.run_spec(cfg, "breastmnist", 28, "cnn_small", 1.0, 1)
    assert a.config_hash != config.run_spec(cfg, "breastmnist", 28, "cnn_small", 1.0, 2).config_hash
    cfg["arms"]["cnn_small"] |= {"label": "renamed", "resources": {"mem_mb": 999}}
    assert a == config.run_spec(cfg, "breastmnist", 28, "cnn_small", 1.0, 1)  # no re-training for these
    cfg["recipes"]["demo_v2"]["lr"] = 0.1
    assert a.config_hash != config.run_spec(cfg, "breastmnist", 28, "cnn_small", 1.0, 1).config_hash


def test_the_workflow_reads_its_config_without_torch_and_a_cluster_job_skips_the_registry():
    # Every Snakefile parse (each cluster job parses it again) imports these; timm and torch cost ~10 s a parse.
    code = (
        "import sys; from scaleaudit import config, design, devices, settings, tracking; "
        "print(sorted(m for m in ('torch', 'timm', 'pandas', 'scipy') if m in sys.modules))"
    )
    env = {"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
    raw = copy.deepcopy(tiny_study.TINY_CONFIG)
    raw["arms"]["cnn_a"]["model"] = "no_such_model"
    assert config.validate(raw, registry=False)["arms"]["cnn_a"]["model"] == "no_such_model"
    with pytest.raises(ScaleauditError, match="unknown model 'no_such_model'"):
        config.validate(raw)
