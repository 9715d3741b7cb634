"""`make gpu-check` and the benchmark's device data: what can be checked without a GPU."""

from __future__ import annotations

import json
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
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cuda"],
        env=tiny_study.env(),
        capture_output=True,
        text=True,
        timeout=360,
    )
    assert done.returncode == 0, done.stderr
    assert "no CUDA on this machine" in done.stdout and f"CUDA {torch.version.cuda}" in done.stdout


BARE_IMAGE = """import sys

for name in ("jsonschema", "codecarbon", "mlflow", "snakemake"):
    sys.modules[name] = None  # as if not installed
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run; on CUDA it is the full check")
def test_gpu_check_runs_on_a_bare_image_and_prints_its_table_on_the_cpu(tmp_path):
    """A CUDA image's python3 with PYTHONPATH=src: no jsonschema, codecarbon, mlflow or snakemake (here: hidden from
    this process and every one it starts). Without CUDA every check runs on the CPU and the table is printed, the
    resume check's rows included."""
    (tmp_path / "sitecustomize.py").write_text(BARE_IMAGE)
    env = tiny_study.env() | {"PYTHONPATH": f"{tmp_path}:{REPO / 'src'}"}
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "gpu_check.py"),
            "--no-bench",
            "--out",
            str(tmp_path / "check.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=2700,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    table = done.stdout[done.stdout.index("\ngpu-check\n") :]
    for row in ("versions", "every arm", "bitwise equal", "SIGTERM", "kNN search"):
        assert row in table
    assert "energy not measured: no codecarbon" in table and "FAIL" not in table
    # the resume path (the same code runs on CUDA): two runs bitwise equal, then SIGTERM after epoch 1 and resume
    assert "equal over 3 epochs" in table and "equals the uninterrupted one exactly" in table
    figures = json.loads((tmp_path / "check.json").read_text())  # for scaleaudit plan --gpu-check
    assert figures["device"] == devices.current("cpu")["name"] and figures["knn_flops_per_s"] > 0


def test_shared_throughput_counts_only_runs_that_shared_one_window():
    """Two runs of 1000 images/s one after the other are 1000 images/s in all, not 2000: per-process rates summed
    over windows that never overlap would report a sharing gain that never happened."""
    import bench_train

    together = [{"start": 0.0, "end": 10.0, "images": 10_000}, {"start": 0.0, "end": 10.2, "images": 10_000}]
    assert bench_train.aggregate_rate(together) == pytest.approx(20_000 / 10.2)
    one_after_the_other = [
        {"start": 0.0, "end": 10.0, "images": 10_000},
        {"start": 10.0, "end": 20.0, "images": 10_000},
    ]
    with pytest.raises(ValueError, match="barrier"):
        bench_train.aggregate_rate(one_after_the_other)


@pytest.mark.slow
def test_shared_runs_start_behind_a_barrier_and_share_the_window(tmp_path, monkeypatch):
    """Two step-timing processes on the CPU: both warm up, start at the time the parent sends, train until the same
    end, and the aggregate is their images over that one window."""
    import argparse

    import bench_train

    from scaleaudit import synthetic

    data = synthetic.write_npz(tmp_path / "breastmnist.npz")  # BreastMNIST's split lengths
    seen = []
    real = bench_train.aggregate_rate
    monkeypatch.setattr(bench_train, "aggregate_rate", lambda results: seen.append(results) or real(results))
    args = argparse.Namespace(
        batch_size=16, threads=1, seed=0, device="cpu", determinism="deterministic", precision="fp32", warmup=1
    )
    rate = bench_train.run_shared(args, 2, 1.0, dataset="breastmnist", data=str(data), model="scaleaudit_cnn_small")
    (results,) = seen
    assert len(results) == 2 and results[0]["start"] == results[1]["start"]
    assert all(r["images"] > 0 and r["end"] >= r["start"] + 1.0 for r in results)
    assert rate == pytest.approx(
        sum(r["images"] for r in results) / (max(r["end"] for r in results) - results[0]["start"])
    )


def test_the_check_writes_its_knn_rate_and_vit_shares_for_the_plan(tmp_path):
    """knn_row's measured FLOP/s and the ViT shares go into the figures JSON that scaleaudit plan --gpu-check reads."""
    from scaleaudit import files, plan

    figures = {"device": devices.current("cpu")["name"]}
    label, result, ok = gpu_check.knn_row("cpu", 2000, 100, figures)
    assert ok and figures["knn_flops_per_s"] > 0
    gpu_check.write_figures(tmp_path / "check.json", figures)
    written = files.read_json(tmp_path / "check.json")
    assert written["knn_flops_per_s"] == figures["knn_flops_per_s"] and plan.gpu_check_shares(written) == {}
    written["vit"] = [{"model": "vit_small_patch16_224", "share_of_peak": 0.25}, {"model": "x", "share_of_peak": None}]
    assert plan.gpu_check_shares(written) == {"vit_small_patch16_224": 0.25}
