"""Is this CUDA machine ready for the full study?  (make gpu-check)

1. driver: torch's CUDA build, the driver, the device, and a bf16 matrix product checked against the CPU;
2. resume: `scaleaudit train` (ResNet-18 at 28 px, the study's GPU arm) is stopped with SIGTERM after its
   checkpoint of epoch 2 of 4, started again, and must end exactly where an uninterrupted run ends
   (hardware.determinism: deterministic);
3. speed: benchmarks/bench_train.py on the same device: 28 px ResNet-18 against the MedMNIST v2 reference
   loop, ViT-S/16 / ViT-B/16 at 224 px in bf16 with their share of the dense bf16 peak, and the aggregate
   28 px images/s of 1, 2, 4 and 8 runs sharing the GPU.

One table at the end. Exit 1 when a correctness check fails (speed targets are reported, not enforced);
on a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import bench_train  # noqa: E402 - the benchmark's data lookup and environment

# The targets, measured on a GPU (reported beside the figures, never asserted).
TARGET_RESNET_RATIO = 10.0
TARGET_VIT_B_SHARE = 0.35
TARGET_SHARED_GAIN = 4.0


def driver_rows(device: str) -> list[tuple[str, str, bool]]:
    import torch

    name = torch.cuda.get_device_name(0)
    cap = ".".join(map(str, torch.cuda.get_device_capability(0)))
    mem = torch.cuda.get_device_properties(0).total_memory / 2**30
    try:
        driver = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout.strip()
            or "?"
        )
    except (OSError, subprocess.TimeoutExpired):
        driver = "? (no nvidia-smi)"
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    on_gpu = (a.to(device, torch.bfloat16) @ b.to(device, torch.bfloat16)).float().cpu()
    err = float((on_gpu - a @ b).abs().max() / (a @ b).abs().max())
    return [
        ("device", f"{name}, compute capability {cap}, {mem:.0f} GiB", True),
        (
            "driver / CUDA",
            f"driver {driver}; torch {torch.__version__} built for CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}",
            True,
        ),
        (
            "bf16 matmul vs CPU",
            f"max relative error {err:.1e} (bf16 supported: {torch.cuda.is_bf16_supported()})",
            err < 0.05,
        ),
    ]


def _train_cmd(job: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scaleaudit",
        "train",
        "--spec",
        f"@{job / 'spec.json'}",
        "--data",
        str(job / "data.json"),
        "--out",
        str(out),
        "--threads",
        "1",
        "--checkpoint-every",
        "0",
    ]


def _checkpoint_epoch(out: Path) -> int:
    import torch

    path = out / "checkpoint.pt"
    try:
        return torch.load(path, weights_only=True, map_location="cpu")["state"]["epoch"] if path.exists() else 0
    except (RuntimeError, EOFError):  # replaced atomically, but a reader may race the rename on some filesystems
        return 0


def _outcome(out: Path) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    with np.load(out / "predictions.npz") as pred:
        probs = pred["probabilities"].tolist()
    return {
        "history": [{k: v for k, v in r.items() if k != "seconds"} for r in m["history"]],
        "val": m["val"],
        "test": m["test"],
        "best_epoch": m["best_epoch"],
        "probabilities": probs,
    }


def resume_check(
    device: str,
    data_file: Path,
    workdir: Path,
    model: str = "scaleaudit_resnet18_cifar",
    epochs: int = 4,
    stop_after: int = 2,
) -> tuple[str, str, bool]:
    """SIGTERM after the checkpoint of epoch ``stop_after``, resume, compare with an uninterrupted run."""
    from scaleaudit import config, files

    job = workdir / "resume"
    job.mkdir(parents=True, exist_ok=True)
    record = {
        "file": str(data_file),
        "source": str(data_file),
        "sha256": files.file_digest(data_file),
        "verified_against": "none (gpu-check)",
        "synthetic": True,
    }
    files.write_json(job / "data.json", record)
    cfg = bench_train.study_config("breastmnist", model, None, epochs, 128, 0, device, "auto")
    files.write_json(job / "spec.json", config.run_spec(cfg, "breastmnist", 28, "arm", 1.0, 0).to_dict())
    env = bench_train._env()
    label = f"SIGTERM after epoch {stop_after} of {epochs}, resume"

    straight = subprocess.run(_train_cmd(job, job / "straight"), env=env, capture_output=True, text=True)
    if straight.returncode:
        return label, f"uninterrupted run failed: {straight.stderr.strip().splitlines()[-1]}", False
    out = job / "interrupted"
    proc = subprocess.Popen(_train_cmd(job, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while _checkpoint_epoch(out) < stop_after and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=600)[0]
    if proc.returncode == 0:
        return label, "inconclusive: the run finished before SIGTERM arrived (use more --images)", False
    if proc.returncode != 128 + signal.SIGTERM:
        return label, f"stopped with exit code {proc.returncode}, not through the SIGTERM handler: {log[-500:]}", False
    stopped_at = _checkpoint_epoch(out)
    resumed = subprocess.run(_train_cmd(job, out), env=env, capture_output=True, text=True)
    if resumed.returncode or f"resuming after epoch {stopped_at}" not in resumed.stderr:
        return label, f"resume failed: {resumed.stderr[-800:]}", False
    a, b = _outcome(job / "straight"), _outcome(out)
    differs = [k for k in a if a[k] != b[k]]
    if differs:
        return label, f"stopped after epoch {stopped_at}; resumed run DIFFERS in {', '.join(differs)}", False
    return label, f"stopped after epoch {stopped_at}; resumed run equals the uninterrupted one exactly", True


def bench_rows(device: str, data_file: Path, workdir: Path, epochs: int, vit_steps: int) -> list[tuple[str, str, bool]]:
    out = workdir / "bench.json"
    cmd = [
        sys.executable,
        str(Path(bench_train.__file__)),
        "--device",
        device,
        "--epochs",
        str(epochs),
        "--no-fp32",
        "--no-startup",
        "--vit",
        "on" if device == "cuda" else "off",
        "--vit-steps",
        str(vit_steps),
        "--data",
        str(data_file),
        "--json",
        str(out),
    ]
    done = subprocess.run(cmd, env=bench_train._env(), text=True)
    if done.returncode:
        return [("benchmark", f"bench_train.py failed (exit {done.returncode})", False)]
    summary = json.loads(out.read_text())
    rows = []
    for flag, r in summary["resnet18_28"].items():
        met = "meets" if r["step_ratio"] >= TARGET_RESNET_RATIO else "below"
        rows.append(
            (
                f"ResNet-18 28 px vs reference ({flag})",
                f"{r['images_per_s']:.0f} vs {r['reference_images_per_s']:.0f} img/s: {r['step_ratio']:.1f}x step, "
                f"{r['epoch_ratio']:.1f}x per epoch ({met} the {TARGET_RESNET_RATIO:.0f}x target)",
                True,
            )
        )
    for r in summary["vit"]:
        share = r["achieved_flops"] / r["bf16_peak"] if r["bf16_peak"] else None
        text = f"{r['images_per_s']:.0f} img/s, {r['achieved_flops'] / 1e12:.0f} TFLOP/s, " + (
            f"{share:.1%} of dense bf16 peak" if share is not None else "peak unknown (add the device to devices.py)"
        )
        if "vit_base" in r["model"] and share is not None:
            text += f" ({'meets' if share >= TARGET_VIT_B_SHARE else 'below'} the {TARGET_VIT_B_SHARE:.0%} target)"
        rows.append((f"{r['model']} 224 px bf16, batch {r['batch_size']} x {r['steps']} steps", text, True))
    shared = summary.get("shared") or {}
    if "1" in shared and len(shared) > 1:
        most = max(shared, key=int)
        gain = shared[most] / shared["1"]
        rows.append(
            (
                "28 px ResNet-18 runs sharing the GPU",
                ", ".join(f"{n} at once: {rate:.0f}" for n, rate in shared.items()) + f" img/s in all; {gain:.1f}x "
                f"with {most} ({'meets' if gain >= TARGET_SHARED_GAIN else 'below'} the {TARGET_SHARED_GAIN:.0f}x target)",
                True,
            )
        )
    return rows


def print_table(rows: list[tuple[str, str, bool]]) -> None:
    width = max(len(r[0]) for r in rows)
    print("\ngpu-check")
    print(f"  {'check':{width}}  {'ok':4}  result")
    for check, result, ok in rows:
        print(f"  {check:{width}}  {'ok' if ok else 'FAIL':4}  {result}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: try the checks without a GPU")
    p.add_argument("--images", type=int, default=20000, help="synthetic training images when no mirror is staged")
    p.add_argument("--epochs", type=int, default=5, help="benchmark epochs per side")
    p.add_argument("--vit-steps", type=int, default=100, help="timed ViT steps")
    p.add_argument("--no-bench", dest="bench", action="store_false", help="skip the speed benchmarks")
    args = p.parse_args(argv)

    import torch

    from scaleaudit import runtime

    if args.device == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA on this machine, nothing to check ({runtime.cuda_diagnosis()})")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        from scaleaudit import synthetic

        synthetic_npz = synthetic.write_npz(tmp / "breastmnist.npz", splits=synthetic.small_splits(args.images))
        rows = driver_rows(args.device) if args.device == "cuda" else []
        rows.append(resume_check(args.device, synthetic_npz, tmp))
        if args.bench:
            mirror = Path(os.environ.get("SCALEAUDIT_MIRROR") or bench_train.DEFAULT_MIRROR) / "breastmnist.npz"
            stand_in = synthetic.write_npz(tmp / "breastmnist_bench.npz")  # the real split lengths
            rows += bench_rows(args.device, mirror if mirror.exists() else stand_in, tmp, args.epochs, args.vit_steps)
    print_table(rows)
    return 0 if all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
