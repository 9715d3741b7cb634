"""Training: one arm on one dataset, fraction and seed, with checkpoints that make the job resumable.

Images are small, so each split lives on the training device as one uint8 tensor; batching,
shuffling, augmentation, resizing and normalisation happen there, per batch. The weights of the
epoch with the best validation score are tested once.
"""

from __future__ import annotations

import copy
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import conv_gemm, cost, data, metrics, models, provenance
from .errors import ScaleauditError
from .files import atomic_path, write_json

MEAN_STD = {"half": ((0.5,), (0.5,)), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
CHECKPOINT = "checkpoint.pt"
# Saving is ~0.5 s for ResNet-18 on a CPU (weights, optimiser, best weights): every epoch of a small
# model would spend ~10 % of the time on it. A kill loses at most this much training, never a result.
CHECKPOINT_EVERY_S = 30.0


def pick_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ScaleauditError("hardware.device is 'cuda' but no CUDA device is visible", "use device: auto or cpu")
    return torch.device("cuda" if requested != "cpu" and torch.cuda.is_available() else "cpu")


def use_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast: always on CUDA under ``auto``; on a CPU only with AMX bf16 units, where it pays
    (~2x per training step for ResNet-18 on a Xeon with AMX; without AMX bf16 is emulated and slower)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return bool(amx()) and torch.backends.mkldnn.is_available()


class BatchTransform:
    """uint8 (B, C, H, W) on the device -> normalised float (B, C, S, S), optionally augmented."""

    def __init__(self, recipe: dict, in_chans: int, input_size: int, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format):
        mean, std = MEAN_STD[recipe["normalize"]]
        if in_chans != len(mean):  # grey images with ImageNet statistics: one averaged channel
            mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.size, self.resize, self.augment = input_size, recipe["resize"], recipe["augment"]
        self.memory_format = memory_format

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = (images.float().div_(255) - self.mean) / self.std
        if generator is not None and self.augment == "flip":
            flip = torch.rand(len(x), generator=generator, device=generator.device) < 0.5
            # non_blocking: a blocking copy to CUDA would wait for the whole stream (a sync per step)
            x = torch.where(flip.to(x.device, non_blocking=True).view(-1, 1, 1, 1), x.flip(3), x)
        h = x.shape[-1]
        if self.resize == "pad" and h < self.size:
            before = (self.size - h) // 2
            x = F.pad(x, (before, self.size - h - before) * 2)
        elif h != self.size:
            mode = "nearest" if self.resize == "nearest" else "bilinear"
            x = F.interpolate(x, size=(self.size, self.size), mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
        return x.contiguous(memory_format=self.memory_format)


def _optimizer(recipe: dict, params) -> torch.optim.Optimizer:
    # fused: one kernel for all parameters instead of a dozen per-tensor passes (CPU and CUDA)
    lr, wd = recipe["lr"], recipe["weight_decay"]
    if recipe["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, fused=True)
    if recipe["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, fused=True)
    return torch.optim.SGD(params, lr=lr, momentum=recipe["momentum"], weight_decay=wd, fused=True)


def _scheduler(recipe: dict, optimizer: torch.optim.Optimizer):
    epochs = recipe["epochs"]
    if recipe["scheduler"] == "multistep":
        milestones = sorted({max(1, int(m * epochs)) for m in recipe["milestones"]})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=recipe["gamma"])
    if recipe["scheduler"] == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "multi-label":
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y.float())
    return F.cross_entropy


def _probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multi-label" else torch.softmax(logits, 1)


class Trainer:
    """Holds one run's data, model and optimisation state; ``fit`` is resumable from a checkpoint."""

    def __init__(self, spec: dict, data_path: str | Path, weights: dict | None, device: torch.device, log=print):
        self.spec, self.device, self.log = spec, device, log
        arm, recipe = spec["arm_spec"], spec["recipe"]
        meta = data.info(spec["dataset"])
        self.task, in_chans = meta["task"], meta["n_channels"]
        num_classes = meta["n_classes"]
        self.input_size = arm["input_size"] or spec["size"]
        torch.manual_seed(spec["seed"])
        splits = data.load_splits(data_path, spec["dataset"])
        if splits["train"][0].shape[-1] != in_chans:
            raise ScaleauditError(f"{data_path} has {splits['train'][0].shape[-1]} channels, {spec['dataset']} has {in_chans}")
        keep = data.stratified_subset(splits["train"][1], spec["fraction"], spec["seed"])
        splits["train"] = (splits["train"][0][keep], splits["train"][1][keep])
        self.tensors = {
            s: (torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device), torch.from_numpy(y).to(device))
            for s, (x, y) in splits.items()
        }
        self.labels = {s: y for s, (_, y) in splits.items()}
        self.n_train = len(keep)
        self.bf16 = use_bf16(spec["hardware"].get("precision", "auto"), device)
        # channels_last suits the convolutions of CUDA and of oneDNN's bf16 kernels (measured: ~10% per
        # step on CPU in bf16, nothing in fp32); transformers gain nothing from it.
        is_cnn = not models.is_transformer(models.split_name(arm["model"])[0])
        fmt = torch.channels_last if is_cnn and (device.type == "cuda" or self.bf16) else torch.contiguous_format
        self.transform = BatchTransform(recipe, in_chans, self.input_size, device, memory_format=fmt)
        self.model = models.build(arm, num_classes, in_chans, self.input_size, weights).to(device, memory_format=fmt)
        # measured (benchmarks/bench_conv.py): pays in bf16; in fp32, on contiguous tensors, it does not
        self.gemm_convs = conv_gemm.adopt(self.model, in_chans, self.input_size) if device.type == "cpu" and self.bf16 else []
        self.optimizer = _optimizer(recipe, [p for p in self.model.parameters() if p.requires_grad])
        self.scheduler = _scheduler(recipe, self.optimizer)
        self.loss_fn = _loss_fn(self.task)
        self.generator = torch.Generator(device="cpu").manual_seed(spec["seed"])
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)
        self.in_chans = in_chans
        self.state = {"epoch": 0, "history": [], "best": None, "best_epoch": None, "best_state": None, "bad_evals": 0}

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        ckpt = {
            "config_hash": self.spec["config_hash"],
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
            "state": self.state,
        }
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)

    def load(self, path: Path) -> bool:
        """Resume from ``path`` if it holds this run's configuration; checkpoints load without pickled code."""
        if not path.exists():
            return False
        try:
            ckpt = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint means: start over
            self.log(f"checkpoint {path} is unreadable ({type(exc).__name__}); starting from scratch")
            return False
        if ckpt.get("config_hash") != self.spec["config_hash"]:
            self.log(f"checkpoint {path} belongs to another configuration; starting from scratch")
            return False
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if ckpt["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
        self.state = ckpt["state"]
        return True

    # -- steps ------------------------------------------------------------------------------------
    def train_epoch(self) -> float:
        self.model.train()
        images, labels = self.tensors["train"]
        bs = self.spec["recipe"]["batch_size"]
        order = torch.randperm(len(images), generator=self.generator).to(self.device, non_blocking=True)
        total = torch.zeros((), device=self.device)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            x = self.transform(images[idx], self.generator)
            with self.autocast:
                loss = self.loss_fn(self.model(x), labels[idx])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach() * len(idx)
        self.scheduler.step()
        return float(total) / len(order)

    @torch.inference_mode()
    def predict(self, split: str) -> tuple[np.ndarray, float]:
        """Class probabilities of a split and its mean loss."""
        self.model.eval()
        images, labels = self.tensors[split]
        bs = max(256, 4 * self.spec["recipe"]["batch_size"])
        probs, loss = [], torch.zeros((), device=self.device)
        for start in range(0, len(images), bs):
            x = self.transform(images[start : start + bs])
            with self.autocast:
                logits = self.model(x).float()
            loss += self.loss_fn(logits, labels[start : start + bs]) * len(x)
            probs.append(_probabilities(logits, self.task))
        return torch.cat(probs).cpu().numpy(), float(loss) / len(images)

    def evaluate(self, split: str) -> tuple[dict, np.ndarray]:
        probs, loss = self.predict(split)
        return metrics.evaluate(self.labels[split], probs, self.task) | {"loss": loss}, probs

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, checkpoint: Path, on_epoch: Callable[[dict], None] = lambda row: None,
            checkpoint_every_s: float = CHECKPOINT_EVERY_S) -> None:
        """Train to the recipe's end; checkpoint after the first epoch, then every ``checkpoint_every_s``, and last."""
        recipe = self.spec["recipe"]
        epochs, select = recipe["epochs"], recipe["select"]
        saved_at = None
        while self.state["epoch"] < epochs and not self.state.get("stopped_early"):
            epoch = self.state["epoch"] + 1
            t0 = time.perf_counter()
            row = {"epoch": epoch, "train_loss": self.train_epoch(), "lr": self.optimizer.param_groups[0]["lr"]}
            if epoch % recipe["eval_every"] == 0 or epoch == epochs:
                val, _ = self.evaluate("val")
                row |= {f"val_{k}": v for k, v in val.items()}
                score = val["auc"] if select == "val_auc" else -val["loss"]
                if self.state["best"] is None or score > self.state["best"]:
                    self.state |= {"best": score, "best_epoch": epoch, "bad_evals": 0}
                    self.state["best_state"] = copy.deepcopy(self.model.state_dict())
                else:
                    self.state["bad_evals"] += 1
                patience = recipe["early_stop_patience"]
                if patience is not None and self.state["bad_evals"] >= patience:
                    self.state["stopped_early"] = True
            row["seconds"] = time.perf_counter() - t0
            self.state["epoch"] = epoch
            self.state["history"].append(row)
            last = epoch == epochs or self.state.get("stopped_early")
            if saved_at is None or last or time.monotonic() - saved_at >= checkpoint_every_s:
                self.save(checkpoint)
                saved_at = time.monotonic()
            on_epoch(row)
            val_txt = f" val_auc {row['val_auc']:.4f} val_acc {row['val_acc']:.4f}" if "val_auc" in row else ""
            self.log(f"epoch {epoch}/{epochs} loss {row['train_loss']:.4f}{val_txt} ({row['seconds']:.1f} s)")

    def test(self) -> tuple[dict, dict, np.ndarray]:
        """Val and test metrics of the selected weights; the test split is evaluated only here."""
        self.model.load_state_dict(self.state["best_state"])
        val, _ = self.evaluate("val")
        test, probs = self.evaluate("test")
        return val, test, probs


class Terminated(SystemExit):
    """SIGTERM arrived: Slurm preempting or cancelling the job (it sends SIGKILL KillWait seconds later)."""


def exit_on_sigterm() -> None:
    """Turn SIGTERM into an exception, so the job stops like a failure instead of vanishing.

    Temporary files are removed and the MLflow run is marked KILLED; the checkpoint of the last
    finished epoch stays, and the requeued job resumes from it. Call it from the main thread.
    """
    def handler(signum, frame):
        raise Terminated(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def configure_torch(seed: int, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    # Deterministic kernels make CPU runs bit-identical for a seed; warn_only keeps CUDA runs working.
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Filling each new tensor with NaN only helps to find reads of uninitialised memory (~4% of a CPU step).
    torch.utils.deterministic.fill_uninitialized_memory = False


def run(spec: dict, data_record: dict, out_dir: Path, tracking: dict | None, weights: dict | None,
        threads: int | None = None, checkpoint_every_s: float = CHECKPOINT_EVERY_S) -> dict:
    """Train, select on validation, test once, and write ``metrics.json`` and ``predictions.npz``."""
    def log(msg: str) -> None:
        print(f"[{spec['arm']} {spec['dataset']}@{spec['size']} f={spec['fraction']} s={spec['seed']}] {msg}",
              file=sys.stderr, flush=True)

    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "run_config.json", spec)
    configure_torch(spec["seed"], threads)
    device = pick_device(spec["hardware"]["device"])
    trainer = Trainer(spec, data_record["file"], weights, device, log=log)
    checkpoint = out_dir / CHECKPOINT
    if trainer.load(checkpoint):
        log(f"resuming after epoch {trainer.state['epoch']} from {checkpoint}")

    tracked = None
    if tracking is not None:
        from .tracking import TrackedRun

        run_name = f"{spec['arm']}/{spec['dataset']}_{spec['size']}/f{spec['fraction']}/s{spec['seed']}"
        tracked = TrackedRun(tracking, out_dir / "mlflow_run_id", run_name=run_name, tags=_tags(spec, weights))
        tracked.log_params(_params(spec, data_record, weights, trainer.n_train))

    size_info = cost.parameters(trainer.model) | {
        "flops_per_image": cost.flops_per_image(trainer.model, trainer.in_chans, trainer.input_size)
    }
    log(f"{size_info['params'] / 1e6:.2f} M parameters, {size_info['flops_per_image'] / 1e6:.1f} MFLOPs/image, "
        f"{trainer.n_train} training images on {device} in {trainer.precision}"
        + (f", convolutions as GEMMs: {', '.join(trainer.gemm_convs)}" if trainer.gemm_convs else ""))
    previous_seconds = sum(r["seconds"] for r in trainer.state["history"])
    try:
        with cost.EnergyMeter(spec["hardware"]["country_iso_code"]) as meter:
            trainer.fit(checkpoint, on_epoch=(lambda row: tracked.log_metrics(row, step=row["epoch"])) if tracked else (lambda row: None),
                        checkpoint_every_s=checkpoint_every_s)
            val, test, probs = trainer.test()
    except BaseException as exc:
        if tracked is not None:
            tracked.finish("KILLED" if isinstance(exc, Terminated) else "FAILED")
        raise
    train_seconds = previous_seconds + meter.seconds
    result = {
        "run": {k: spec[k] for k in ("study", "dataset", "size", "arm", "fraction", "seed", "config_hash")}
        | {"round": spec.get("round", 1), "group": spec["arm_spec"]["group"], "model": spec["arm_spec"]["model"], "pretrained": spec["arm_spec"]["pretrained"],
           "train_mode": spec["arm_spec"]["train"], "input_size": trainer.input_size, "recipe": spec["recipe"]["name"]},
        "task": trainer.task,
        "n_train": trainer.n_train,
        "best_epoch": trainer.state["best_epoch"],
        "epochs_run": trainer.state["epoch"],
        "stopped_early": bool(trainer.state.get("stopped_early")),
        "val": val,
        "test": test,
        "history": trainer.state["history"],
        "cost": size_info | meter.result() | {
            "train_seconds": train_seconds,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "precision": trainer.precision,
            "device_hours": train_seconds / 3600,
            "accelerator_hours": train_seconds / 3600 if device.type == "cuda" else 0.0,
            "peak_mem_mb": cost.peak_memory_mb(device),
        },
        "provenance": provenance.record() | {
            "data": {k: data_record[k] for k in ("file", "source", "sha256", "verified_against")},
            "weights": weights,
        },
        "tracking": None if tracked is None else {"run_id": tracked.run_id}
        | {k: tracking[k] for k in ("tracking_uri", "experiment", "experiment_id")},
    }
    labels = trainer.labels["test"]
    with atomic_path(out_dir / "predictions.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, labels=labels, probabilities=probs)
    if tracked is not None:
        tracked.log_metrics({f"test_{k}": v for k, v in test.items()} | {f"best_val_{k}": v for k, v in val.items()}
                            | {k: v for k, v in result["cost"].items() if isinstance(v, (int, float))}, step=trainer.state["epoch"])
        tracked.log_artifacts([out_dir / "run_config.json", out_dir / "predictions.npz"])
        tracked.log_dict(result, "metrics.json")
        tracked.finish()
    write_json(out_dir / "metrics.json", result)
    checkpoint.unlink(missing_ok=True)
    log(f"test auc {test['auc']:.4f} acc {test['acc']:.4f} (best epoch {trainer.state['best_epoch']}, {train_seconds:.0f} s)")
    return result


def _tags(spec: dict, weights: dict | None) -> dict[str, str]:
    return {
        "study": spec["study"], "dataset": spec["dataset"], "arm": spec["arm"],
        "weights_published": str(bool(weights and weights["published"])) if spec["arm_spec"]["pretrained"] else "n/a",
    }


def _params(spec: dict, data_record: dict, weights: dict | None, n_train: int) -> dict:
    code = provenance.code_version()
    params = {
        "dataset": spec["dataset"], "size": spec["size"], "arm": spec["arm"], "fraction": spec["fraction"],
        "seed": spec["seed"], "round": spec.get("round", 1), "config_hash": spec["config_hash"],
        "data_sha256": data_record["sha256"],
        "git_commit": code["commit"], "git_dirty": code["dirty"], "n_train": n_train,
        "model": spec["arm_spec"]["model"], "pretrained": spec["arm_spec"]["pretrained"], "recipe": spec["recipe"]["name"],
    }
    params |= {f"recipe.{k}": v for k, v in spec["recipe"].items() if k != "name"}
    if weights is not None:
        params |= {"weights_source": weights["source"], "weights_sha256": weights["sha256"], "weights_published": weights["published"]}
    return params
