"""Accelerator data sheets: dense bf16 peak and board power, keyed by the exact name CUDA reports; a GPU's slots; the
GPU and share of peak a plan assumes where it cannot measure.

Names are matched whole, never by substring: "NVIDIA H100 NVL" is not an H100 SXM, "NVIDIA L40" is not
an L4. A device that is not listed has no peak (a share of peak is then not printed) rather than a guess.
"""

from __future__ import annotations

# A GPU is GPU_SLOTS slots (the workflow's `gpu_slots` resource counts them): a job that has a GPU to itself takes
# them all, one of n jobs sharing a GPU (resources.runs_per_gpu) takes GPU_SLOTS / n (runtime.claim_gpu).
GPU_SLOTS = 8

# (dense bf16 tensor-core FLOP/s without sparsity, board power in W), from NVIDIA's data sheets.
DATASHEET: dict[str, tuple[float, float]] = {
    "NVIDIA H100 80GB HBM3": (989e12, 700),  # H100 SXM5
    "NVIDIA H100 PCIe": (756e12, 350),
    "NVIDIA H100 NVL": (835e12, 400),
    "NVIDIA H200": (989e12, 700),  # H200 SXM
    "NVIDIA H200 NVL": (835e12, 600),
    "NVIDIA GH200 480GB": (989e12, 900),  # module power (CPU + GPU + memory): an upper bound
    "NVIDIA A100-SXM4-80GB": (312e12, 400),
    "NVIDIA A100-SXM4-40GB": (312e12, 400),
    "NVIDIA A100 80GB PCIe": (312e12, 300),
    "NVIDIA A100-PCIE-40GB": (312e12, 250),
    "NVIDIA L40S": (362e12, 350),
    "NVIDIA L40": (181e12, 300),
    "NVIDIA L4": (121e12, 72),
    "NVIDIA A10": (125e12, 150),
    "NVIDIA A30": (165e12, 165),
    "NVIDIA RTX 6000 Ada Generation": (364e12, 300),
    "NVIDIA RTX A6000": (155e12, 300),
}
# What `scaleaudit plan` assumes for a GPU it cannot measure: the device, and the share of its bf16 peak a run
# reaches (replaced by a GPU check's measured shares, `plan --gpu-check`).
DEFAULT_GPU = "NVIDIA H100 80GB HBM3"
DEFAULT_UTILIZATION = 0.35
# Where no data sheet applies (a CPU): an assumed draw per busy core, for estimates only.
CPU_WATTS_PER_THREAD = 10.0


def bf16_peak(name: str) -> float | None:
    """Dense bf16 peak FLOP/s of the device CUDA calls ``name``; None when it is not in the table."""
    entry = DATASHEET.get(name.strip())
    return entry[0] if entry else None


def board_power(name: str) -> float | None:
    entry = DATASHEET.get(name.strip())
    return entry[1] if entry else None


def current(device: str = "auto") -> dict:
    """The device this process would train on: its kind, the name CUDA or the CPU reports, peak and power."""
    import platform
    from pathlib import Path

    import torch

    if device != "cpu" and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return {"type": "cuda", "name": name, "bf16_peak": bf16_peak(name), "watts": board_power(name)}
    name = platform.processor() or platform.machine()
    try:
        name = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {"type": "cpu", "name": name, "bf16_peak": None, "watts": CPU_WATTS_PER_THREAD * torch.get_num_threads()}
