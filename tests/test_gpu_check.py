"""`make gpu-check` and the benchmark's device data: what can be checked without a GPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import tiny_study
import torch
from mirror import REPO

from scaleaudit import devices

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA L40", 181e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA A100-SXM4-40GB", 312e12),
        ("NVIDIA H100", None),
        ("NVIDIA GeForce GTX 1080", None),  # not a full data-sheet name: no guess
    ],
)
def test_bf16_peak_is_looked_up_by_the_full_device_name(name, peak):
    assert devices.bf16_peak(name) == peak


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_check_without_cuda_says_so_and_exits_0():
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")],
        env=tiny_study.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA on this machine" in done.stdout and f"CUDA {torch.version.cuda}" in done.stdout


def test_resume_check_finds_sigterm_and_resume_equal_to_an_uninterrupted_run(tmp_path):
    """The gpu-check's resume path, on the CPU: the same code runs on CUDA there."""
    from scaleaudit import synthetic

    data = synthetic.write_npz(tmp_path / "breastmnist.npz", splits=synthetic.small_splits(2000))
    label, result, ok = gpu_check.resume_check(
        "cpu", data, tmp_path, model="scaleaudit_cnn_small", epochs=3, stop_after=1
    )
    assert ok, result
    assert "equals the uninterrupted one exactly" in result
