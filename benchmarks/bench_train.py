"""scaleaudit's training path against the MedMNIST v2 reference trainer: same model, data, epochs, batch.

    python benchmarks/bench_train.py            (or: make bench)

Each side trains ResNet-18 (CIFAR stem, ``scaleaudit_resnet18_cifar``) at 28 px on real BreastMNIST
in a fresh subprocess of this run, one after the other, with the same seed, epochs, batch size and
torch threads. Per epoch the two sides do what their trainers do:

- reference (benchmarks/reference.py): PIL images through torchvision ToTensor + Normalize in a
  DataLoader, fp32, then an evaluation of train, val and test;
- scaleaudit (Trainer.fit): uint8 split tensors on the device, batched transforms, bf16 autocast +
  channels_last where the hardware pays for it (``hardware.precision: auto``), validation on the
  recipe's cadence (every epoch here) and a checkpoint. The same path in fp32 is shown too.

Both sides run on ``--device`` (default: cuda when visible, else cpu). Printed: training-step images/s
and its ratio (the training loop alone), per-epoch wall time and its ratio (everything each trainer does
per epoch), test AUC, peak memory; the import time of ``scaleaudit.train``; seconds from process start to
the first training step of ``scaleaudit train``; and with CUDA (or ``--vit on``), ViT-S/16 from scratch
and ViT-B/16 fine-tuning at 224 px: ``--vit-steps`` timed training steps after a warm-up, at the study's
batch sizes, with the share of the device's dense bf16 peak they reach (src/scaleaudit/devices.py).
``--json`` also writes these figures for ``make gpu-check``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = REPO.parent / "shared" / "data" / "medmnist"
# The report stack, experiment tracking and sklearn's pandas: none belongs in a training job's start-up.
REPORT_STACK = ("matplotlib", "seaborn", "typst", "pandas", "mlflow")
# The transformers timed step by step: (model, batch size of its recipe in config/config.yaml).
VIT_RUNS = (("vit_tiny_patch16_224", 128), ("vit_small_patch16_224", 128), ("vit_base_patch16_224", 64))
SYNC_EVERY = 5  # steps between synchronisations of a shared run: its count stays within 5 steps of the work done
FIRST_STEP_CHILD = """\
import os, sys, time
from scaleaudit import cli, train
def first_step(self):
    print("FIRST_STEP", repr(time.time()), flush=True)
    os._exit(0)
train.Trainer.train_epoch = first_step
sys.exit(cli.main(sys.argv[1:]))
"""


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    return env | {"HF_HUB_OFFLINE": "1"}


def data_file(flag: str, explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit)
    mirror = Path(os.environ.get("SCALEAUDIT_MIRROR") or DEFAULT_MIRROR)
    path = mirror / f"{flag}.npz"
    if not path.exists():
        sys.exit(f"bench: no {path}; stage the MedMNIST file there or set SCALEAUDIT_MIRROR (or pass --data)")
    return path


def study_config(
    flag: str,
    model: str,
    input_size: int | None,
    epochs: int,
    batch_size: int,
    seed: int,
    device: str,
    precision: str,
    determinism: str = "deterministic",
) -> dict:
    """A one-run study with the MedMNIST v2 recipe (Adam 1e-3, x0.1 at 50% and 75%, no augmentation)."""
    from scaleaudit import config

    return config.validate(
        {
            "study": "bench",
            "data": {"datasets": [{"flag": flag}]},
            "design": {"arms": ["arm"], "seeds": [seed]},
            "hardware": {"device": device, "precision": precision, "determinism": determinism},
            "recipes": {
                "medmnist_v2": {
                    "optimizer": "adam",
                    "lr": 1e-3,
                    "batch_size": batch_size,
                    "epochs": epochs,
                    "scheduler": "multistep",
                    "milestones": [0.5, 0.75],
                    "gamma": 0.1,
                    "resize": "nearest",
                    "normalize": "half",
                }
            },
            "arms": {"arm": {"model": model, "input_size": input_size, "recipe": "medmnist_v2", "group": "small"}},
        }
    )


def import_profile() -> dict:
    """Seconds to import ``scaleaudit.train`` in a fresh interpreter, and which report-stack modules it loaded."""
    code = (
        "import json, sys, time\nt = time.perf_counter()\nimport scaleaudit.train\n"
        f"print(json.dumps({{'seconds': time.perf_counter() - t, 'loaded': [m for m in {REPORT_STACK!r} if m in sys.modules]}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


# -- one side, run in its own process (clean timings and peak memory) -----------------------------
def _peak_mb(device) -> float:
    from scaleaudit import cost

    return cost.peak_memory_mb(device)


def side_reference(args) -> dict:
    import timm
    import torch

    import scaleaudit.models  # noqa: F401 - registers scaleaudit_resnet18_cifar in timm
    from scaleaudit import data

    sys.path.insert(0, str(Path(__file__).parent))
    import reference

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    splits = data.load_splits(args.data, args.dataset, 28)
    meta = data.info(args.dataset)
    torch.manual_seed(args.seed)
    model = timm.create_model(
        args.model,
        num_classes=meta["n_classes"],
        in_chans=meta["n_channels"],
        **({"img_size": args.input_size} if args.input_size else {}),
    ).to(device)
    out = reference.train_and_eval(
        model,
        splits,
        meta["task"],
        args.epochs,
        args.batch_size,
        seed=args.seed,
        device=device,
        input_size=args.input_size,
    )
    return out | {
        "n_train": len(splits["train"][1]),
        "n_eval": sum(len(splits[s][1]) for s in ("train", "val", "test")),
        "peak_mem_mb": _peak_mb(device),
        "precision": "fp32",
    }


def side_scaleaudit(args) -> dict:
    import torch

    from scaleaudit import config, runtime, train

    cfg = study_config(
        args.dataset,
        args.model,
        args.input_size,
        args.epochs,
        args.batch_size,
        args.seed,
        args.device,
        args.precision,
        args.determinism,
    )
    spec = config.run_spec(cfg, args.dataset, 28, "arm", 1.0, args.seed)
    runtime.configure_torch(args.seed, args.threads, args.determinism)
    device = runtime.pick_device(args.device)
    trainer = train.Trainer(spec, args.data, None, device, log=lambda msg: None)
    history, train_seconds = [], []
    step = trainer.train_epoch

    def timed_epoch() -> float:
        t0 = time.perf_counter()
        loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_seconds.append(time.perf_counter() - t0)
        return loss

    trainer.train_epoch = timed_epoch
    marks = [time.perf_counter()]

    def on_epoch(row: dict) -> None:
        marks.append(time.perf_counter())
        history.append(
            {
                "epoch": row["epoch"],
                "train_loss": row["train_loss"],
                "train_seconds": train_seconds[-1],
                "epoch_seconds": marks[-1] - marks[-2],
                "val_auc": row.get("val_auc"),
            }
        )

    with tempfile.TemporaryDirectory() as tmp:
        trainer.fit(Path(tmp) / train.CHECKPOINT, on_epoch=on_epoch)
    _, test, _ = trainer.test()
    return {
        "history": history,
        "test": test,
        "n_train": trainer.n_train,
        "n_eval": len(trainer.labels["val"]),
        "peak_mem_mb": _peak_mb(device),
        "precision": trainer.precision,
    }


def side_steps(args) -> dict:
    """``args.steps`` training steps of ``args.model`` on one fixed batch after ``args.warmup``; one sync at the end."""
    import torch

    from scaleaudit import config, cost, devices, runtime, train

    cfg = study_config(
        args.dataset,
        args.model,
        args.input_size,
        1,
        args.batch_size,
        args.seed,
        args.device,
        args.precision,
        args.determinism,
    )
    spec = config.run_spec(cfg, args.dataset, 28, "arm", 1.0, args.seed)
    runtime.configure_torch(args.seed, args.threads, args.determinism)
    device = runtime.pick_device(args.device)
    trainer = train.Trainer(spec, args.data, None, device, log=lambda msg: None)
    images, labels = trainer.tensors["train"]
    idx = torch.arange(args.batch_size, device=device) % len(images)
    x, y = images[idx], labels[idx]

    def steps(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            trainer.train_step(x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    steps(args.warmup)
    if args.window:  # one of several runs sharing the device: timed over the window they all share
        return _shared_window(lambda: steps(SYNC_EVERY), SYNC_EVERY * args.batch_size)
    rate = args.steps * args.batch_size / steps(args.steps)
    flops = cost.flops_per_image(trainer.model, trainer.in_chans, trainer.input_size)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else devices.current("cpu")["name"]
    return {
        "model": args.model,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "images_per_s": rate,
        "flops_per_image": flops,
        "achieved_flops": 3 * flops * rate,
        "bf16_peak": devices.bf16_peak(name),
        "device_name": name,
        "precision": trainer.precision,
        "peak_mem_mb": _peak_mb(device),
    }


SIDES = {"reference": side_reference, "scaleaudit": side_scaleaudit, "steps": side_steps}


def _side_argv(args, side: str, overrides: dict) -> list[str]:
    argv = [sys.executable, __file__, "--side", side]
    for key, value in (vars(args) | overrides).items():
        main_only = ("side", "startup", "fp32", "datasets", "vit", "json", "vit_steps", "shared", "shared_window")
        if key in main_only or value is None:
            continue
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _side_result(side: str, out: subprocess.CompletedProcess | tuple) -> dict:
    code, stdout, stderr = out if isinstance(out, tuple) else (out.returncode, out.stdout, out.stderr)
    if code:
        sys.exit(f"bench: the {side} side failed:\n{stderr[-3000:]}")
    return json.loads(stdout.splitlines()[-1])


def run_side(args, side: str, **overrides) -> dict:
    return _side_result(
        side, subprocess.run(_side_argv(args, side, overrides), env=_env(), capture_output=True, text=True)
    )


def _shared_window(steps, images_per_call: int) -> dict:
    """After the warm-up: READY to the parent, then wait for the start time and window end it sends to every run
    (a barrier), and train from that start until the end is passed; the images trained and when they were done."""
    print("READY", flush=True)
    start, end = map(float, sys.stdin.readline().split())
    time.sleep(max(0.0, start - time.time()))
    images = 0
    while time.time() < end:
        steps()  # synchronised: the images counted are trained, not queued
        images += images_per_call
    return {"start": start, "end": time.time(), "images": images}


def aggregate_rate(results: list[dict]) -> float:
    """Images/s of runs that shared the device: all their images over the one window from the common start to the
    last end (per-process rates summed over windows that need not overlap would count runs that never shared)."""
    if len({r["start"] for r in results}) != 1:
        raise ValueError("the runs did not start together behind the barrier")
    return sum(r["images"] for r in results) / (max(r["end"] for r in results) - results[0]["start"])


def run_shared(args, n: int, window: float, **overrides) -> float:
    """Aggregate images/s of ``n`` step-timing processes training at once on the same device (runs sharing a GPU):
    each warms up, then all start together behind a barrier and are timed over the same ``window`` seconds."""
    argv = _side_argv(args, "steps", overrides | {"window": window})
    procs = [
        subprocess.Popen(
            argv, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    for proc in procs:  # the barrier: every run has warmed up
        if proc.stdout.readline().strip() != "READY":
            _side_result("steps", (proc.wait() or 1, "", proc.stderr.read()))
    start = time.time() + 0.1
    for proc in procs:
        proc.stdin.write(f"{start!r} {start + window!r}\n")
        proc.stdin.flush()
    return aggregate_rate([_side_result("steps", (p.wait(), p.stdout.read(), p.stderr.read())) for p in procs])


# -- start-up ----------------------------------------------------------------------------------------
def startup_seconds(flag: str, data_path: Path, tracked: bool) -> float:
    """Process start to the first training step of ``scaleaudit train`` (ResNet-18, as the workflow runs it)."""
    from scaleaudit import config, files

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record = {
            "file": str(data_path),
            "source": str(data_path),
            "sha256": files.file_digest(data_path),
            "verified_against": "none (benchmark)",
        }
        files.write_json(tmp / "data.json", record)
        cfg = study_config(flag, "scaleaudit_resnet18_cifar", None, 1, 128, 0, "auto", "auto")
        files.write_json(tmp / "spec.json", config.run_spec(cfg, flag, 28, "arm", 1.0, 0).to_dict())
        argv = [
            "train",
            "--spec",
            f"@{tmp / 'spec.json'}",
            "--data",
            str(tmp / "data.json"),
            "--out",
            str(tmp / "run"),
            "--threads",
            "1",
        ]
        if tracked:
            import mlflow  # noqa: F401 - it configures its loggers on import

            from scaleaudit import tracking

            logging.getLogger("mlflow").setLevel(logging.WARNING)  # not the store's table creation

            rec = tracking.init_experiment(f"sqlite:///{tmp / 'mlflow.db'}", "bench", tmp / "mlartifacts")
            files.write_json(tmp / "tracking.json", rec)
            argv += ["--tracking", str(tmp / "tracking.json")]
        t0 = time.time()
        out = subprocess.run(
            [sys.executable, "-c", FIRST_STEP_CHILD, *argv], env=_env(), capture_output=True, text=True
        )
        marks = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("FIRST_STEP")]
        if not marks:
            sys.exit(f"bench: the start-up run failed:\n{out.stderr[-3000:]}")
        return float(marks[0]) - t0


# -- report --------------------------------------------------------------------------------------------
def _rates(result: dict, skip_first: bool = False) -> tuple[float, float]:
    hist = result["history"][1:] if skip_first and len(result["history"]) > 1 else result["history"]
    images_per_s = result["n_train"] * len(hist) / sum(h["train_seconds"] for h in hist)
    return images_per_s, sum(h["epoch_seconds"] for h in hist) / len(hist)


def compare(args, label: str, rows: dict[str, dict]) -> dict:
    """Print one dataset's table and ratios; return the ratios of the default path (epochs 2+ where run)."""
    ref = rows["reference"]
    print(f"\n{label}")
    print(f"  {'':28} {'train img/s':>11} {'s/epoch':>8} {'test AUC':>8} {'peak MB':>8}")
    for name, res in rows.items():
        rate, epoch = _rates(res)
        print(f"  {name:28} {rate:11.1f} {epoch:8.2f} {res['test']['auc']:8.3f} {res['peak_mem_mb']:8.0f}")
    for skip_first in (False, True):
        if skip_first and len(ref["history"]) < 2:
            break
        ref_rate, ref_epoch = _rates(ref, skip_first)
        for name, res in rows.items():
            if name == "reference":
                continue
            rate, epoch = _rates(res, skip_first)
            print(
                f"  {name}{' (epochs 2+)' if skip_first else ''}: training step {rate / ref_rate:.2f}x the "
                f"reference's images/s; per-epoch wall {ref_epoch / epoch:.2f}x faster"
            )
    skip = len(ref["history"]) > 1
    (ref_rate, ref_epoch), (rate, epoch) = _rates(ref, skip), _rates(rows["scaleaudit"], skip)
    return {
        "step_ratio": rate / ref_rate,
        "epoch_ratio": ref_epoch / epoch,
        "images_per_s": rate,
        "reference_images_per_s": ref_rate,
        "precision": rows["scaleaudit"]["precision"],
    }


def print_steps(res: dict) -> None:
    peak = res["bf16_peak"]
    share = (
        f"{res['achieved_flops'] / peak:6.1%} of its dense bf16 peak" if peak else "peak unknown (not in devices.py)"
    )
    print(
        f"  {res['model']:24} batch {res['batch_size']:3} x {res['steps']} steps: {res['images_per_s']:8.1f} img/s, "
        f"{res['achieved_flops'] / 1e12:6.1f} TFLOP/s (3x forward FLOPs), {share}; {res['precision']}, "
        f"peak {res['peak_mem_mb']:.0f} MB"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10, help="epochs per side (the first one includes warm-up)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="torch threads for both sides (the workflow's jobs use 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--datasets", nargs="+", default=["breastmnist"], help="mirror files to run (28 px)")
    p.add_argument("--data", help="an explicit .npz instead of the mirror's (first dataset only)")
    p.add_argument("--fp32", action=argparse.BooleanOptionalAction, default=True, help="also time scaleaudit in fp32")
    p.add_argument("--startup", action=argparse.BooleanOptionalAction, default=True, help="measure start-up")
    p.add_argument("--device", choices=["cuda", "cpu"], help="where both sides train (default: cuda when visible)")
    p.add_argument(
        "--determinism",
        choices=["deterministic", "fast"],
        default="deterministic",
        help="scaleaudit's hardware.determinism (default: the study's default)",
    )
    p.add_argument(
        "--vit",
        choices=["auto", "on", "off"],
        default="auto",
        help="ViT-S/16 and ViT-B/16 at 224 px, step by step (auto: with CUDA)",
    )
    p.add_argument(
        "--vit-steps",
        type=int,
        default=100,
        help="timed training steps (after 10 warm-up steps) of the ViT timings",
    )
    p.add_argument(
        "--shared",
        type=int,
        nargs="*",
        help="aggregate 28 px ResNet-18 images/s with these many runs "
        "training at once on the device (default on CUDA: 1 2 4 8; pass none to skip)",
    )
    p.add_argument(
        "--shared-window", type=float, default=20.0, help="seconds over which the shared runs are timed together"
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    # internal: one side in a subprocess
    p.add_argument("--side", choices=sorted(SIDES), help=argparse.SUPPRESS)
    p.add_argument("--dataset", help=argparse.SUPPRESS)
    p.add_argument("--model", default="scaleaudit_resnet18_cifar", help=argparse.SUPPRESS)
    p.add_argument("--input-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--precision", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=10, help=argparse.SUPPRESS)
    p.add_argument("--window", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.side:
        print(json.dumps(SIDES[args.side](args)))
        return

    import torch

    from scaleaudit import devices

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.shared is None:
        args.shared = [1, 2, 4, 8] if args.device == "cuda" else []
    summary = {"device": args.device, "resnet18_28": {}, "vit": []}
    cpu = devices.current("cpu")["name"]
    print(
        f"machine: {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; torch threads {args.threads}"
    )
    print(
        f"model {args.model} at 28 px, batch {args.batch_size}, "
        f"{args.epochs} epochs, seed {args.seed}, same for both sides on {args.device}, each in its own process; "
        f"scaleaudit {args.determinism}"
    )
    for i, flag in enumerate(args.datasets):
        path = data_file(flag, args.data if i == 0 else None)
        base = {"dataset": flag, "data": str(path)}
        rows = {"reference": run_side(args, "reference", **base)}
        rows["scaleaudit"] = run_side(args, "scaleaudit", **base)
        if args.fp32 and rows["scaleaudit"]["precision"] != "fp32":
            rows["scaleaudit fp32"] = run_side(args, "scaleaudit", **base, precision="fp32")
        ref, fast = rows["reference"], rows["scaleaudit"]
        label = (
            f"{flag} ({path}): {fast['n_train']} training images per epoch\n"
            f"  reference per epoch: train, then evaluate train+val+test ({ref['n_eval']} images); "
            f"PIL + ToTensor + Normalize in a DataLoader, fp32\n"
            f"  scaleaudit per epoch: train, evaluate val ({fast['n_eval']} images), checkpoint; "
            f"on-device tensors, {fast['precision']}"
        )
        summary["resnet18_28"][flag] = compare(args, label, rows)

    if args.vit == "on" or (args.vit == "auto" and args.device == "cuda"):
        flag = args.datasets[0]
        print(
            f"\ntransformers at 224 px on {args.device} ({flag} resized on the fly), {args.vit_steps} steps after 10 warm-up:"
        )
        for model, batch in VIT_RUNS:
            res = run_side(
                args,
                "steps",
                dataset=flag,
                data=str(data_file(flag, args.data)),
                model=model,
                input_size=224,
                batch_size=batch,
                steps=args.vit_steps,
            )
            print_steps(res)
            summary["vit"].append(res)

    if args.shared:
        flag = args.datasets[0]
        base = dict(
            dataset=flag,
            data=str(data_file(flag, args.data)),
            model=args.model,
            batch_size=args.batch_size,
            steps=args.vit_steps,
        )
        print(
            f"\nruns sharing one {args.device}: {args.model} at 28 px, batch {args.batch_size}, started together after "
            f"their warm-up and timed over the same {args.shared_window:g} s"
        )
        rates = {n: run_shared(args, n, args.shared_window, **base) for n in args.shared}
        for n, rate in rates.items():
            print(
                f"  {n} at once: {rate:9.1f} img/s in all, {rate / rates[args.shared[0]]:.2f}x {args.shared[0]} run(s)"
            )
        summary["shared"] = {str(n): rate for n, rate in rates.items()}

    if args.startup:
        imp = import_profile()
        loaded = ", ".join(imp["loaded"]) or "none"
        print(
            f"\nstart-up: import scaleaudit.train {imp['seconds']:.2f} s (report stack / mlflow / pandas loaded: {loaded})"
        )
        path = data_file(args.datasets[0], args.data)
        for tracked in (False, True):
            what = "with MLflow tracking (as in the workflow)" if tracked else "without tracking"
            print(
                f"  process start -> first training step of `scaleaudit train`, {what}: "
                f"{startup_seconds(args.datasets[0], path, tracked):.2f} s"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
