"""One table of all runs, built from the per-run ``metrics.json`` files."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .errors import ScaleauditError
from .files import atomic_path, read_json

RUN_KEY = ["dataset", "size", "fraction", "arm", "seed"]
SPLIT_METRICS = ("auc", "acc", "bacc", "ece", "loss")
COST_COLUMNS = (
    "params", "trainable_params", "flops_per_image", "train_seconds", "device", "device_hours",
    "accelerator_hours", "peak_mem_mb", "energy_kwh", "co2e_kg", "energy_method",
)


def row(metrics: dict) -> dict:
    """Flatten one run's metrics.json into a table row (the columns that stats and the report use)."""
    prov, weights = metrics["provenance"], metrics["provenance"]["weights"]
    out = dict(metrics["run"])
    out |= {"task": metrics["task"], "n_train": metrics["n_train"], "best_epoch": metrics["best_epoch"],
            "epochs_run": metrics["epochs_run"]}
    for split in ("test", "val"):
        out |= {f"{split}_{k}": metrics[split][k] for k in SPLIT_METRICS}
    out |= {k: metrics["cost"][k] for k in COST_COLUMNS}
    out |= {
        "weights_source": weights["source"] if weights else "none (trained from scratch)",
        "weights_sha256": weights["sha256"] if weights else "",
        # Scratch arms use no published weights by design; only pretrained arms can be off-release.
        "weights_published": bool(weights["published"]) if weights else True,
        "data_sha256": prov["data"]["sha256"],
        "code_commit": prov["code"]["commit"],
        "code_dirty": prov["code"]["dirty"],
        "torch_version": prov["versions"]["torch"],
        "timm_version": prov["versions"]["timm"],
        "hardware": prov["hardware"].get("gpu") or prov["hardware"]["cpu"],
        "mlflow_run_id": (metrics.get("tracking") or {}).get("run_id", ""),
    }
    return out


def check(table: pd.DataFrame) -> None:
    """Reject a table in which a run appears twice: pairing by seed would silently count it twice."""
    dup = table[table.duplicated(RUN_KEY, keep=False)]
    if len(dup):
        keys = dup.drop_duplicates(RUN_KEY)
        listed = "; ".join(f"{r.arm} on {r.dataset} @ {r.size} px, fraction {r.fraction:g}, seed {r.seed}"
                           for r in keys.head(5).itertuples())
        raise ScaleauditError(
            f"{len(keys)} run(s) appear more than once in the run table ({len(dup)} rows): {listed}"
            + (" ..." if len(keys) > 5 else ""),
            "each (dataset, size, fraction, arm, seed) must appear once: aggregate the metrics.json of one study "
            "only (or remove the duplicated rows of runs.csv)")


def collect(paths: list[str | os.PathLike]) -> pd.DataFrame:
    table = pd.DataFrame([row(read_json(p)) for p in paths])
    check(table)
    return table.sort_values(["dataset", "size", "arm", "fraction", "seed"], ignore_index=True)


def write(table: pd.DataFrame, path: str | os.PathLike) -> None:
    with atomic_path(Path(path)) as tmp:
        table.to_csv(tmp, index=False)
