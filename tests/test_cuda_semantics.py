"""The CUDA path read against PyTorch's semantics, simulated on the CPU: checkpoints resume whatever device
their tensors were mapped to, the determinism policy, and the refusal of a GPU run without a GPU."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import tiny_study
import torch
import torch.nn.functional as F
from mirror import REPO
from torch.utils._python_dispatch import TorchDispatchMode

from scaleaudit import config, job, modelnames, models, runtime, train
from scaleaudit.errors import ScaleauditError

# ATen ops that raise under use_deterministic_algorithms(True) on CUDA (torch's list of ops without a
# deterministic CUDA kernel; their CPU kernels run silently, so a CPU trace is the only check here).
NONDETERMINISTIC_ON_CUDA = {
    "aten.adaptive_avg_pool2d_backward",
    "aten._adaptive_avg_pool2d_backward",
    "aten.adaptive_avg_pool3d_backward",
    "aten.avg_pool3d_backward",
    "aten.adaptive_max_pool2d_backward",
    "aten.fractional_max_pool2d_backward",
    "aten.max_unpool2d",
    "aten.upsample_bilinear2d_backward",
    "aten.upsample_bicubic2d_backward",
    "aten.upsample_linear1d_backward",
    "aten.reflection_pad2d_backward",
    "aten.nll_loss2d_forward",
    "aten.histc",
    "aten.bincount",
    "aten.median",
    "aten.grid_sampler_2d_backward",
    "aten.put_",
    "aten.kthvalue",
    "aten._ctc_loss_backward",
    "aten.embedding_bag",
}


@pytest.fixture
def tiny_data(tiny_mirror, tmp_path):
    return tiny_study.fetch(tiny_mirror, tmp_path / "data")


@pytest.fixture
def torch_policy(monkeypatch):
    """Leave torch's global determinism switches as they were."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    state = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(state[0], warn_only=state[1])
    torch.backends.cudnn.benchmark = benchmark


def test_checkpoint_resumes_whatever_device_its_tensors_were_mapped_to(tiny_data, tmp_path, torch_policy):
    """On CUDA, loading with map_location=<the GPU> moved the CPU generator's state there and set_state refused it.

    Here the trainer's device is the meta device: a checkpoint mapped to it holds no readable tensors,
    as a CPU RNG state moved to a GPU is unusable for the CPU generator.
    """
    spec = tiny_study.spec(epochs=2)
    runtime.configure_torch(spec.seed, 1)
    straight = train.Trainer(spec, tiny_data["file"], None, torch.device("cpu"), log=lambda m: None)
    straight.fit(tmp_path / "straight.pt")

    first = train.Trainer(spec, tiny_data["file"], None, torch.device("cpu"), log=lambda m: None)
    spec1 = dataclasses.replace(spec, recipe=dict(spec.recipe, epochs=1))  # the same run, stopped after 1
    first.spec = spec1
    first.fit(tmp_path / "ckpt.pt")
    resumed = train.Trainer(spec, tiny_data["file"], None, torch.device("cpu"), log=lambda m: None)
    resumed.device = torch.device("meta")
    assert resumed.load(tmp_path / "ckpt.pt")
    resumed.device = torch.device("cpu")
    assert torch.equal(resumed.generator.get_state(), first.generator.get_state())
    resumed.fit(tmp_path / "ckpt.pt")
    drop = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert drop(resumed.state["history"]) == drop(straight.state["history"])


def test_deterministic_policy_raises_instead_of_warning_and_sets_the_cublas_workspace(torch_policy):
    import os

    runtime.configure_torch(0, None, "deterministic")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == runtime.CUBLAS_WORKSPACE
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # warn_only warns on every cuBLAS call
    assert not torch.backends.cudnn.benchmark

    runtime.configure_torch(0, None, "fast")
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark


def test_a_foreign_cublas_workspace_is_refused(torch_policy, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    with pytest.raises(ScaleauditError, match="CUBLAS_WORKSPACE_CONFIG"):
        runtime.configure_torch(0, None, "deterministic")


def test_training_steps_warn_nothing(tiny_data, tmp_path, torch_policy):
    spec = tiny_study.spec(epochs=2)
    runtime.configure_torch(spec.seed, 1, spec.hardware["determinism"])
    trainer = train.Trainer(spec, tiny_data["file"], None, torch.device("cpu"), log=lambda m: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(tmp_path / "ckpt.pt")
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("arm", ["cnn_small", "resnet18_scratch", "vit_s16_scratch", "resnet18_pretrained"])
def test_training_step_of_every_arm_has_deterministic_cuda_kernels(arm):
    """Under the deterministic policy an op without a deterministic CUDA kernel would fail the GPU run."""

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    cfg = config.load(REPO / "config" / "config.yaml")
    spec = dict(cfg["arms"][arm], pretrained=False)  # the architecture; weights do not change the ops
    size = 32 if models.is_transformer(modelnames.split_name(spec["model"])[0]) else (spec["input_size"] or 28)
    model = models.build(spec, 3, 3, size)
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 2])
    with Ops() as ops, torch.autocast("cpu", dtype=torch.bfloat16):
        F.cross_entropy(model(x), y).backward()
    assert ops.seen and not ops.seen & NONDETERMINISTIC_ON_CUDA


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_arm_that_books_a_gpu_fails_at_once_with_the_reason(tiny_data, tmp_path):
    raw = copy.deepcopy(tiny_study.TINY_CONFIG) | {"hardware": {"device": "auto"}}
    raw["arms"]["cnn_a"]["resources"] = {"gpu": 1}
    cfg = config.validate(raw)
    spec = config.run_spec(cfg, "breastmnist", 28, "cnn_a", 1.0, 1)
    assert spec.device == "cuda"
    with pytest.raises(ScaleauditError) as err:
        job.run(spec, tiny_data, tmp_path / "run", None, None, threads=1)
    assert f"CUDA {torch.version.cuda}" in str(err.value) or "CPU-only" in str(err.value)
    assert "hardware.device: cpu" in str(err.value)
    assert not (tmp_path / "run" / train.CHECKPOINT).exists()


def test_device_request_follows_the_gpu_booking_and_the_test_config_trains_on_cpu():
    full = config.load(REPO / "config" / "config.yaml")
    assert config.run_spec(full, "breastmnist", 28, "resnet18_scratch", 1.0, 1).device == "cuda"
    assert config.run_spec(full, "breastmnist", 28, "cnn_small", 1.0, 1).device == "cpu"
    # The Slurm test's cluster declares a GPU that is not real: its GPU arm books it and trains on the CPU.
    test = config.load(REPO / "config" / "config.yaml", REPO / "config" / "test.yaml")
    assert test["arms"]["cnn_gpu"]["resources"]["gpu"] == 1
    assert {config.run_spec(test, "breastmnist", 28, a, 1.0, 1).device for a in test["design"]["arms"]} == {"cpu"}
    demo = config.load(REPO / "config" / "config.yaml", REPO / "config" / "demo.yaml")
    assert {config.run_spec(demo, "breastmnist", 28, a, 1.0, 1).device for a in demo["design"]["arms"]} == {"cpu"}


# -- checkpoints sized to the model ------------------------------------------------------------------


def test_linear_probe_checkpoints_hold_no_frozen_weights_and_resume_exactly(tiny_data, tmp_path, torch_policy):
    spec = tiny_study.spec(arm="cnn_b", epochs=2)  # cnn_b: a linear probe
    runtime.configure_torch(spec.seed, 1)
    straight = train.Trainer(spec, tiny_data["file"], None, torch.device("cpu"), log=lambda m: None)
    straight.fit(tmp_path / "straight.pt")
    frozen = {n for n, p in straight.model.named_parameters() if not p.requires_grad}
    saved = torch.load(tmp_path / "straight.pt", weights_only=True)
    assert frozen and not frozen & set(saved["model"]) and not frozen & set(straight.state["best_state"])
    assert set(saved["model"]) >= {n for n, p in straight.model.named_parameters() if p.requires_grad}

    first = train.Trainer(spec, tiny_data["file"], None, torch.device("cpu"), log=lambda m: None)
    first.spec = dataclasses.replace(spec, recipe=dict(spec.recipe, epochs=1))
    first.fit(tmp_path / "ckpt.pt")
    resumed = train.Trainer(spec, tiny_data["file"], None, torch.device("cpu"), log=lambda m: None)
    assert resumed.load(tmp_path / "ckpt.pt")
    resumed.fit(tmp_path / "ckpt.pt")
    assert resumed.test()[1] == straight.test()[1]


def test_checkpoint_interval_grows_with_the_time_a_save_takes(tiny_data, tmp_path, monkeypatch):
    """Epochs of 10 s on a fake clock, saves of 2 s: at most 2 % of the time saving means every 100 s."""
    clock = [0.0]
    fake_time = type(
        "FakeTime", (), {"monotonic": staticmethod(lambda: clock[0]), "perf_counter": staticmethod(lambda: clock[0])}
    )
    monkeypatch.setattr(train, "time", fake_time)
    spec = tiny_study.spec(epochs=25)
    trainer = train.Trainer(spec, tiny_data["file"], None, torch.device("cpu"), log=lambda m: None)
    saves = []

    def save(path):
        clock[0] += 2.0
        saves.append(trainer.state["epoch"])

    monkeypatch.setattr(trainer, "save", save)
    monkeypatch.setattr(trainer, "train_epoch", lambda: clock.__setitem__(0, clock[0] + 10.0) or 0.5)
    trainer.fit(tmp_path / "ckpt.pt", checkpoint_every_s=30.0)
    assert saves == [1, 11, 21, 25]  # first, every 100 s of training (not every 30 s), last
    saves.clear()
    trainer.state |= {"epoch": 0, "history": [], "stopped_early": False}
    trainer.fit(tmp_path / "ckpt.pt", checkpoint_every_s=0)
    assert saves == list(range(1, 26))  # 0: every epoch


@pytest.mark.parametrize("switch, mode", [("none", None), ("compile", "default"), ("cudagraphs", "reduce-overhead")])
def test_compile_switch_wraps_the_forward_pass(tiny_data, monkeypatch, switch, mode):
    """Compiling takes minutes on a CPU: here torch.compile is recorded and replaced by the eager module."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda module, mode=None: calls.append(mode or "default") or module)
    raw = copy.deepcopy(tiny_study.TINY_CONFIG)
    raw["hardware"]["compile"] = switch
    spec = config.run_spec(config.validate(raw), "breastmnist", 28, "cnn_a", 1.0, 1)
    trainer = train.Trainer(spec, tiny_data["file"], None, torch.device("cpu"), log=lambda m: None)
    assert calls == ([mode] if mode else []) and trainer.net is trainer.model
    assert config.validate(copy.deepcopy(tiny_study.TINY_CONFIG))["hardware"]["compile"] == "none"  # off by default
