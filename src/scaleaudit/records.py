"""Typed run records: the spec a training job gets, the result it writes as ``metrics.json``, the run table's reader.

The layout of ``metrics.json`` lives here and nowhere else: ``train`` builds a ``RunResult`` and saves
it, ``aggregate`` loads it back and flattens it with ``RunResult.row``, and the tests read it the same
way. The spec travels as JSON (``scaleaudit train --spec``); ``RunSpec.from_dict`` checks it.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas

from .errors import ScaleauditError
from .files import canonical_hash, read_json, write_json

SPLIT_METRICS = ("auc", "acc", "bacc", "ece", "loss")
PREDICTIONS = "predictions.npz"  # beside metrics.json: the test split's labels and predicted probabilities
COST_COLUMNS = (
    "params",
    "trainable_params",
    "flops_per_image",
    "train_seconds",
    "device",
    "device_hours",
    "accelerator_hours",
    "peak_mem_mb",
    "energy_kwh",
    "co2e_kg",
    "energy_method",
    "train_flops",
    "runs_per_gpu",
    "gpu_sharing",
    "gpu_booking",
    "gpu_start",
    "gpu_end",
)
# cost added later than the layout: a run recorded before lacks it (and shared no GPU: sharing came with runs_per_gpu)
COST_DEFAULTS = {
    "train_flops": math.nan,
    "runs_per_gpu": 1,
    "gpu_sharing": "",
    "gpu_booking": "",
    "gpu_start": math.nan,
    "gpu_end": math.nan,
}


def _keys(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def _required(cls) -> set[str]:
    return {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}


def _check_keys(cls, d: dict, what: str, fix: str) -> None:
    missing, unknown = _required(cls) - set(d), set(d) - _keys(cls)
    if missing or unknown:
        problems = [
            f"missing {', '.join(sorted(missing))}" if missing else "",
            f"unknown {', '.join(sorted(unknown))}" if unknown else "",
        ]
        raise ScaleauditError(
            f"{what} does not have the layout of {cls.__name__}: " + "; ".join(p for p in problems if p), fix
        )


@dataclass(frozen=True)
class RunSpec:
    """Everything one training job needs, resolved; ``config_hash`` identifies what is trained."""

    study: str
    dataset: str
    size: int
    arm: str
    arm_spec: dict
    recipe: dict
    fraction: float
    seed: int
    hardware: dict
    device: str  # what the run trains on: 'cpu', or 'cuda' for an arm that books a GPU
    config_hash: str
    round: int | None = None  # adaptive seeds: the round that added this seed (bookkeeping, outside the hash)

    @classmethod
    def create(cls, **values: Any) -> RunSpec:
        """A spec from its fields; the hash is computed over all of them (the hash of the spec dict without it)."""
        values = {
            "size": int(values.pop("size")),
            "fraction": float(values.pop("fraction")),
            "seed": int(values.pop("seed")),
        } | values
        round_ = values.pop("round", None)
        ordered = {f.name: values[f.name] for f in fields(cls) if f.name not in ("config_hash", "round")}
        return cls(**ordered, config_hash=canonical_hash(ordered), round=round_)

    def with_changes(self, **changes: Any) -> RunSpec:
        """This spec with some fields changed, its hash computed again."""
        return RunSpec.create(
            **{f.name: getattr(self, f.name) for f in fields(self) if f.name != "config_hash"} | changes
        )

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        _check_keys(
            cls, d, "the run spec", "pass the spec the workflow resolves (config.run_spec), not a hand-made one"
        )
        return cls(**d)

    def to_dict(self) -> dict:
        """The spec as JSON; ``round`` only in adaptive designs, so a fixed design's specs are as before."""
        d = asdict(self)
        if d["round"] is None:
            del d["round"]
        return d


@dataclass(frozen=True)
class RunInfo:
    """What was run: the ``run`` block of metrics.json and the identifying columns of the run table."""

    study: str
    dataset: str
    size: int
    arm: str
    fraction: float
    seed: int
    config_hash: str
    group: str
    model: str
    pretrained: bool
    train_mode: str
    input_size: int
    recipe: str
    round: int = 1  # adaptive seeds: the round that added this seed (1 in a fixed design)

    @classmethod
    def of(cls, spec: RunSpec, input_size: int) -> RunInfo:
        arm = spec.arm_spec
        return cls(
            study=spec.study,
            dataset=spec.dataset,
            size=spec.size,
            arm=spec.arm,
            fraction=spec.fraction,
            seed=spec.seed,
            config_hash=spec.config_hash,
            group=arm["group"],
            model=arm["model"],
            pretrained=arm["pretrained"],
            train_mode=arm["train"],
            input_size=input_size,
            recipe=spec.recipe["name"],
            round=spec.round or 1,
        )


@dataclass
class RunResult:
    """One finished run: ``metrics.json``."""

    run: RunInfo
    task: str
    n_train: int
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    val: dict  # SPLIT_METRICS of the selected weights
    test: dict
    history: list  # one dict per epoch: epoch, train_loss, lr, val_* (on eval epochs), seconds
    cost: dict  # COST_COLUMNS and the precision
    provenance: dict  # code, versions, hardware, data, weights
    tracking: dict | None  # MLflow run_id, tracking_uri, experiment, experiment_id
    best_weights: dict | None = None  # the selected weights kept in the run folder: file, format, sha256, tensors
    diverged: str = ""  # why the run counts as diverged (train.divergence), '' when it does not

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"run": asdict(self.run)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "metrics") -> RunResult:
        fix = "it was written by another scaleaudit version or edited: delete the run folder and train it again"
        _check_keys(cls, d, where, fix)
        _check_keys(RunInfo, d["run"], f"{where} (run)", fix)
        return cls(**(d | {"run": RunInfo(**d["run"])}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunResult:
        return cls.from_dict(read_json(path), where=str(path))

    def save(self, path: str | os.PathLike) -> None:
        write_json(path, self.to_dict())

    def row(self) -> dict:
        """The run as one row of the run table (the columns that stats and the report use)."""
        prov, weights = self.provenance, self.provenance["weights"]
        out = asdict(self.run) | {
            "task": self.task,
            "n_train": self.n_train,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "diverged": bool(self.diverged),
        }
        for split in ("test", "val"):
            out |= {f"{split}_{k}": getattr(self, split)[k] for k in SPLIT_METRICS}
        cost = COST_DEFAULTS | self.cost
        out |= {k: cost[k] for k in COST_COLUMNS}
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
            "mlflow_run_id": (self.tracking or {}).get("run_id", ""),
        }
        return out


# runs.csv columns that stay text
TEXT_COLUMNS = [
    "weights_source",
    "weights_sha256",
    "mlflow_run_id",
    "code_commit",
    "config_hash",
    "data_sha256",
    "gpu_sharing",
    "gpu_booking",  # SLURM_JOB_ID: digits, but an id
]


def read_runs(runs_csv: str | os.PathLike) -> pandas.DataFrame:
    """The run table; hashes and ids stay text (an all-digit hash is no number), an empty cell means none."""
    import pandas as pd  # not at the top: the trainer imports this module and needs no pandas

    runs = pd.read_csv(runs_csv, dtype=dict.fromkeys(TEXT_COLUMNS, str))
    runs[TEXT_COLUMNS] = runs[TEXT_COLUMNS].fillna("")
    return runs
