"""What a study will cost, before it starts: runs, FLOPs, device-hours and energy per arm and dataset.

The estimator on top of the cost model (``cost.py``). FLOPs come from torch's counter on each arm's model times the
images the recipe trains and evaluates. Time comes from a short calibration: a few training steps of each arm's real
training path (``Trainer.train_step`` on a synthetic batch) on the device its runs will use. Where that device is a GPU
and this machine has none, time is FLOPs over a share of a named GPU's dense bf16 peak (``devices.py``) instead, and
the plan says so. Energy is time times the device's board power (a data-sheet upper bound) or, on a CPU, an assumed
draw per thread.

Early stopping can only shorten a run, so the plan is an upper bound for recipes that stop early.
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
from . import cost, data, design, devices, features, models, runtime, synthetic
from .errors import ScaleauditError
from .records import RunSpec
from .train import Trainer

DEFAULT_GPU = "NVIDIA H100 80GB HBM3"
DEFAULT_UTILIZATION = 0.35
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
    return {"flops_per_image": cost.flops_per_image(model, chans, size), "ops_per_step": ops.n + fused_optimizer_ops}


def per_image(
    spec: RunSpec, steps: int, measure_here: bool, gpu: str, utilization: float, share: int, log=print
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
        method = f"{utilization:.0%} of {gpu} bf16 peak" + (", launch-bound" if est.pop("launch_bound") else "")
        return counted | est | {"method": method}
    return counted | {"seconds_per_image": math.nan, "forward_seconds_per_image": math.nan, "method": "not calibrated"}


def arm_row(config: dict, spec: RunSpec, costs: dict, gpu: str, threads: int, share: int) -> dict:
    """The plan of one arm on one task: every fraction and seed of the design, from its costs per image."""
    fractions, seeds = config["design"]["fractions"], design.seeds(config)
    meta, on_gpu = data.info(spec.dataset), spec.device == "cuda"
    n_val, n_test = meta["n_samples"]["val"], meta["n_samples"]["test"]
    watts = (devices.board_power(gpu) or math.nan) if on_gpu else devices.CPU_WATTS_PER_THREAD * threads
    flops = seconds = 0.0
    if features.usable(spec):  # the backbone's features once per dataset, then a linear layer: start-up dominates
        n_all = sum(meta["n_samples"].values())
        flops = costs["flops_per_image"] * n_all
        seconds = costs["forward_seconds_per_image"] * n_all + len(fractions) * len(seeds) * cost.STARTUP_S
    else:
        for fraction in fractions:
            f, s = cost.run_estimate(
                costs, spec.arm_spec, spec.recipe, n_train_of(spec.dataset, fraction), n_val, n_test, share
            )
            flops, seconds = flops + len(seeds) * f, seconds + len(seeds) * s
    return {
        "arm": spec.arm,
        "dataset": spec.dataset,
        "size": spec.size,
        "runs": len(fractions) * len(seeds),
        "flops": flops,
        "device": gpu if on_gpu else "cpu",
        "device_hours": seconds / 3600,
        "energy_kwh": seconds / 3600 * watts / 1000,
        "method": costs["method"],
        "early_stopping": spec.recipe["early_stop_patience"] is not None,
        "runs_per_gpu": share,
    }


def make(
    config: dict,
    calibrate_steps: int = 2,
    gpu_name: str | None = None,
    utilization: float = DEFAULT_UTILIZATION,
    threads: int = 1,
    log=print,
) -> dict:
    """The plan of a validated study config (see the module docstring)."""
    here_cuda = torch.cuda.is_available()
    gpu = gpu_name or (torch.cuda.get_device_name(0) if here_cuda else DEFAULT_GPU)
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
                cache[key] = per_image(spec, calibrate_steps, measure_here, gpu, utilization, share, log)
            rows.append(arm_row(config, spec, cache[key], gpu, threads, share))
    total = {k: sum(r[k] for r in rows) for k in ("runs", "flops", "device_hours", "energy_kwh")}
    return {
        "study": config["study"],
        "rows": rows,
        "total": total,
        "gpu": gpu,
        "utilization": utilization,
        "startup_s": cost.STARTUP_S,
        "cuda_here": here_cuda,
        "cuda_diagnosis": None if here_cuda else runtime.cuda_diagnosis(),
    }


def summary_line(plan: dict) -> str:
    t = plan["total"]
    gpu_hours = sum(r["device_hours"] for r in plan["rows"] if r["device"] != "cpu")
    bound = (
        " (upper bound: early stopping can only shorten runs)" if any(r["early_stopping"] for r in plan["rows"]) else ""
    )
    return (
        f"plan for study {plan['study']!r}: {t['runs']} runs, {t['flops']:.3g} FLOPs, about {t['device_hours']:.3g} "
        f"device-hours ({gpu_hours:.3g} on {plan['gpu']}) and {t['energy_kwh']:.3g} kWh{bound}"
    )


def table(plan: dict) -> str:
    lines = [f"{'arm':24} {'dataset':18} {'runs':>5} {'PFLOPs':>9} {'device-h':>9} {'kWh':>8}  device (time from)"]
    for r in plan["rows"]:
        lines.append(
            f"{r['arm']:24} {r['dataset'] + '@' + str(r['size']):18} {r['runs']:5} {r['flops'] / 1e15:9.2f} "
            f"{r['device_hours']:9.3g} {r['energy_kwh']:8.3g}  {r['device']} ({r['method']})"
        )
    return "\n".join(lines)
