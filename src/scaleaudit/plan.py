"""What a study will cost, before it starts: runs, FLOPs, device-hours and energy per arm and dataset.

FLOPs come from torch's counter on each arm's model (cost.flops_per_image) times the images the
recipe trains and evaluates. Time comes from a short calibration: a few training steps of each arm's
real training path (Trainer.train_step on a synthetic batch) on the device its runs will use. Where
that device is a GPU and this machine has none, time is FLOPs over a share of a named GPU's dense
bf16 peak (devices.py) instead, and the plan says so. Energy is time times the device's board power
(a data-sheet upper bound) or, on a CPU, an assumed draw per thread.

Early stopping can only shorten a run, so the plan is an upper bound for recipes that stop early.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

from . import config as study_config
from . import data, devices, synthetic
from .errors import ScaleauditError

LAUNCH_S = 8e-6  # eager PyTorch: host time per dispatched op, the floor of a launch-bound GPU step
EVAL_SHARE = 1 / 3  # an inference image costs about a third of a training image (forward only)
STARTUP_S = 20.0  # per run: process start, data to the device, model build, first kernels
DEFAULT_GPU = "NVIDIA H100 80GB HBM3"
DEFAULT_UTILIZATION = 0.35
CPU_CALIBRATION_BATCH = 16  # keeps a CPU calibration of a ViT-B short; GPUs use the recipe's batch
PLAN_FILE = "plan.json"


def evaluations(recipe: dict) -> int:
    """Validation passes during training: every ``eval_every`` epochs and after the last."""
    epochs, every = recipe["epochs"], recipe["eval_every"]
    return epochs // every + (epochs % every != 0)


def images_per_run(recipe: dict, n_train: int, n_val: int, n_test: int) -> tuple[int, int]:
    """(training images, inference images) of one run that runs every epoch; the final test re-evaluates val."""
    return n_train * recipe["epochs"], n_val * (evaluations(recipe) + 1) + n_test


def train_factor(arm: dict) -> int:
    """Training FLOPs per image in forward passes: 3 (forward + backward), 1 for a frozen backbone (head only)."""
    return 1 if arm["train"] == "linear_probe" else 3


def n_train_of(flag: str, fraction: float) -> int:
    return max(1, round(data.info(flag)["n_samples"]["train"] * fraction))


def calibrate(spec: dict, device, steps: int, batch: int) -> dict:
    """Seconds per training image of a run's real training path, timed over ``steps`` steps after one warm-up."""
    import torch

    from . import features, train

    with tempfile.TemporaryDirectory(prefix="scaleaudit-plan-") as tmp:
        path = synthetic.write_npz(
            Path(tmp) / "calibration.npz", spec["dataset"], synthetic.small_splits(batch), spec["size"]
        )
        spec = dict(
            spec,
            fraction=1.0,
            arm_spec=dict(spec["arm_spec"], pretrained=False),
            recipe=dict(spec["recipe"], batch_size=batch),
        )
        trainer = train.Trainer(spec, path, None, device, log=lambda msg: None, synthetic=True)
        trainer.prepare()  # a probe's steps take features
        raw = train._on_device(
            data.load_splits(path, spec["dataset"], spec["size"], synthetic=True)["train"][0], device
        )
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

    train_step = lambda: trainer.train_step(x, y)  # noqa: E731
    forward = lambda: features.compute(trainer.model, trainer.transform, raw, batch, trainer.autocast)  # noqa: E731
    timed(train_step, 1)
    timed(forward, 1)
    return {
        "seconds_per_image": timed(train_step, steps) / (steps * batch),
        "forward_seconds_per_image": timed(forward, steps) / (steps * batch),
        "batch": batch,
        "steps": steps,
    }


def count_step(spec: dict) -> dict:
    """Forward FLOPs per image, and the ATen ops one training step dispatches (forward, loss, backward, fused
    optimiser): each op is at least one kernel launch, which bounds a small model's step time on a GPU."""
    import torch
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode

    from . import cost, models

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.n += not func.is_view  # views launch no kernel
            return func(*args, **(kwargs or {}))

    meta = data.info(spec["dataset"])
    arm = dict(spec["arm_spec"], pretrained=False)
    size, chans = arm["input_size"] or spec["size"], 3 if spec["recipe"].get("rgb") else meta["n_channels"]
    with torch.device("meta"):  # counting needs shapes, not weights
        model = models.build(arm, meta["n_classes"], chans, size)
        x, y = torch.zeros(2, chans, size, size), torch.zeros(2, dtype=torch.long)
    with Ops() as ops:
        F.cross_entropy(model(x), y).backward()
    fused_optimizer_ops = 2
    return {"flops_per_image": cost.flops_per_image(model, chans, size), "ops_per_step": ops.n + fused_optimizer_ops}


def make(
    config: dict,
    calibrate_steps: int = 2,
    gpu_name: str | None = None,
    utilization: float = DEFAULT_UTILIZATION,
    threads: int = 1,
    log=print,
) -> dict:
    """The plan of a validated study config (see the module docstring)."""
    import torch

    from . import features, train

    here_cuda = torch.cuda.is_available()
    gpu = gpu_name or (torch.cuda.get_device_name(0) if here_cuda else DEFAULT_GPU)
    train.configure_torch(0, threads, config["hardware"]["determinism"])  # time what the runs will run
    rows, cache = [], {}
    fractions, seeds = config["design"]["fractions"], study_config.seeds(config)
    for entry in config["data"]["datasets"]:
        for size in entry["sizes"]:
            for arm_name in config["design"]["arms"]:
                spec = study_config.run_spec(config, entry["flag"], size, arm_name, fractions[0], seeds[0])
                arm, recipe, meta = spec["arm_spec"], spec["recipe"], data.info(entry["flag"])
                on_gpu = spec["device"] == "cuda"
                # runs sharing a GPU overlap their launches and start-ups, not their arithmetic
                share = config["arms"][arm_name]["resources"].get("runs_per_gpu", 1) if on_gpu else 1
                measured_here = calibrate_steps > 0 and (not on_gpu or (here_cuda and gpu_name is None))
                key = (arm_name, meta["n_channels"], meta["n_classes"], size)
                if key not in cache:
                    cache[key] = counted = count_step(spec)
                    batch = recipe["batch_size"]
                    if measured_here:
                        device = torch.device("cuda" if on_gpu else "cpu")
                        batch = batch if on_gpu else min(batch, CPU_CALIBRATION_BATCH)
                        log(
                            f"plan: calibrating {arm_name} at {size} px on {device} ({calibrate_steps} steps of {batch})"
                        )
                        counted |= calibrate(spec, device, calibrate_steps, batch) | {"method": f"measured on {device}"}
                    elif on_gpu:
                        peak = devices.bf16_peak(gpu)
                        if peak is None:
                            raise ScaleauditError(
                                f"no dense bf16 peak is known for the GPU {gpu!r}",
                                "name one listed in src/scaleaudit/devices.py (--gpu), or add it there",
                            )
                        arithmetic = train_factor(arm) * counted["flops_per_image"] / (peak * utilization)
                        launches = counted["ops_per_step"] * LAUNCH_S / batch / share
                        counted |= {
                            "seconds_per_image": max(arithmetic, launches),
                            "forward_seconds_per_image": counted["flops_per_image"] / (peak * utilization),
                            "method": f"{utilization:.0%} of {gpu} bf16 peak"
                            + (", launch-bound" if launches > arithmetic else ""),
                        }
                    else:
                        counted |= {
                            "seconds_per_image": math.nan,
                            "forward_seconds_per_image": math.nan,
                            "method": "not calibrated",
                        }
                cal = cache[key]
                n_val, n_test = meta["n_samples"]["val"], meta["n_samples"]["test"]
                watts = (devices.board_power(gpu) or math.nan) if on_gpu else devices.CPU_WATTS_PER_THREAD * threads
                eval_share = 1.0 if arm["train"] == "linear_probe" else EVAL_SHARE
                flops = seconds = 0.0
                if features.usable(spec):  # the backbone's features once per dataset, then head-only steps
                    n_all = sum(meta["n_samples"].values())
                    flops = cal["flops_per_image"] * n_all
                    seconds = cal["forward_seconds_per_image"] * n_all
                for fraction in fractions:
                    trained, inferred = images_per_run(recipe, n_train_of(entry["flag"], fraction), n_val, n_test)
                    if features.usable(spec):  # a linear layer on cached features: start-up dominates
                        seconds += len(seeds) * STARTUP_S
                        continue
                    flops += len(seeds) * cal["flops_per_image"] * (train_factor(arm) * trained + inferred)
                    seconds += len(seeds) * (
                        cal["seconds_per_image"] * (trained + eval_share * inferred) + STARTUP_S / share
                    )
                rows.append(
                    {
                        "arm": arm_name,
                        "dataset": entry["flag"],
                        "size": int(size),
                        "runs": len(fractions) * len(seeds),
                        "flops": flops,
                        "device": gpu if on_gpu else "cpu",
                        "device_hours": seconds / 3600,
                        "energy_kwh": seconds / 3600 * watts / 1000,
                        "method": cal["method"],
                        "early_stopping": recipe["early_stop_patience"] is not None,
                        "runs_per_gpu": share,
                    }
                )
    total = {k: sum(r[k] for r in rows) for k in ("runs", "flops", "device_hours", "energy_kwh")}
    return {
        "study": config["study"],
        "rows": rows,
        "total": total,
        "gpu": gpu,
        "utilization": utilization,
        "startup_s": STARTUP_S,
        "cuda_here": here_cuda,
        "cuda_diagnosis": None if here_cuda else train.cuda_diagnosis(),
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


def versus_measured(plan: dict, measured: dict) -> str:
    """The estimate set against what the study's runs measured (device-hours include per-run start-up in the plan)."""
    est = plan["total"]
    text = (
        f"Before the study started, scaleaudit plan estimated {est['device_hours']:.3g} device-hours and "
        f"{est['energy_kwh']:.3g} kWh for {est['runs']} runs; the {measured['runs']} runs measured "
        f"{measured['device_hours']:.3g} device-hours and {measured['energy_kwh']:.3g} kWh"
    )
    if est["runs"] == measured["runs"] and measured["device_hours"] > 0 and measured["energy_kwh"] > 0:
        text += (
            f" (estimate / measured: {est['device_hours'] / measured['device_hours']:.2f}x in time, "
            f"{est['energy_kwh'] / measured['energy_kwh']:.2f}x in energy)"
        )
    return (
        text
        + f"; the estimate counts {plan['startup_s']:.0f} s of start-up per run, the measurement training time only."
    )


def default_path(config: dict) -> Path:
    return Path("results") / config["study"] / PLAN_FILE
