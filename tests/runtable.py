"""Synthetic run tables (the columns ``aggregate`` writes) with known effects, for the stats and report tests."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

# arm -> (group, model, params, energy per run in kWh)
ARMS = {
    "cnn_small": ("small", "scaleaudit_cnn_small", 4e5, 1e-4),
    "resnet18_scratch": ("small", "scaleaudit_resnet18_cifar", 1.1e7, 1e-3),
    "vit_b16_pretrained": ("large", "vit_base_patch16_224", 8.6e7, 2e-2),
}


def make_runs(
    gain: dict[str, float] | None = None,
    seeds: int = 5,
    noise: float = 0.005,
    datasets=(("breastmnist", 28),),
    fractions=(1.0,),
    base: float = 0.85,
    seed: int = 0,
    published: bool = True,
    accelerator: bool = False,
) -> pd.DataFrame:
    """One row per run. Each arm scores ``base + gain[arm]`` plus a seed effect shared by all arms of a cell
    (so pairing by seed removes it) plus independent noise of sd ``noise``; validation mirrors test."""
    gain = {"cnn_small": 0.0, "resnet18_scratch": -0.02, "vit_b16_pretrained": 0.0} | (gain or {})
    rng = np.random.default_rng(seed)
    rows = []
    for dataset, size in datasets:
        for fraction in fractions:
            shared = rng.normal(0, 0.02, seeds)
            for arm, (group, model, params, kwh) in ARMS.items():
                g = gain[arm](fraction) if callable(gain[arm]) else gain[arm]
                for s in range(seeds):
                    auc = float(np.clip(base + g + shared[s] + rng.normal(0, noise), 0, 1))
                    hours = kwh * 50
                    rows.append(
                        {
                            "arm": arm,
                            "config_hash": f"{len(rows):016x}",
                            "dataset": dataset,
                            "fraction": fraction,
                            "group": group,
                            "input_size": 224 if group == "large" else size,
                            "model": model,
                            "pretrained": group == "large",
                            "recipe": "medmnist_v2" if group == "small" else "medmnist_plus",
                            "seed": s + 1,
                            "size": size,
                            "study": "synthetic",
                            "train_mode": "finetune",
                            "task": "binary",
                            "n_train": int(546 * fraction),
                            "best_epoch": 3,
                            "epochs_run": 4,
                            "diverged": False,
                            "test_auc": auc,
                            "test_acc": auc - 0.05,
                            "test_bacc": auc - 0.08,
                            "test_ece": 0.05 + 0.1 * (group == "large"),
                            "test_loss": 0.5,
                            "val_auc": auc + rng.normal(0, 0.001),
                            "val_acc": auc - 0.05,
                            "val_bacc": auc - 0.08,
                            "val_ece": 0.05,
                            "val_loss": 0.5,
                            "params": int(params),
                            "trainable_params": int(params),
                            "flops_per_image": int(params * 20),
                            "train_flops": 3 * int(params * 20) * int(546 * fraction) * 4,
                            "train_seconds": hours * 3600,
                            "device": "cuda" if accelerator else "cpu",
                            "device_hours": hours,
                            "accelerator_hours": hours if accelerator else 0.0,
                            "peak_mem_mb": 1000.0,
                            "energy_kwh": kwh,
                            "co2e_kg": kwh * 0.37,
                            "energy_method": "codecarbon (synthetic)",
                            "runs_per_gpu": 1,
                            "gpu_sharing": "exclusive",
                            "gpu_booking": "",
                            "gpu_start": np.nan,
                            "gpu_end": np.nan,
                            "weights_source": "hf-hub:timm/vit_base_patch16_224.augreg_in21k_ft_in1k"
                            if group == "large"
                            else "none (trained from scratch)",
                            "weights_sha256": "ab" * 32 if group == "large" else "",
                            "weights_published": published or group == "small",
                            "data_sha256": f"{dataset}-sha256-0123456789abcdef",
                            "code_commit": "c0ffee" * 6 + "abcd",
                            "code_dirty": False,
                            "torch_version": "2.14.1",
                            "timm_version": "1.0.31",
                            "hardware": "Synthetic CPU",
                            "mlflow_run_id": hashlib.md5(f"{arm}{dataset}{fraction}{s}".encode()).hexdigest(),
                        }
                    )
    return pd.DataFrame(rows)


RECIPE = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 0,
    "momentum": 0.9,
    "batch_size": 128,
    "epochs": 4,
    "scheduler": "multistep",
    "milestones": [0.5, 0.75],
    "gamma": 0.1,
    "resize": "nearest",
    "normalize": "half",
    "augment": "none",
    "select": "val_auc",
    "early_stop_patience": None,
    "eval_every": 1,
}


def make_config(runs: pd.DataFrame, **verdict) -> dict:
    """The resolved config (every default filled in, as validate-config writes it) that matches ``runs``."""
    arms = {}
    for arm, (group, model, _, _) in ARMS.items():
        arms[arm] = {
            "model": model,
            "pretrained": group == "large",
            "weights_tag": None,
            "weights_file": None,
            "train": "finetune",
            "input_size": 224 if group == "large" else None,
            "recipe": "medmnist_v2" if group == "small" else "medmnist_plus",
            "group": group,
            "label": arm.replace("_", " ").title(),
            "reproduces": None,
            "resources": {},
        }
    arms["resnet18_scratch"]["reproduces"] = "medmnist_v2/resnet18_28"
    datasets = runs.drop_duplicates("dataset")
    return {
        "study": "synthetic",
        "title": "Do large pretrained models pay off on synthetic tasks?",
        "data": {
            "mirror": None,
            "datasets": [{"flag": d, "sizes": [int(s)]} for d, s in zip(datasets["dataset"], datasets["size"])],
        },
        "design": {
            "arms": list(ARMS),
            "fractions": sorted(runs["fraction"].unique().tolist()),
            "seeds": int(runs["seed"].max()),
        },
        "verdict": {"metric": "auc", "rope": 0.01, "confidence": 0.95} | verdict,
        "hardware": {"device": "auto", "country_iso_code": "USA"},
        "tracking": {"uri": None, "experiment": None},
        "weights": {"dir": None, "allow_selfmade": True},
        "recipes": {
            "medmnist_v2": RECIPE,
            "medmnist_plus": RECIPE | {"optimizer": "adamw", "lr": 1e-4, "scheduler": "cosine", "select": "val_loss"},
        },
        "arms": arms,
    }


def write_run_folders(runs: pd.DataFrame, root, n_test: int = 200, seed: int = 0) -> list:
    """A run folder per row of ``runs`` as ``train`` leaves it (``metrics.json`` with a per-epoch history, and
    ``predictions.npz``). The runs of a task share one test split: its labels are drawn from per-image
    probabilities, and each run predicts those probabilities with noise of sd 0.1 (nearly calibrated). The row's test
    metrics are set to those the predictions give (as training computes them, so the folders pass ``verify``):
    ``aggregate.collect`` of the returned paths gives the changed ``runs`` back."""
    from pathlib import Path

    from scaleaudit.metrics import evaluate
    from scaleaudit.records import COST_COLUMNS, PREDICTIONS, SPLIT_METRICS, RunInfo, RunResult

    rng = np.random.default_rng(seed)
    paths, splits = [], {}
    for i, row in zip(runs.index, runs.to_dict("records")):
        out = (
            Path(root)
            / f"{row['dataset']}_{row['size']}"
            / row["arm"]
            / f"frac{row['fraction']}"
            / f"seed{row['seed']}"
        )
        out.mkdir(parents=True, exist_ok=True)
        if (row["dataset"], row["size"]) not in splits:
            truth = rng.uniform(0, 1, n_test)
            splits[row["dataset"], row["size"]] = truth, (rng.uniform(size=n_test) < truth).astype(np.int64)
        truth, labels = splits[row["dataset"], row["size"]]
        p1 = np.clip(truth + rng.normal(0, 0.1, n_test), 0, 1)
        probabilities = np.column_stack([1 - p1, p1]).astype(np.float32)
        np.savez_compressed(out / PREDICTIONS, labels=labels.reshape(-1, 1), probabilities=probabilities)
        for k, v in evaluate(labels, probabilities, row["task"]).items():
            runs.loc[i, f"test_{k}"] = row[f"test_{k}"] = v
        history = [
            {
                "epoch": e,
                "train_loss": 0.7 / e,
                "lr": 1e-3,
                "val_auc": row["val_auc"] - 0.05 / e,
                "val_loss": 0.5 + 0.1 / e,
                "seconds": 1.0,
            }
            for e in range(1, row["epochs_run"] + 1)
        ]
        weights = (
            None
            if row["weights_source"].startswith("none")
            else {
                "source": row["weights_source"],
                "sha256": row["weights_sha256"],
                "published": row["weights_published"],
            }
        )
        RunResult(
            run=RunInfo(**{k: row[k] for k in RunInfo.__dataclass_fields__ if k != "round"}),
            task=row["task"],
            n_train=row["n_train"],
            best_epoch=row["best_epoch"],
            epochs_run=row["epochs_run"],
            stopped_early=False,
            val={k: row[f"val_{k}"] for k in SPLIT_METRICS},
            test={k: row[f"test_{k}"] for k in SPLIT_METRICS},
            history=history,
            cost={k: row[k] for k in COST_COLUMNS} | {"precision": "fp32"},
            provenance={
                "weights": weights,
                "data": {"sha256": row["data_sha256"]},
                "code": {"commit": row["code_commit"], "dirty": row["code_dirty"]},
                "versions": {"torch": row["torch_version"], "timm": row["timm_version"]},
                "hardware": {"cpu": row["hardware"], "gpu": None},
            },
            tracking={"run_id": row["mlflow_run_id"]},
        ).save(out / "metrics.json")
        paths.append(out / "metrics.json")
    return paths
