"""The cost model: what a run costs (parameters, FLOPs, time, peak memory, energy and CO2e) as measured during it,
and the estimates that the plan (``plan.py``) builds from the same terms before a study starts."""

from __future__ import annotations

import logging
import math
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import blank_forward

T = TypeVar("T")

LAUNCH_S = 8e-6  # eager PyTorch: host time per dispatched op, the floor of a launch-bound GPU step
EVAL_SHARE = 1 / 3  # an inference image costs about a third of a training image (forward only)
STARTUP_S = 20.0  # per run: process start, data to the device, model build, first kernels
# Early stopping: the epoch of the best validation score as a share of the recipe's epochs. Fine-tuning from
# pretrained weights (MedMNIST+: AdamW 1e-4, cosine) reaches its best validation loss within the first few epochs
# and overfits after; a tenth of 100 epochs plus the patience gives the 10-25 epochs such runs take. Measured stop
# epochs (the run table's epochs_run) replace this once runs exist.
TYPICAL_BEST_SHARE = 0.1
# The kNN vote's float64 distances (knn.py): GEMM FLOPs per second on a data-centre GPU (about half an H100 SXM's
# 67 TFLOP/s FP64 tensor-core peak), and on one CPU core (~0.17 us per 768-d query-support pair).
KNN_GPU_FLOPS = 30e12
KNN_CPU_FLOPS_PER_THREAD = 9e9


def train_factor(arm: dict) -> int:
    """Training FLOPs per image in forward passes: 3 (forward + backward), 1 for a frozen backbone (head only)."""
    return 1 if arm["train"] == "linear_probe" else 3


def evaluations(recipe: dict) -> int:
    """Validation passes during training: every ``eval_every`` epochs and after the last."""
    epochs, every = recipe["epochs"], recipe["eval_every"]
    return epochs // every + (epochs % every != 0)


def images_per_run(recipe: dict, n_train: int, n_val: int, n_test: int) -> tuple[int, int]:
    """(training images, inference images) of one run that runs every epoch; the final test re-evaluates val."""
    return n_train * recipe["epochs"], n_val * (evaluations(recipe) + 1) + n_test


def gpu_seconds_per_image(
    flops_per_image: float, ops_per_step: int, arm: dict, batch: int, peak: float, utilization: float, share: int
) -> dict:
    """Estimated seconds per training and per inference image on a GPU not at hand: the arithmetic at ``utilization``
    of its dense bf16 ``peak``, or the launch floor of the step's ops if that is longer (``share`` runs on one GPU
    overlap their launches, not their arithmetic)."""
    arithmetic = train_factor(arm) * flops_per_image / (peak * utilization)
    launches = ops_per_step * LAUNCH_S / batch / share
    return {
        "seconds_per_image": max(arithmetic, launches),
        "forward_seconds_per_image": flops_per_image / (peak * utilization),
        "launch_bound": launches > arithmetic,
    }


def stop_epoch(recipe: dict, measured: float | None = None) -> int:
    """Epochs a run of ``recipe`` is expected to run: all of them without early stopping; with it, the median
    ``measured`` stop epoch of such runs, else the typical best epoch (``TYPICAL_BEST_SHARE``) plus the patience
    (counted in validations, every ``eval_every`` epochs)."""
    epochs, patience = recipe["epochs"], recipe.get("early_stop_patience")
    if patience is None:
        return epochs
    if measured is not None:
        return min(epochs, math.ceil(measured))
    return min(epochs, math.ceil(TYPICAL_BEST_SHARE * epochs) + patience * recipe.get("eval_every", 1))


def inference_seconds_per_image(per_image: dict, arm: dict) -> float:
    """Seconds per evaluated image: a training image's share (``EVAL_SHARE``), all of it for a probe (whose
    per-image time is already a forward pass)."""
    return per_image["seconds_per_image"] * (1.0 if arm["train"] == "linear_probe" else EVAL_SHARE)


def knn_vote(queries: int, support: int, dim: int, flops_per_s: float) -> tuple[float, float]:
    """(FLOPs, seconds) of the kNN vote's brute-force search: every query against every support row's ``dim``
    features (a multiply-add counts 2), at ``flops_per_s``."""
    flops = 2.0 * queries * support * dim
    return flops, flops / flops_per_s


def shift_estimate(
    flops_per_image: float, seconds_per_image: float, n_test: int, sets: int, share: int
) -> tuple[float, float]:
    """(FLOPs, seconds) of one run's shift evaluation without its kNN votes: the clean test split and ``sets``
    corrupted copies of it (corruptions x severities) through the kept weights at ``seconds_per_image`` per
    evaluated image, plus the job's start-up (shared among ``share`` runs on one GPU)."""
    images = n_test * (1 + sets)
    return flops_per_image * images, seconds_per_image * images + STARTUP_S / share


def run_estimate(per_image: dict, arm: dict, recipe: dict, n_train: int, n_val: int, n_test: int, share: int):
    """(FLOPs, seconds) of one end-to-end run of ``recipe["epochs"]`` epochs (``stop_epoch``) from the per-image
    costs, start-up included (shared among ``share`` runs on one GPU)."""
    trained, inferred = images_per_run(recipe, n_train, n_val, n_test)
    flops = per_image["flops_per_image"] * (train_factor(arm) * trained + inferred)
    seconds = (
        per_image["seconds_per_image"] * trained
        + inference_seconds_per_image(per_image, arm) * inferred
        + STARTUP_S / share
    )
    return flops, seconds


def parameters(model: nn.Module) -> dict[str, int]:
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def flops_per_image(model: nn.Module, in_chans: int, input_size: int) -> int:
    """Forward FLOPs for one image, counted by torch's own flop counter (a multiply-add counts 2)."""
    with FlopCounterMode(display=False) as counter:
        blank_forward(model, in_chans, input_size)
    return int(counter.get_total_flops())


def training_flops(flops_per_image: int, images: int, epochs: int, arm: dict, cached_features: bool) -> int:
    """FLOPs of a run's training steps (the x-axis of the compute trend; validation passes not counted): the forward
    passes per training image of ``train_factor`` (3 end to end, the backward pass about two: Kaplan et al.
    2020; 1 for a linear probe's frozen backbone) in every epoch, or once per image for a probe on cached features
    (``features.usable``). A probe's head is negligible beside its backbone."""
    if cached_features:
        return flops_per_image * images
    return train_factor(arm) * flops_per_image * images * epochs


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory on CUDA, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


class EnergyMeter:
    """Wall time plus codecarbon's energy and CO2e estimate (offline: no network, fixed grid intensity).

    codecarbon starts in a background thread: its hardware probe (py-cpuinfo runs a subprocess, ~1.5 s
    on a 2-core CPU) then overlaps the first training steps instead of delaying them. The energy of that
    window is extrapolated at the mean power codecarbon measured over the rest of the run.
    """

    def __init__(self, country_iso_code: str):
        self.country = country_iso_code
        self.tracker = None
        self.started = None
        self._starting = None
        self.excluded = 0.0

    def __enter__(self) -> EnergyMeter:
        try:
            from codecarbon import OfflineEmissionsTracker
        except ImportError:  # a bare CUDA image running gpu_check.py: wall time only, energy left out with a note
            self.started = time.perf_counter()
            return self
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        self.tracker = OfflineEmissionsTracker(
            country_iso_code=self.country,
            log_level="error",
            output_methods=[],
            tracking_mode="process",
            measure_power_secs=15,
            allow_multiple_runs=True,
        )
        self.started = time.perf_counter()
        self._starting = threading.Thread(target=self.tracker.start, name="codecarbon-start", daemon=True)
        self._starting.start()
        return self

    def excluding(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` off the clock: its time (e.g. waiting for a tracking server) is not the run's, nor its energy."""
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self.excluded += time.perf_counter() - t0

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.started - self.excluded
        if self.tracker is not None:
            self._starting.join()
            self.tracker.stop()

    def result(self, gpu_share: float = 1.0) -> dict:
        """Energy and CO2e of the run; ``gpu_share``: the part of the GPU's energy that is this run's (runs
        sharing a GPU each see the whole board's power)."""
        if self.tracker is None:
            return {"energy_kwh": None, "co2e_kg": None, "energy_method": "not measured: codecarbon is not installed"}
        data = self.tracker.final_emissions_data
        scale = self.seconds / data.duration if data.duration > 0 else 1.0
        energy = float(data.energy_consumed)
        own = energy - (1 - gpu_share) * float(data.gpu_energy or 0.0)
        return {
            "energy_kwh": own * scale,
            "co2e_kg": float(data.emissions) * (own / energy if energy > 0 else 1.0) * scale,
            "energy_method": (
                f"codecarbon {data.codecarbon_version} offline, {', '.join(map(str, self.tracker._hardware))}, "
                f"grid {data.country_iso_code}"
            ),
        }
