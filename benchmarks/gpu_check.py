"""Is this machine ready for the full study?  One command, one table:

    PYTHONPATH=src python3 benchmarks/gpu_check.py        (or: make gpu-check)

It needs only what a CUDA image carries (torch, timm, numpy, scipy, pandas, safetensors, scikit-learn, pyyaml):
no pip install, no network; jsonschema, codecarbon, mlflow and snakemake are not needed (without codecarbon the
runs' energy is not measured; the table says so).

1. versions, the device, a bf16 matrix product against float64 and (CUDA) the bf16 GEMM ceiling against the
   device's dense bf16 peak;
2. one training step of every arm of config/config.yaml under strict determinism (a probe: its backbone's pass);
3. two identical runs bitwise equal (ResNet-18, or the small CNN on a CPU, and ViT-Ti), and a run stopped with
   SIGTERM after its checkpoint of epoch 1 of 3 and resumed equal to an uninterrupted one (hardware.determinism: deterministic);
4. the kNN probe's search on PathMNIST-sized ViT-B features (scaled from a smaller size on the CPU);
5. speed (benchmarks/bench_train.py): 28 px ResNet-18 (the small CNN on a CPU) against the MedMNIST v2 reference
   loop on a stand-in with PathMNIST's split lengths (BreastMNIST's on a CPU), ViT-Ti/S/B at 224 px in bf16 with their share of the dense bf16 peak beside the
   plan's assumed share, and the aggregate 28 px images/s of 1, 2, 4 and 8 runs started together behind a barrier
   and timed over one shared window (the GPU time-sliced between processes; MPS is not started).

``--out FILE`` also writes the measured figures as JSON (``write_figures``: the device, each ViT's share of the dense
bf16 peak, the kNN search's FLOP/s), which ``scaleaudit plan --gpu-check FILE`` uses in place of its assumptions.

Exit 1 when a correctness check fails (speed targets are reported, not enforced). Without CUDA it runs every check
on the CPU at a small size (a couple of minutes) and prints the same table.
"""

from __future__ import annotations

import argparse
import importlib.util
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
TARGET_SHARED_GAIN = 4.0
# What each check runs: on CUDA the study's sizes (about 8 minutes on an H100), on a CPU small ones (minutes).
SIZES = {
    "cuda": {
        "images": 20000,  # the resume and bitwise-equality runs
        "model": "scaleaudit_resnet18_cifar",
        "vit_twice": True,  # the bitwise-equality runs of ViT-Ti too
        "bench_model": "scaleaudit_resnet18_cifar",
        "epochs": 2,
        "warmup": 10,
        "vit_steps": 50,
        "shared": [1, 2, 4, 8],
        "window": 10.0,
        "bench_flag": "pathmnist",
        "arm_batch": 8,
        "knn": (89_996, 7_180),
    },
    "cpu": {  # every process start costs seconds here: as few as each check needs
        "images": 1500,
        "model": "scaleaudit_cnn_small",
        "vit_twice": False,
        "bench_model": "scaleaudit_cnn_small",
        "epochs": 1,
        "warmup": 2,
        "vit_steps": 2,
        "shared": [1, 2],
        "window": 2.0,
        "bench_flag": "breastmnist",
        "arm_batch": 1,
        "knn": (4000, 400),
    },
}


def environment_rows(device: str) -> list[tuple[str, str, bool]]:
    """Versions, the device, bf16 against float64, and on CUDA the bf16 GEMM ceiling."""
    import timm
    import torch

    from scaleaudit import devices

    energy = "measured (codecarbon)" if importlib.util.find_spec("codecarbon") else "not measured: no codecarbon"
    rows = [
        (
            "versions",
            f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}, cuDNN "
            f"{torch.backends.cudnn.version()}), timm {timm.__version__}, numpy {np.__version__}; energy {energy}",
            True,
        )
    ]
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        cap = ".".join(map(str, torch.cuda.get_device_capability(0)))
        mem = torch.cuda.get_device_properties(0).total_memory / 2**30
        rows.append(("device", f"{name}, compute capability {cap}, {mem:.0f} GiB, driver {_driver()}", True))
    else:
        name = devices.current("cpu")["name"]
        rows.append(("device", f"{name}, {os.cpu_count()} CPUs (no CUDA: every check on the CPU)", True))
    a, b = torch.randn(512, 512, dtype=torch.float64), torch.randn(512, 512, dtype=torch.float64)
    exact = a @ b
    low = (a.to(device, torch.bfloat16) @ b.to(device, torch.bfloat16)).double().cpu()
    err = float((low - exact).abs().max() / exact.abs().max())
    rows.append(("bf16 matmul vs float64", f"max relative error {err:.1e}", err < 0.05))
    if device == "cuda":
        n, reps = 8192, 20
        x, y = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
        x @ y
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            x @ y
        torch.cuda.synchronize()
        rate = 2 * n**3 * reps / (time.perf_counter() - t0)
        peak = devices.bf16_peak(name)
        share = f", {rate / peak:.0%} of the {peak / 1e12:.0f} TFLOP/s dense bf16 peak" if peak else ""
        rows.append(("bf16 GEMM ceiling", f"{rate / 1e12:.0f} TFLOP/s ({n}^3){share}", True))
    return rows


def _driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "? (no nvidia-smi)"


def arm_step_rows(device: str, data_file: Path, batch: int) -> list[tuple[str, str, bool]]:
    """One training step of every arm of the full config under strict determinism (a probe: its backbone's
    forward pass, all it runs on the device), from random weights: which ops raise without a deterministic kernel."""
    import torch

    from scaleaudit import config, features, runtime, train

    cfg = config.load(REPO / "config" / "config.yaml")
    done, failed = [], []
    for name in cfg["arms"]:
        spec = config.run_spec(cfg, "breastmnist", 28, name, 1.0, 0)
        spec = spec.with_changes(
            arm_spec=dict(spec.arm_spec, pretrained=False),
            hardware=dict(spec.hardware, determinism="deterministic"),
            device=device,
        )
        try:
            runtime.configure_torch(0, None, "deterministic")
            trainer = train.Trainer(spec, data_file, None, torch.device(device), log=lambda m: None)
            x, y = (t[:batch] for t in trainer.tensors["train"])
            if trainer.cached_features:
                features.compute(trainer.model, trainer.transform, x, batch, trainer.autocast)
            else:
                trainer.train_step(x, y)
            if device == "cuda":
                torch.cuda.synchronize()
            done.append(name)
        except Exception as exc:
            failed.append(f"{name}: {str(exc).splitlines()[0][:200]}")
        finally:
            runtime.configure_torch(0, None, "fast")  # back to the default policy for the next checks
    text = f"{len(done)} arms stepped" + (f"; FAILED {'; '.join(failed)}" if failed else "")
    return [(f"one strict-determinism step of every arm (batch {batch})", text, not failed)]


def knn_row(device: str, support: int, queries: int, figures: dict) -> tuple[str, str, bool]:
    """The kNN probe's search (knn.Index) on random 768-d features, scaled to PathMNIST's ViT-B vote; its FLOP/s
    go to ``figures``."""
    import torch

    from scaleaudit import cost, knn

    gen = torch.Generator().manual_seed(0)
    s, q = torch.randn(support, 768, generator=gen), torch.randn(queries, 768, generator=gen)
    labels = torch.randint(0, 9, (support,), generator=gen).numpy()

    def search() -> float:
        t0 = time.perf_counter()
        knn.Index(s.to(device), labels, knn.K, "multi-class", 9).neighbours(q.to(device))
        return time.perf_counter() - t0

    search()
    measured = search()
    figures["knn_flops_per_s"] = cost.knn_vote(queries, support, 768, 1.0)[0] / measured
    seconds = measured * (89_996 * 7_180) / (support * queries)
    scaled = "" if (support, queries) == (89_996, 7_180) else f" (scaled from {support} x {queries})"
    return "kNN search, PathMNIST ViT-B features", f"{seconds:.1f} s for 89,996 x 7,180 x 768{scaled}", True


def write_figures(path: str | Path, figures: dict) -> None:
    """The check's measured figures for ``scaleaudit plan --gpu-check``: ``device`` (CUDA's name for it), ``vit``
    (per model: batch_size, images_per_s, share_of_peak, None where the peak is unknown) and ``knn_flops_per_s``."""
    from scaleaudit import files

    files.write_json(path, {"vit": [], **figures})  # no ViT figures without the benchmarks (--no-bench)


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


def _job(workdir: Path, name: str, data_file: Path, device: str, model: str, input_size: int | None, epochs: int):
    """A one-run study's spec and data record in ``workdir/name`` (the files ``scaleaudit train`` reads)."""
    from scaleaudit import config, files

    job = workdir / name
    job.mkdir(parents=True, exist_ok=True)
    record = {
        "file": str(data_file),
        "source": str(data_file),
        "sha256": files.file_digest(data_file),
        "verified_against": "none (gpu-check)",
        "synthetic": True,
    }
    files.write_json(job / "data.json", record)
    cfg = bench_train.study_config("breastmnist", model, input_size, epochs, 128, 0, device, "auto")
    files.write_json(job / "spec.json", config.run_spec(cfg, "breastmnist", 28, "arm", 1.0, 0).to_dict())
    return job


def identical_runs_row(
    device: str, data_file: Path, workdir: Path, model: str, input_size: int | None = None, epochs: int = 2
) -> tuple[str, str, bool]:
    """Two runs of the same spec, one after the other: bitwise the same history, scores and predictions."""
    job = _job(workdir, f"twice-{model}", data_file, device, model, input_size, epochs)
    label = f"two identical runs bitwise equal ({model}{f' at {input_size} px' if input_size else ''})"
    for out in ("a", "b"):
        done = subprocess.run(_train_cmd(job, job / out), env=bench_train._env(), capture_output=True, text=True)
        if done.returncode:
            return label, f"run failed: {done.stderr.strip().splitlines()[-1]}", False
    a, b = _outcome(job / "a"), _outcome(job / "b")
    differs = [k for k in a if a[k] != b[k]]
    return label, f"DIFFER in {', '.join(differs)}" if differs else f"equal over {epochs} epochs", not differs


def resume_check(
    device: str,
    data_file: Path,
    workdir: Path,
    model: str = "scaleaudit_resnet18_cifar",
    epochs: int = 4,
    stop_after: int = 2,
) -> list[tuple[str, str, bool]]:
    """Two identical runs bitwise equal; then SIGTERM after the checkpoint of epoch ``stop_after``, resume, and
    compare with them."""
    twice = identical_runs_row(device, data_file, workdir, model, None, epochs)
    job = workdir / f"twice-{model}"
    env = bench_train._env()
    label = f"SIGTERM after epoch {stop_after} of {epochs}, resume"
    if not twice[2]:
        return [twice, (label, "not run: the uninterrupted runs failed or differ", False)]
    out = job / "interrupted"
    proc = subprocess.Popen(_train_cmd(job, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while _checkpoint_epoch(out) < stop_after and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=600)[0]
    if proc.returncode == 0:
        return [twice, (label, "inconclusive: the run finished before SIGTERM arrived (use more images)", False)]
    if proc.returncode != 128 + signal.SIGTERM:
        why = f"stopped with exit code {proc.returncode}, not through the SIGTERM handler: {log[-500:]}"
        return [twice, (label, why, False)]
    stopped_at = _checkpoint_epoch(out)
    resumed = subprocess.run(_train_cmd(job, out), env=env, capture_output=True, text=True)
    if resumed.returncode or f"resuming after epoch {stopped_at}" not in resumed.stderr:
        return [twice, (label, f"resume failed: {resumed.stderr[-800:]}", False)]
    a, b = _outcome(job / "a"), _outcome(out)
    differs = [k for k in a if a[k] != b[k]]
    if differs:
        return [twice, (label, f"stopped after epoch {stopped_at}; resumed run DIFFERS in {', '.join(differs)}", False)]
    return [twice, (label, f"stopped after epoch {stopped_at}; resumed run equals the uninterrupted one exactly", True)]


def bench_rows(
    device: str, flag: str, data_file: Path, workdir: Path, sizes: dict, figures: dict
) -> list[tuple[str, str, bool]]:
    """The speed benchmarks (bench_train.py) as rows; each ViT's share of the dense bf16 peak goes to ``figures``."""
    from scaleaudit import devices

    out = workdir / "bench.json"
    cmd = [
        sys.executable,
        str(Path(bench_train.__file__)),
        "--device",
        device,
        "--datasets",
        flag,
        "--epochs",
        str(sizes["epochs"]),
        "--model",
        sizes["bench_model"],
        "--warmup",
        str(sizes["warmup"]),
        "--no-fp32",
        "--no-startup",
        "--vit",
        "on" if device == "cuda" else "off",
        "--vit-steps",
        str(sizes["vit_steps"]),
        "--shared",
        *map(str, sizes["shared"]),
        "--shared-window",
        str(sizes["window"]),
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
                f"{sizes['bench_model']} 28 px vs reference ({flag})",
                f"{r['images_per_s']:.0f} vs {r['reference_images_per_s']:.0f} img/s: {r['step_ratio']:.1f}x step, "
                f"{r['epoch_ratio']:.1f}x per epoch ({met} the {TARGET_RESNET_RATIO:.0f}x target)",
                True,
            )
        )
    figures["vit"] = []
    for r in summary["vit"]:
        share = r["achieved_flops"] / r["bf16_peak"] if r["bf16_peak"] else None
        figures["vit"].append(
            {
                "model": r["model"],
                "batch_size": r["batch_size"],
                "images_per_s": r["images_per_s"],
                "share_of_peak": share,
            }
        )
        text = f"{r['images_per_s']:.0f} img/s, {r['achieved_flops'] / 1e12:.0f} TFLOP/s, " + (
            f"{share:.1%} of dense bf16 peak (the plan assumes {devices.DEFAULT_UTILIZATION:.0%})"
            if share is not None
            else "peak unknown (add the device to devices.py)"
        )
        rows.append((f"{r['model']} 224 px bf16, batch {r['batch_size']} x {r['steps']} steps", text, True))
    shared = summary.get("shared") or {}
    if "1" in shared and len(shared) > 1:
        most = max(shared, key=int)
        gain = shared[most] / shared["1"]
        rows.append(
            (
                f"28 px {sizes['bench_model']} runs sharing the {device}, one {sizes['window']:g} s window after a barrier",
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
    p.add_argument("--device", choices=["cuda", "cpu"], help="default: cuda when visible, else the CPU at small sizes")
    p.add_argument("--no-bench", dest="bench", action="store_false", help="skip the speed benchmarks")
    p.add_argument("--out", help="also write the measured figures as JSON (for scaleaudit plan --gpu-check)")
    args = p.parse_args(argv)

    import torch

    from scaleaudit import devices, runtime

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA on this machine, nothing to check ({runtime.cuda_diagnosis()})")
        return 0
    if device == "cpu":
        print(f"gpu-check on the CPU at small sizes ({runtime.cuda_diagnosis()})", flush=True)
    sizes = SIZES[device]
    figures = {"device": devices.current(device)["name"]}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        from scaleaudit import synthetic

        small = synthetic.write_npz(tmp / "breastmnist.npz", splits=synthetic.small_splits(sizes["images"]))
        stand_in = synthetic.write_npz(tmp / "breastmnist_real_lengths.npz")  # BreastMNIST's split lengths
        checks = [
            lambda: environment_rows(device),
            lambda: arm_step_rows(device, stand_in, sizes["arm_batch"]),
            lambda: resume_check(device, small, tmp, sizes["model"], epochs=3, stop_after=1),
            lambda: [knn_row(device, *sizes["knn"], figures)],
        ]
        if sizes["vit_twice"]:
            checks.append(lambda: [identical_runs_row(device, small, tmp, "vit_tiny_patch16_224", input_size=32)])
        if args.bench:
            flag = sizes["bench_flag"]
            bench_data = synthetic.write_npz(tmp / f"{flag}.npz", flag=flag)  # the dataset's own split lengths
            checks.append(lambda: bench_rows(device, flag, bench_data, tmp, sizes, figures))
        rows = []
        for check in checks:
            t0 = time.perf_counter()
            rows += check()
            print(f"gpu-check: {rows[-1][0]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print_table(rows)
    if args.out:
        write_figures(args.out, figures)
        print(f"figures: {args.out}")
    return 0 if all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
