"""What a result was made with: code commit, package versions, hardware."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path

PACKAGES = ("scaleaudit", "torch", "torchvision", "timm", "numpy", "scikit-learn", "mlflow", "codecarbon", "snakemake")


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


@cache
def code_version() -> dict:
    """Commit of the scaleaudit checkout and whether it had uncommitted changes ('unknown' outside git)."""
    here = Path(__file__).resolve().parent
    try:
        commit = _git("rev-parse", "HEAD", cwd=here)
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=here))
    except (OSError, subprocess.SubprocessError):
        return {"commit": os.environ.get("SCALEAUDIT_COMMIT", "unknown"), "dirty": None}
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def hardware() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(), "cpu": _cpu_model()}
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda, "gpus": torch.cuda.device_count()}
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def numerics(device) -> dict:
    """What decides a torch device's floating-point results bit for bit: its kind and model and the libraries that
    pick and run its kernels (cuBLAS ships inside torch's CUDA build, so torch's and CUDA's versions name it; the
    driver only loads the kernels)."""
    import torch

    cuda = device.type == "cuda"
    return {
        "device": device.type,
        "model": torch.cuda.get_device_name(device) if cuda else _cpu_model(),
        "torch": torch.__version__,
        "timm": metadata.version("timm"),
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
    }


def record() -> dict:
    """Everything above, for a metrics or provenance file."""
    return {"code": code_version(), "versions": package_versions(), "hardware": hardware()}
