"""A tiny study for the reliability tests: the synthetic mirror, two small CNN arms, 3 short epochs on CPU."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import yaml
from mirror import REPO

TINY_CONFIG = {
    "study": "tiny",
    "data": {"datasets": [{"flag": "breastmnist", "sizes": [28]}]},
    "design": {"arms": ["cnn_a", "cnn_b"], "fractions": [1.0], "seeds": 2},
    "hardware": {"device": "cpu"},
    "shift": {"enabled": False},  # the shift steps run in the catalog study (test_deploy), once
    "recipes": {"tiny": {"optimizer": "adam", "lr": 1.0e-3, "batch_size": 16, "epochs": 3}},
    "arms": {
        "cnn_a": {"model": "scaleaudit_cnn_small", "recipe": "tiny", "group": "small"},
        "cnn_b": {"model": "scaleaudit_cnn_small", "recipe": "tiny", "group": "small", "train": "linear_probe"},
    },
}


def spec(seed: int = 1, arm: str = "cnn_a", **recipe) -> dict:
    """The resolved run spec of one tiny run (recipe keys override the tiny recipe)."""
    from scaleaudit import config

    raw = yaml.safe_load(yaml.safe_dump(TINY_CONFIG))
    raw["recipes"]["tiny"] |= recipe
    cfg = config.validate(raw)
    return config.run_spec(cfg, "breastmnist", 28, arm, 1.0, seed)


def fetch(mirror: Path, dest_dir: Path) -> dict:
    """The tiny dataset fetched from ``mirror`` into ``dest_dir``, with its provenance record."""
    from scaleaudit import data
    from scaleaudit.files import write_json

    out = dest_dir / "breastmnist_28.npz"
    record = data.fetch("breastmnist", 28, out, mirror)
    write_json(out.with_suffix(".json"), record)
    return record


def env(**extra: str) -> dict:
    """Environment for subprocesses: this checkout's code and CLI first, offline, no inherited tracking URI."""
    e = dict(os.environ)
    e.pop("MLFLOW_TRACKING_URI", None)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), e.get("PYTHONPATH")]))
    e["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), e.get("PATH", "")])
    # copied workflows find the checkout's corruption environment (make medmnistc-env) through the setting's variable
    e["SCALEAUDIT_MEDMNISTC_PYTHON"] = str(REPO / ".venv-medmnistc" / "bin" / "python")
    e |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"} | extra
    return e


def scaleaudit_cli() -> list[str]:
    return [sys.executable, "-m", "scaleaudit"]


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow (Snakefile, workflow/, config/, envs/) to run studies in a scratch folder."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "Snakefile", dest)
    shutil.copytree(REPO / "workflow", dest / "workflow")  # the schema symlink becomes a file
    shutil.copytree(REPO / "config", dest / "config")
    shutil.copytree(REPO / "envs", dest / "envs")  # rules name their conda env; Snakemake records it
    return dest
