"""Torch's runtime for a job: threads, seed and determinism, the device (never a silent fallback to the CPU), bf16
precision, and images on the device."""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import sharing
from .devices import GPU_SLOTS
from .errors import ScaleauditError

CUBLAS_WORKSPACE = ":4096:8"  # a fixed cuBLAS workspace: required for deterministic cuBLAS results
_claimed: list = []  # the slot locks this process holds, until it ends


def configure_torch(seed: int, threads: int | None, determinism: str = "deterministic") -> None:
    """Threads, seed and the determinism policy (``hardware.determinism``); call before any CUDA work.

    ``deterministic``: a seed gives the same result on the same hardware and software, on the CPU and
    on CUDA. Ops without a deterministic kernel raise instead of warning on every call, and cuBLAS gets
    the fixed workspace it needs (CUBLAS_WORKSPACE_CONFIG, read when its first handle is created).
    ``fast``: cuDNN benchmarks and picks the fastest kernels; results vary from run to run.
    """
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if determinism == "deterministic":
        workspace = os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
        if workspace not in (":4096:8", ":16:8"):
            raise ScaleauditError(
                f"CUBLAS_WORKSPACE_CONFIG={workspace!r} makes cuBLAS non-deterministic",
                "unset it (or use :4096:8 or :16:8), or set hardware.determinism: fast",
            )
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True
    # Filling each new tensor with NaN only helps to find reads of uninitialised memory (~4% of a CPU step).
    torch.utils.deterministic.fill_uninitialized_memory = False


def cuda_diagnosis() -> str:
    """Why CUDA is not usable here, in torch's own words (driver and CUDA versions), for a refusal message."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (no CUDA support compiled in)"
    try:
        torch.cuda.init()
        reason = "no CUDA device is visible"
    except Exception as exc:
        reason = str(exc).splitlines()[0]
    return (
        f"torch {torch.__version__} is built for CUDA {torch.version.cuda}; {reason}; "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}"
    )


def pick_device(requested: str, runs_per_gpu: int = 1) -> torch.device:
    """``cpu``; ``cuda``, which fails at once with the reason when CUDA is not usable; ``auto``: cuda when visible.
    On CUDA, the GPU this job claims (``claim_gpu``), made the current device, shared as ``sharing.join`` sets up.

    A run that asks for a GPU must not fall back to the CPU: it would run for hours on one thread and
    time out on every retry instead of failing with the reason.
    """
    if requested == "cpu":
        return torch.device("cpu")
    # NVML's count, before CUDA initialises: a client of a shared GPU's MPS daemon must be set up first (sharing.join)
    count = torch.cuda.device_count()
    if count:
        index = claim_gpu(runs_per_gpu)
        sharing.join(runs_per_gpu, gpu_names(count)[index] if count > 1 else None)
        if torch.cuda.is_available():
            torch.cuda.set_device(index)
            return torch.device("cuda", index)
    if requested == "auto":
        return torch.device("cpu")
    raise ScaleauditError(
        f"this run asks for a GPU but CUDA is not usable here: {cuda_diagnosis()}",
        "run it where a GPU is visible (on Slurm: book one, e.g. resources: {gpu: 1}), install a driver that fits "
        "this CUDA version, or set hardware.device: cpu to train on the CPU on purpose",
    )


def claim_gpu(runs_per_gpu: int = 1, lock_dir: Path | None = None, poll_s: float = 5.0, log=print) -> int:
    """The index of the visible GPU this job uses: with one visible (a Slurm job sees the GPU it booked), that one;
    with several (a local node), the first with GPU_SLOTS / runs_per_gpu free slots, held by file locks until the
    process ends, so that jobs the `gpu_slots` resource lets run at once spread over the GPUs instead of all
    landing on GPU 0. Waits while none is free (slots can be free in total yet split over GPUs)."""
    count = torch.cuda.device_count()
    if count <= 1:
        return 0
    names = gpu_names(count)
    lock_dir = Path(lock_dir or Path(tempfile.gettempdir()) / f"scaleaudit-gpu-slots-{os.getuid()}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    need, waited = max(1, GPU_SLOTS // runs_per_gpu), False
    while True:
        for index, name in enumerate(names):
            held = []
            for slot in range(GPU_SLOTS):
                fh = open(lock_dir / f"gpu{name}.slot{slot}", "w")
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    fh.close()
                    continue
                held.append(fh)
                if len(held) == need:
                    _claimed.extend(held)
                    return index
            for fh in held:
                fh.close()
        if not waited:
            log(f"no GPU has {need} of {GPU_SLOTS} slots free; waiting")
            waited = True
        time.sleep(poll_s)


def gpu_names(count: int) -> list[str]:
    """The node's name of each visible GPU (CUDA_VISIBLE_DEVICES), not its index in this job."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    return visible if len(visible) == count else [str(i) for i in range(count)]


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: always on CUDA under ``auto``; on a CPU only with AMX bf16 units, where it pays
    (~2x per training step for ResNet-18 on a Xeon with AMX; without AMX bf16 is emulated and slower)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return bool(amx()) and torch.backends.mkldnn.is_available()


def on_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, C) -> uint8 (N, C, H, W) on ``device``."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
