"""A run's job around the training loop: its bookkeeping (the run folder and its lock, the MLflow run, the energy
meter, metrics.json, the test predictions and the selected weights) and the later evaluation of those kept weights on
corrupted test sets. ``train`` holds the loop itself, ``runtime`` the device and determinism set-up."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import timm
import torch

from . import corrupt, cost, jobcontrol, metrics, models, provenance, runtime, settings, sharing, verify
from .errors import ScaleauditError
from .files import atomic_path, file_digest, read_json, write_json
from .records import PREDICTIONS, RunInfo, RunResult, RunSpec
from .tracking import TrackedRun, TrackingUnavailable
from .train import CHECKPOINT, CHECKPOINT_EVERY_S, Trainer, divergence

BEST_WEIGHTS = "best.safetensors"  # the selected weights, kept after training
RUN_CONFIG = "run_config.json"  # the resolved spec, beside the results it produced
SHIFT_METRICS = ("auc", "acc", "bacc", "ece")
# The shift step re-checks the clean test scores of the kept weights. On the device and libraries that trained them
# the deterministic path replays the same kernels: the scores are the same (1e-9 only absorbs float formatting).
# Elsewhere another GPU model or library version runs other kernels (other reduction orders, bf16 rounding): AUC
# and ECE move by rounding (~1e-4) and a prediction that sits on the decision boundary may flip, moving ACC and BACC
# by 1/n each: up to two flips (2/n of the n test images), at least 0.005.
SAME_NUMERICS_TOL = 1e-9
OTHER_NUMERICS_TOL = 0.005


def run(
    spec: RunSpec,
    data_record: dict,
    out_dir: Path,
    tracking: dict | None,
    weights: dict | None,
    threads: int | None = None,
    checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    runs_per_gpu: int = 1,
) -> dict:
    """Train, select on validation, test once, and write ``metrics.json``, ``predictions.npz`` and the selected
    weights; the run folder is locked while it runs (one trainer per run). ``tracking``: the experiment record of
    ``scaleaudit init-tracking`` (None: no MLflow)."""

    def log(msg: str) -> None:
        print(
            f"[{spec.arm} {spec.dataset}@{spec.size} f={spec.fraction} s={spec.seed}] {msg}",
            file=sys.stderr,
            flush=True,
        )

    with jobcontrol.locked_run_folder(out_dir):
        write_json(out_dir / RUN_CONFIG, spec.to_dict())
        trainer = _trainer(spec, data_record, weights, threads, runs_per_gpu, log)
        checkpoint = out_dir / CHECKPOINT
        if trainer.load(checkpoint):
            log(f"resuming after epoch {trainer.state['epoch']} from {checkpoint}")
        tracked = monitor = None
        try:
            tracked = _tracked_run(spec, data_record, weights, tracking, out_dir, trainer.n_train)
            size = _size(trainer, log)
            previous_seconds = sum(r["seconds"] for r in trainer.state["history"])
            monitor = _system_metrics(tracked, tracking)
            with cost.EnergyMeter(spec.hardware["country_iso_code"]) as meter:
                # waiting for the tracking store is neither training time nor training energy
                on_epoch = (
                    (lambda row: meter.excluding(lambda: tracked.log_metrics(row, step=row["epoch"])))
                    if tracked
                    else (lambda row: None)
                )
                trainer.fit(checkpoint, on_epoch=on_epoch, checkpoint_every_s=checkpoint_every_s)
                val, test, probs = trainer.test()
            share = sharing.current() if trainer.device.type == "cuda" else sharing.Share()  # the CPU is its own
            record = _record(spec, trainer, val, test, size, meter, previous_seconds + meter.seconds, share)
            record.provenance = _provenance(data_record, weights) | {"numerics": provenance.numerics(trainer.device)}
            record.tracking = _tracking_record(tracked, tracking)
            # a full disk here (weights, predictions, MLflow, metrics) fails the run in MLflow too, never RUNNING
            result = _write_outputs(record, trainer, probs, out_dir, tracked, tracking, monitor)
        except BaseException as exc:
            _end_failed(tracked, monitor, exc, log)
            raise
        checkpoint.unlink(missing_ok=True)
        if record.diverged:
            log(f"diverged: {record.diverged}")
        log(
            f"test auc {test['auc']:.4f} acc {test['acc']:.4f} (best epoch {trainer.state['best_epoch']}, "
            f"{record.cost['train_seconds']:.0f} s)"
        )
        return result


def _trainer(
    spec: RunSpec, data_record: dict, weights: dict | None, threads: int | None, runs_per_gpu: int, log
) -> Trainer:
    """The run's trainer on its device, after the weights file is checked and torch is set up for the run."""
    if weights is not None:
        models.verify_weights(weights)
    runtime.configure_torch(spec.seed, threads, spec.hardware["determinism"])
    device = runtime.pick_device(spec.device, runs_per_gpu)
    return Trainer(spec, data_record["file"], weights, device, log=log, synthetic=bool(data_record.get("synthetic")))


def _tracked_run(
    spec: RunSpec, data_record: dict, weights: dict | None, tracking: dict | None, out_dir: Path, n_train: int
):
    """The run's MLflow run (resumed when the job runs again) with its tags, params and dataset; None untracked."""
    if tracking is None:
        return None
    run_name = f"{spec.arm}/{spec.dataset}_{spec.size}/f{spec.fraction}/s{spec.seed}"
    tracked = TrackedRun(tracking, out_dir / "mlflow_run_id", run_name=run_name, tags=_tags(spec, data_record, weights))
    tracked.log_params(
        _params(spec, data_record, weights, n_train)
        | settings.as_params(settings.recorded(data_record, weights, tracking))
    )
    tracked.log_input(
        Path(data_record["file"]), f"{spec.dataset}_{spec.size}", data_record["sha256"], context="training"
    )
    return tracked


def _size(trainer: Trainer, log) -> dict:
    """Parameters and forward FLOPs per image; a vote trains nothing, not even its unused head."""
    size = (
        cost.parameters(trainer.model)
        | {"flops_per_image": cost.flops_per_image(trainer.model, trainer.in_chans, trainer.input_size)}
        | ({"trainable_params": 0} if trainer.knn else {})
    )
    log(
        f"{size['params'] / 1e6:.2f} M parameters, {size['flops_per_image'] / 1e6:.1f} MFLOPs/image, "
        f"{trainer.n_train} training images on {trainer.device} in {trainer.precision}"
        + (f", convolutions as GEMMs: {', '.join(trainer.gemm_convs)}" if trainer.gemm_convs else "")
    )
    return size


def _record(
    spec: RunSpec,
    trainer: Trainer,
    val: dict,
    test: dict,
    size: dict,
    meter: cost.EnergyMeter,
    train_seconds: float,
    share: sharing.Share,
) -> RunResult:
    """The finished run's record, its provenance and tracking still to add. A run sharing a GPU records 1/n of its own
    time and of the GPU's energy, and its booking and wall-clock GPU use: the report bills the booking's holding time
    (``ledger.billed``)."""
    device, n = trainer.device, share.runs_per_gpu
    return RunResult(
        run=RunInfo.of(spec, trainer.input_size),
        task=trainer.task,
        n_train=trainer.n_train,
        best_epoch=trainer.state["best_epoch"],
        epochs_run=trainer.state["epoch"],
        stopped_early=bool(trainer.state.get("stopped_early")),
        val=val,
        test=test,
        history=trainer.state["history"],
        cost=size
        | meter.result(gpu_share=1 / n)
        | {
            "train_seconds": train_seconds,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "precision": trainer.precision,
            "device_hours": train_seconds / 3600 / n,
            "accelerator_hours": train_seconds / 3600 / n if device.type == "cuda" else 0.0,
            "runs_per_gpu": n,
            "gpu_sharing": share.mode,
            "gpu_booking": share.booking,
            "gpu_start": share.since,
            "gpu_end": time.time() if share.since is not None else None,
            "peak_mem_mb": cost.peak_memory_mb(device),
            "train_flops": cost.training_flops(
                size["flops_per_image"], trainer.n_train, trainer.state["epoch"], spec.arm_spec, trainer.cached_features
            ),
        },
        provenance={},
        tracking=None,
        diverged=divergence(trainer.state, val),
    )


def _provenance(data_record: dict, weights: dict | None) -> dict:
    """Code, versions and hardware, with the data file and the weights the run used."""
    return provenance.record() | {
        "data": {k: data_record[k] for k in ("file", "source", "sha256", "verified_against")},
        "weights": weights,
    }


def _tracking_record(tracked: TrackedRun | None, tracking: dict | None) -> dict | None:
    """Where the run's MLflow run is: run and experiment ids, tracking URI, experiment name."""
    if tracked is None:
        return None
    return {"run_id": tracked.run_id, "experiment_id": tracked.experiment_id} | {
        k: tracking[k] for k in ("tracking_uri", "experiment")
    }


def _write_outputs(
    record: RunResult, trainer: Trainer, probs: np.ndarray, out_dir: Path, tracked, tracking, monitor
) -> dict:
    """Selected weights, test predictions and the MLflow run's results, then metrics.json last: the run's output
    exists only once everything else is written."""
    record.best_weights = save_best_weights(trainer.state["best_state"], out_dir / BEST_WEIGHTS)
    result = record.to_dict()
    with atomic_path(out_dir / PREDICTIONS) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, labels=trainer.labels["test"], probabilities=probs)
    if tracked is not None:
        tracked.log_metrics(
            {f"test_{k}": v for k, v in record.test.items() if v is not None}  # a kNN vote has no loss
            | {f"best_val_{k}": v for k, v in record.val.items() if v is not None}
            | {k: v for k, v in result["cost"].items() if isinstance(v, (int, float))}
            | {"diverged": float(bool(record.diverged))},
            step=trainer.state["epoch"],
        )
        tracked.set_tag("diverged", record.diverged or "no")
        for key in ("gpu_sharing", "gpu_booking"):  # text: not among the metrics above
            tracked.set_tag(key, record.cost[key] or "none")
        tracked.log_artifacts([out_dir / RUN_CONFIG, out_dir / PREDICTIONS, out_dir / BEST_WEIGHTS])
        if tracking.get("log_model"):
            tracked.log_model(trainer.model, out_dir / "mlflow_model")
        tracked.log_dict(result, "metrics.json")
        if monitor is not None:
            monitor.finish()
        tracked.finish()
    record.save(out_dir / "metrics.json")
    return result


def evaluate_shift(
    run_dir: Path,
    corrupted_record: dict,
    data_record: dict,
    weights: dict | None,
    threads: int | None = None,
    runs_per_gpu: int = 1,
    log=print,
) -> dict:
    """Score a finished run's selected weights on every corruption and severity of its corrupted test set, after
    checking that they give the test scores its metrics.json recorded; the content of ``shift.json``. On the run's
    device (``runs_per_gpu``: the jobs sharing its GPU, as in training)."""
    run_dir = Path(run_dir)
    result = RunResult.load(run_dir / "metrics.json")
    spec = RunSpec.from_dict(read_json(run_dir / RUN_CONFIG))
    if result.best_weights is None:
        raise ScaleauditError(
            f"{run_dir} has no kept weights (trained by a scaleaudit that did not keep them)",
            f"train the run again (delete {run_dir}) to evaluate it under shift",
        )
    try:
        arrays = corrupt.check(corrupted_record, Path(data_record["file"]))
    except corrupt.CorruptedSetError as exc:
        raise ScaleauditError(str(exc)) from None
    runtime.configure_torch(spec.seed, threads, spec.hardware["determinism"])
    device = runtime.pick_device(spec.device, runs_per_gpu)
    trainer = Trainer(spec, data_record["file"], weights, device, log=log)
    trainer.prepare()  # a probe's features, as in training: its clean score comes from the same path
    trainer.state["best_state"] = load_best_weights(run_dir, result.best_weights)
    _, clean, _ = trainer.test()
    recheck = _recheck(result, clean, provenance.numerics(trainer.device), len(trainer.labels["test"]))
    if recheck["off"]:
        raise ScaleauditError(
            f"{run_dir}/{result.best_weights['file']} does not give the test scores metrics.json recorded "
            f"(tolerance {recheck['tolerance']:g}: {recheck['reason']}): {recheck['off']}",
            f"train the run again (delete {run_dir})",
        )
    if not recheck["same_numerics"]:
        log(f"evaluated on other numerics than training: clean scores within {recheck['tolerance']:g}")
    labels = trainer.labels["test"]
    scores = {}
    for name in corrupted_record["corruptions"]:
        scores[name] = [metrics.evaluate(labels, trainer.probabilities(level), trainer.task) for level in arrays[name]]
        log(f"{name}: auc " + " ".join(f"{s['auc']:.3f}" for s in scores[name]))
    return {
        "run": result.to_dict()["run"],
        "task": result.task,
        "clean": {k: clean[k] for k in SHIFT_METRICS},
        "corrupted": scores,
        "severities": corrupted_record["severities"],
        "corrupted_set": {k: corrupted_record[k] for k in ("file", "sha256", "seed", "families")}
        | {"medmnistc": corrupted_record["versions"].get("medmnistc")},
        "best_weights": result.best_weights,
        "recheck": {k: v for k, v in recheck.items() if k != "off"},
    }


def _recheck(result: RunResult, clean: dict, numerics: dict, n_test: int) -> dict:
    """The kept weights' clean test scores against those metrics.json recorded: exact on the numerics (device
    model, library versions) that trained them, within OTHER_NUMERICS_TOL elsewhere; the metrics out of it."""
    trained_on = result.provenance.get("numerics")
    same = trained_on == numerics
    tol = SAME_NUMERICS_TOL if same else max(OTHER_NUMERICS_TOL, 2 / n_test)
    reason = (
        "same device and libraries: the same kernels"
        if same
        else "other device or libraries than training: other kernels, rounding, up to two boundary predictions"
    )
    off = {
        k: (clean[k], result.test[k])
        for k in SHIFT_METRICS
        if not math.isclose(clean[k], result.test[k], abs_tol=tol)
        and not (math.isnan(clean[k]) and math.isnan(result.test[k]))
    }
    return {
        "same_numerics": same,
        "tolerance": tol,
        "reason": reason,
        "trained_on": trained_on,
        "evaluated_on": numerics,
        "off": off,
    }


def save_best_weights(state: dict[str, torch.Tensor], path: Path) -> dict:
    """The selected weights (without frozen ones, as ``trained_state``) as safetensors; their record for metrics.json.
    Evaluations after training (``scaleaudit shift-eval``) load them instead of training again."""
    from safetensors.torch import save_file

    # clones: safetensors refuses tensors that share memory, and views that are not contiguous
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
        sha256 = file_digest(tmp, "sha256")
    return {"file": path.name, "format": "safetensors", "sha256": sha256, "tensors": len(tensors)}


def load_best_weights(run_dir: Path, record: dict) -> dict[str, torch.Tensor]:
    """A run's kept weights, checked against the SHA-256 its metrics.json recorded."""
    from safetensors.torch import load_file

    verify.weights(run_dir, record)
    return load_file(str(Path(run_dir) / record["file"]))


def _end_failed(tracked, monitor, exc: BaseException, log: Callable[[str], None]) -> None:
    """Stop the system metrics and end the MLflow run of a job that failed: KILLED (SIGTERM) or FAILED.

    Ending the run must not hide why the job failed: if the store cannot take the status either (a
    full disk, a server gone), that is logged and the original error goes on.
    """
    if monitor is not None:
        monitor.finish()
    if tracked is None or isinstance(exc, TrackingUnavailable):  # no second minute of retries
        return
    try:
        tracked.finish("KILLED" if isinstance(exc, jobcontrol.Terminated) else "FAILED")
    except Exception as end_exc:
        log(
            f"could not mark MLflow run {tracked.run_id} as failed ({str(end_exc).splitlines()[0]}); "
            "it is ended when the job runs again"
        )


def _system_metrics(tracked, tracking: dict | None):
    """MLflow's CPU/memory/disk/network (and GPU) sampler for the run, when ``tracking.system_metrics`` is on."""
    if tracked is None or not tracking.get("system_metrics"):
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(tracked.run_id, resume_logging=True, tracking_uri=tracking["tracking_uri"])
    monitor.start()
    return monitor


def _tags(spec: RunSpec, data_record: dict, weights: dict | None) -> dict[str, str]:
    """Tags group a cell's seeds in the MLflow UI; the identity tags tie the run to one spec, data and weights."""
    code = provenance.code_version()
    arm = spec.arm_spec
    note = (
        f"{spec.arm} ({arm['model']}, {'pretrained' if arm['pretrained'] else 'from scratch'}, {arm['train']}) "
        f"on {spec.dataset} at {spec.size} px, {spec.fraction:g} of the training set, seed {spec.seed}; "
        f"recipe {spec.recipe['name']}, study {spec.study}"
    )
    return {
        "study": spec.study,
        "dataset": spec.dataset,
        "size": str(spec.size),
        "arm": spec.arm,
        "group": arm["group"],
        "fraction": f"{spec.fraction:g}",
        "seed": str(spec.seed),
        "cell": f"{spec.dataset}_{spec.size}/{spec.arm}/f{spec.fraction:g}",
        "weights_published": str(bool(weights and weights["published"])) if arm["pretrained"] else "n/a",
        "config_hash": spec.config_hash,
        "data_sha256": data_record["sha256"],
        "weights_sha256": weights["sha256"] if weights else "n/a",
        "mlflow.source.git.commit": code["commit"],
        "mlflow.note.content": note,
    }


def _params(spec: RunSpec, data_record: dict, weights: dict | None, n_train: int) -> dict:
    code = provenance.code_version()
    params = {
        "dataset": spec.dataset,
        "size": spec.size,
        "arm": spec.arm,
        "fraction": spec.fraction,
        "seed": spec.seed,
        "round": spec.round or 1,
        "config_hash": spec.config_hash,
        "data_sha256": data_record["sha256"],
        "git_commit": code["commit"],
        "git_dirty": code["dirty"],
        "n_train": n_train,
        "model": spec.arm_spec["model"],
        "pretrained": spec.arm_spec["pretrained"],
        "recipe": spec.recipe["name"],
        "model_definition": spec.arm_spec.get("definition") or f"timm {timm.__version__}",
    }
    params |= {f"recipe.{k}": v for k, v in spec.recipe.items() if k != "name"}
    if weights is not None:
        params |= {
            "weights_source": weights["source"],
            "weights_sha256": weights["sha256"],
            "weights_published": weights["published"],
        }
    return params
