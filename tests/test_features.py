"""A linear probe on cached frozen-backbone features: computed once, shared by seeds and fractions, and
equal in its results to the end-to-end frozen path."""

from __future__ import annotations

import copy

import pytest
import tiny_study
import torch

from scaleaudit import config, features, runtime, train

PROBE = {"model": "vit_tiny_patch16_224", "input_size": 32, "recipe": "tiny", "group": "large", "train": "linear_probe"}


@pytest.fixture
def tiny_data(tiny_mirror, tmp_path):
    return tiny_study.fetch(tiny_mirror, tmp_path / "data")


CPU = torch.device("cpu")


def probe_spec(seed=1, fraction=1.0, **recipe):
    raw = copy.deepcopy(tiny_study.TINY_CONFIG)
    raw["arms"]["probe"] = PROBE
    raw["design"]["arms"] = ["probe"]
    raw["hardware"]["precision"] = "fp32"
    raw["recipes"]["tiny"] |= recipe
    return config.run_spec(config.validate(raw), "breastmnist", 28, "probe", fraction, seed)


def run(spec, data_file, tmp_path, log=lambda m: None):
    runtime.configure_torch(spec.seed, 1)
    trainer = train.Trainer(spec, data_file, None, torch.device("cpu"), log=log)
    trainer.fit(tmp_path / f"ckpt-{spec.seed}-{spec.fraction}.pt")
    return trainer, trainer.test()


def test_cached_probe_equals_the_end_to_end_frozen_path(tiny_data, tmp_path, monkeypatch):
    spec = probe_spec(epochs=3)
    assert features.usable(spec)
    cached, (val, test, probs) = run(spec, tiny_data["file"], tmp_path)
    assert cached.cached_features and cached.tensors["train"][0].dtype == torch.float32

    monkeypatch.setattr(features, "usable", lambda spec: False)
    end_to_end, (val2, test2, probs2) = run(spec, tiny_data["file"], tmp_path / "e2e")
    assert not end_to_end.cached_features
    assert test == pytest.approx(test2, abs=1e-6) and val == pytest.approx(val2, abs=1e-6)
    assert torch.allclose(torch.from_numpy(probs), torch.from_numpy(probs2), atol=1e-5)
    assert [r["train_loss"] for r in cached.state["history"]] == pytest.approx(
        [r["train_loss"] for r in end_to_end.state["history"]], rel=1e-5
    )


def test_features_are_computed_once_and_shared_by_seeds_and_fractions(tiny_data, tmp_path, monkeypatch):
    computed = []
    real = features.compute
    monkeypatch.setattr(features, "compute", lambda *a, **k: computed.append(1) or real(*a, **k))
    logs = []
    run(probe_spec(seed=1, epochs=1), tiny_data["file"], tmp_path, log=logs.append)
    assert len(computed) == 3  # train, val, test
    # another fraction: same pretrained-free backbone only for the same seed (its init is the seed's)
    run(probe_spec(seed=1, fraction=0.5, epochs=1), tiny_data["file"], tmp_path, log=logs.append)
    assert len(computed) == 3 and any("features from" in line for line in logs)
    run(probe_spec(seed=2, epochs=1), tiny_data["file"], tmp_path, log=logs.append)
    assert len(computed) == 6  # a randomly initialised backbone differs per seed


def test_pretrained_backbone_features_do_not_depend_on_the_seed(tiny_data):
    spec = probe_spec()
    spec = spec.with_changes(arm_spec=dict(spec.arm_spec, pretrained=True))
    weights = {"sha256": "ab" * 32}
    keys = {
        features.key(spec.with_changes(seed=s, fraction=f), tiny_data["file"], weights, 32, "fp32", CPU)
        for s in (1, 2)
        for f in (0.1, 1.0)
    }
    assert len(keys) == 1
    assert features.key(spec, tiny_data["file"], {"sha256": "cd" * 32}, 32, "fp32", CPU) not in keys


def test_features_are_keyed_by_the_device_and_the_libraries_that_computed_them(tiny_data, monkeypatch):
    """Another GPU model, cuDNN, timm or torch computes other last bits: the first node's features must not serve
    all (the shift step's re-check of clean test scores would fail on them)."""
    import torch

    from scaleaudit import provenance

    gpu = {"name": "NVIDIA H100 80GB HBM3", "cudnn": 91002, "timm": "1.0.20"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu["name"])
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: gpu["cudnn"])
    real_version = provenance.metadata.version
    monkeypatch.setattr(
        provenance.metadata, "version", lambda name: gpu["timm"] if name == "timm" else real_version(name)
    )
    spec = probe_spec()

    def key(device="cuda:0"):
        return features.key(spec, tiny_data["file"], None, 32, "bf16", torch.device(device))

    first = key()
    assert key() == first and key("cpu") != first
    for field, other in (("name", "NVIDIA A100-SXM4-80GB"), ("cudnn", 90100), ("timm", "1.0.21")):
        before, gpu[field] = gpu[field], other
        assert key() != first, field
        gpu[field] = before
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    assert key() != first


def test_augmented_probe_keeps_the_end_to_end_path():
    assert not features.usable(probe_spec(augment="flip"))
