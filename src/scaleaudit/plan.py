"""What a study will cost, before it starts: runs, FLOPs, device-hours and energy per arm and dataset.

The estimator on top of the cost model (``cost.py``). FLOPs come from torch's counter on each arm's model times the
images the recipe trains and evaluates. Time comes from a short calibration: a few training steps of each arm's real
training path (``Trainer.train_step`` on a synthetic batch) on the device its runs will use. Where that device is a GPU
and this machine has none, time is FLOPs over a share of a named GPU's dense bf16 peak (``devices.py``) instead, and
the plan says so; a table from ``benchmarks/gpu_check.py --out`` replaces that assumed share with each model's
measured one (and the kNN search's assumed rate with the measured one). Energy is time times the device's board
power (a data-sheet upper bound) or, on a CPU, an assumed draw per thread.

Recipes with early stopping run ``cost.stop_epoch`` epochs: the median measured stop epoch of the study's run table
(``epochs_run``) where it has runs of the arm, else the modelled one. Beside training, the plan counts the kNN
probes' votes and the shift stage (every run's kept weights on each corrupted test set, ``corrupt.N_CORRUPTIONS`` x
``corrupt.SEVERITIES``), each in its own column.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from . import config as study_config
from . import corrupt, cost, data, design, devices, features, models, runtime, synthetic
from .errors import ScaleauditError
from .records import RunSpec, read_runs
from .train import Trainer

CPU_CALIBRATION_BATCH = 16  # keeps a CPU calibration of a ViT-B short; GPUs use the recipe's batch


def n_train_of(flag: str, fraction: float) -> int:
    return max(1, round(data.info(flag)["n_samples"]["train"] * fraction))


def calibrate(spec: RunSpec, device: torch.device, steps: int, batch: int) -> dict:
    """Seconds per training image of a run's real training path, timed over ``steps`` steps after one warm-up."""
    spec = spec.with_changes(
        fraction=1.0, arm_spec=dict(spec.arm_spec, pretrained=False), recipe=dict(spec.recipe, batch_size=batch)
    )
    with tempfile.TemporaryDirectory(prefix="scaleaudit-plan-") as tmp:
        path = synthetic.write_npz(
            Path(tmp) / "calibration.npz", spec.dataset, synthetic.small_splits(batch), spec.size
        )
        trainer = Trainer(spec, path, None, device, log=lambda msg: None, synthetic=True)
        trainer.prepare()  # a probe's steps take features
        raw = runtime.on_device(data.load_splits(path, spec.dataset, spec.size, synthetic=True)["train"][0], device)
    images, labels = trainer.tensors["train"]
    idx = torch.arange(batch, device=device) % len(images)
    x, y, raw = images[idx], labels[idx], raw[idx]

    def timed(step, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def train_step():
        return trainer.train_step(x, y)

    def forward():
        return features.compute(trainer.model, trainer.transform, raw, batch, trainer.autocast)

    timed(train_step, 1)
    timed(forward, 1)
    return {
        "seconds_per_image": timed(train_step, steps) / (steps * batch),
        "forward_seconds_per_image": timed(forward, steps) / (steps * batch),
        "batch": batch,
        "steps": steps,
    }


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += not func.is_view  # views launch no kernel
        return func(*args, **(kwargs or {}))


def count_step(spec: RunSpec) -> dict:
    """Forward FLOPs per image, and the ATen ops one training step dispatches (forward, loss, backward, fused
    optimiser): each op is at least one kernel launch, which bounds a small model's step time on a GPU."""
    meta = data.info(spec.dataset)
    arm = dict(spec.arm_spec, pretrained=False)
    size, chans = arm["input_size"] or spec.size, 3 if spec.recipe.get("rgb") else meta["n_channels"]
    with torch.device("meta"):  # counting needs shapes, not weights
        model = models.build(arm, meta["n_classes"], chans, size)
        x, y = torch.zeros(2, chans, size, size), torch.zeros(2, dtype=torch.long)
    with _CountOps() as ops:
        F.cross_entropy(model(x), y).backward()
    fused_optimizer_ops = 2
    return {
        "flops_per_image": cost.flops_per_image(model, chans, size),
        "ops_per_step": ops.n + fused_optimizer_ops,
        "features": getattr(model, "num_features", 0),  # the kNN probe's feature dimension
    }


def measured_stops(runs_csv: str | Path) -> dict:
    """Median ``epochs_run`` of the run table's runs, by (arm, dataset) and by arm."""
    runs = read_runs(runs_csv)
    by_task = runs.groupby(["arm", "dataset"])["epochs_run"].median()
    return {**by_task.to_dict(), **runs.groupby("arm")["epochs_run"].median().to_dict()}


def gpu_check_shares(figures: dict) -> dict[str, float]:
    """Each model's measured share of the dense bf16 peak, from ``gpu_check.py --out``'s figures."""
    return {r["model"]: r["share_of_peak"] for r in figures["vit"] if r["share_of_peak"] is not None}


def per_image(
    spec: RunSpec,
    steps: int,
    measure_here: bool,
    gpu: str,
    utilization: float,
    share: int,
    log=print,
    utilization_from: str = "assumed",
) -> dict:
    """An arm's costs per image at one size: FLOPs and ops counted, seconds measured on this machine's device (its
    CPU, or its GPU), else for a GPU not here estimated from the FLOPs (``cost.gpu_seconds_per_image``)."""
    counted = count_step(spec)
    on_gpu, batch = spec.device == "cuda", spec.recipe["batch_size"]
    if measure_here:
        device = torch.device("cuda" if on_gpu else "cpu")
        batch = batch if on_gpu else min(batch, CPU_CALIBRATION_BATCH)
        log(f"plan: calibrating {spec.arm} at {spec.size} px on {device} ({steps} steps of {batch})")
        return counted | calibrate(spec, device, steps, batch) | {"method": f"measured on {device}"}
    if on_gpu:
        peak = devices.bf16_peak(gpu)
        if peak is None:
            raise ScaleauditError(
                f"no dense bf16 peak is known for the GPU {gpu!r}",
                "name one listed in src/scaleaudit/devices.py (--gpu), or add it there",
            )
        est = cost.gpu_seconds_per_image(
            counted["flops_per_image"], counted["ops_per_step"], spec.arm_spec, batch, peak, utilization, share
        )
        method = f"{utilization:.0%} of {gpu} bf16 peak ({utilization_from})" + (
            ", launch-bound" if est.pop("launch_bound") else ""
        )
        return counted | est | {"method": method}
    return counted | {"seconds_per_image": math.nan, "forward_seconds_per_image": math.nan, "method": "not calibrated"}


def arm_row(
    config: dict, spec: RunSpec, costs: dict, gpu: str, threads: int, share: int, stop: float | None, knn_rate: float
) -> dict:
    """The plan of one arm on one task: every fraction and seed of the design, from its costs per image; training,
    the kNN votes and the shift stage apart. ``stop``: the measured median stop epoch, if any."""
    fractions, seeds = config["design"]["fractions"], design.seeds(config)
    meta, on_gpu, arm = data.info(spec.dataset), spec.device == "cuda", spec.arm_spec
    n_val, n_test = meta["n_samples"]["val"], meta["n_samples"]["test"]
    watts = (devices.board_power(gpu) or math.nan) if on_gpu else devices.CPU_WATTS_PER_THREAD * threads
    epochs = cost.stop_epoch(spec.recipe, stop)
    recipe = dict(spec.recipe, epochs=epochs)
    sets = corrupt.N_CORRUPTIONS[spec.dataset] * len(corrupt.SEVERITIES) if config["shift"]["enabled"] else None
    cached = features.usable(spec)
    infer_s = costs["forward_seconds_per_image"] if cached else cost.inference_seconds_per_image(costs, arm)
    flops = dict.fromkeys(("train", "knn", "shift"), 0.0)
    seconds = dict.fromkeys(("train", "knn", "shift"), 0.0)
    if cached:  # the backbone's features once per dataset, then a linear layer or a vote: start-up dominates
        n_all = sum(meta["n_samples"].values())
        flops["train"] = costs["flops_per_image"] * n_all
        seconds["train"] = costs["forward_seconds_per_image"] * n_all + len(fractions) * len(seeds) * cost.STARTUP_S
    for fraction in fractions:
        n_train = n_train_of(spec.dataset, fraction)
        parts = {}
        if not cached:
            parts["train"] = cost.run_estimate(costs, arm, recipe, n_train, n_val, n_test, share)
        if arm["train"] == "knn_probe":
            parts["knn"] = cost.knn_vote(n_val + n_test, n_train, costs["features"], knn_rate)
        if sets is not None:
            f, s = cost.shift_estimate(costs["flops_per_image"], infer_s, n_test, sets, share)
            if arm["train"] == "knn_probe":  # one index per run, every corrupted set voted on
                vf, vs = cost.knn_vote(n_test * (1 + sets), n_train, costs["features"], knn_rate)
                f, s = f + vf, s + vs
            parts["shift"] = f, s
        for stage, (f, s) in parts.items():
            flops[stage] += len(seeds) * f
            seconds[stage] += len(seeds) * s
    hours = {stage: s / 3600 for stage, s in seconds.items()}
    return {
        "arm": spec.arm,
        "dataset": spec.dataset,
        "size": spec.size,
        "runs": len(fractions) * len(seeds),
        "flops": sum(flops.values()),
        "device": gpu if on_gpu else "cpu",
        "device_hours": sum(hours.values()),
        "train_hours": hours["train"],
        "knn_hours": hours["knn"],
        "shift_hours": hours["shift"],
        "knn_flops": flops["knn"],
        "shift_flops": flops["shift"],
        "energy_kwh": sum(hours.values()) * watts / 1000,
        "training_energy_kwh": (hours["train"] + hours["knn"]) * watts / 1000,  # what the runs themselves book
        "method": costs["method"],
        "epochs": epochs,
        "epochs_from": (
            "recipe" if spec.recipe["early_stop_patience"] is None else "measured" if stop is not None else "modelled"
        ),
        "runs_per_gpu": share,
    }


def make(
    config: dict,
    calibrate_steps: int = 2,
    gpu_name: str | None = None,
    utilization: float = devices.DEFAULT_UTILIZATION,
    threads: int = 1,
    log=print,
    stops: dict | None = None,
    gpu_check: dict | None = None,
) -> dict:
    """The plan of a validated study config (see the module docstring). ``stops``: measured stop epochs
    (``measured_stops``); ``gpu_check``: the figures ``benchmarks/gpu_check.py --out`` wrote on the GPU planned for."""
    here_cuda = torch.cuda.is_available()
    gpu = (
        gpu_name
        or (gpu_check or {}).get("device")
        or (torch.cuda.get_device_name(0) if here_cuda else devices.DEFAULT_GPU)
    )
    if gpu_check is not None and gpu_check["device"] != gpu:
        raise ScaleauditError(
            f"the GPU check ran on {gpu_check['device']!r}, the plan is for {gpu!r}",
            "give the check of the GPU the study will use, or leave out --gpu",
        )
    shares = gpu_check_shares(gpu_check) if gpu_check else {}
    gpu_knn_rate = gpu_check["knn_flops_per_s"] if gpu_check else cost.KNN_GPU_FLOPS
    stops = stops or {}
    runtime.configure_torch(0, threads, config["hardware"]["determinism"])  # time what the runs will run
    rows, cache = [], {}
    first = config["design"]["fractions"][0], design.seeds(config)[0]
    for flag, size in design.tasks(config):
        meta = data.info(flag)
        for arm_name in design.arms(config):
            spec = study_config.run_spec(config, flag, size, arm_name, *first)
            on_gpu = spec.device == "cuda"
            share = config["arms"][arm_name]["resources"].get("runs_per_gpu", 1) if on_gpu else 1
            key = (arm_name, meta["n_channels"], meta["n_classes"], size)
            if key not in cache:
                measure_here = calibrate_steps > 0 and (not on_gpu or (here_cuda and gpu_name is None))
                measured = shares.get(spec.arm_spec["model"])
                cache[key] = per_image(
                    spec,
                    calibrate_steps,
                    measure_here,
                    gpu,
                    utilization if measured is None else measured,
                    share,
                    log,
                    "assumed" if measured is None else "measured by gpu-check",
                )
            stop = stops.get((arm_name, flag), stops.get(arm_name))
            knn_rate = gpu_knn_rate if on_gpu else cost.KNN_CPU_FLOPS_PER_THREAD * threads
            rows.append(arm_row(config, spec, cache[key], gpu, threads, share, stop, knn_rate))
    keys = ("runs", "flops", "device_hours", "train_hours", "knn_hours", "shift_hours", "energy_kwh")
    total = {k: sum(r[k] for r in rows) for k in keys}
    total["training_hours"] = total["train_hours"] + total["knn_hours"]  # the runs' own time: their votes included
    total["training_energy_kwh"] = sum(r["training_energy_kwh"] for r in rows)
    return {
        "study": config["study"],
        "rows": rows,
        "total": total,
        "gpu": gpu,
        "utilization": utilization,
        "measured_shares": shares,
        "knn_gpu_flops_per_s": gpu_knn_rate,
        "startup_s": cost.STARTUP_S,
        "cuda_here": here_cuda,
        "cuda_diagnosis": None if here_cuda else runtime.cuda_diagnosis(),
    }


def summary_line(plan: dict) -> str:
    t = plan["total"]
    gpu = [r for r in plan["rows"] if r["device"] != "cpu"]
    stages = ", ".join(f"{k} {sum(r[k + '_hours'] for r in gpu):.3g}" for k in ("train", "knn", "shift"))
    stops = sorted({(r["epochs"], r["epochs_from"]) for r in plan["rows"] if r["epochs_from"] != "recipe"})
    early = f"; early stopping at {', '.join(f'{e} epochs ({how})' for e, how in stops)}" if stops else ""
    return (
        f"plan for study {plan['study']!r}: {t['runs']} runs, {t['flops']:.3g} FLOPs, about {t['device_hours']:.3g} "
        f"device-hours ({sum(r['device_hours'] for r in gpu):.3g} on {plan['gpu']}: {stages}) and "
        f"{t['energy_kwh']:.3g} kWh{early}"
    )


def table(plan: dict) -> str:
    lines = [
        f"{'arm':24} {'dataset':18} {'runs':>5} {'epochs':>6} {'PFLOPs':>9} {'train-h':>8} {'kNN-h':>7} "
        f"{'shift-h':>8} {'device-h':>9} {'kWh':>8}  device (time from)"
    ]
    for r in plan["rows"]:
        lines.append(
            f"{r['arm']:24} {r['dataset'] + '@' + str(r['size']):18} {r['runs']:5} {r['epochs']:6} "
            f"{r['flops'] / 1e15:9.2f} {r['train_hours']:8.3g} {r['knn_hours']:7.2g} {r['shift_hours']:8.3g} "
            f"{r['device_hours']:9.3g} {r['energy_kwh']:8.3g}  {r['device']} ({r['method']})"
        )
    t = plan["total"]
    lines.append(
        f"{'total':24} {'':18} {t['runs']:5} {'':6} {t['flops'] / 1e15:9.2f} {t['train_hours']:8.3g} "
        f"{t['knn_hours']:7.2g} {t['shift_hours']:8.3g} {t['device_hours']:9.3g} {t['energy_kwh']:8.3g}"
    )
    return "\n".join(lines)
