"""The training loop: one arm on one dataset, fraction and seed (a ``RunSpec``), with checkpoints that make it
resumable. ``job`` runs it and keeps the books; ``runtime`` sets up torch and the device.

Images are small, so each split lives on the training device as one uint8 tensor; batching,
shuffling, augmentation, resizing and normalisation happen there, per batch. The weights of the
epoch with the best validation score are tested once.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import conv_gemm, data, features, knn, metrics, models, runtime
from .files import atomic_path
from .modelnames import split_name
from .records import RunSpec

MEAN_STD = {"half": ((0.5,), (0.5,)), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
CHECKPOINT = "checkpoint.pt"
# Saving is ~0.5 s for ResNet-18 on a CPU (weights, optimiser, best weights): every epoch of a small
# model would spend ~10 % of the time on it. A kill loses at most this much training, never a result.
CHECKPOINT_EVERY_S = 30.0
# A large checkpoint (ViT-B with AdamW state and the best weights: ~1.4 GB) is written less often: at most
# this share of the wall time goes to saving, so the interval grows with the time the last save took.
CHECKPOINT_SHARE = 0.02


def divergence(state: dict, val: dict) -> str:
    """Why a run counts as diverged, '' when it does not: its training loss became non-finite (training stops there
    and its scores are NaN), or its best validation AUC is within metrics.DIVERGED_MARGIN of chance (it learned
    nothing). ``state`` is the trainer's, ``val`` the validation metrics of its selected weights."""
    if state.get("diverged"):
        return "non-finite training loss"
    auc = val.get("auc")
    if auc is not None and math.isfinite(auc) and auc <= metrics.CHANCE_AUC + metrics.DIVERGED_MARGIN:
        return f"best validation AUC {auc:.3f} <= {metrics.CHANCE_AUC + metrics.DIVERGED_MARGIN:g}"
    return ""


def mean_std(recipe: dict, arm: dict) -> tuple[tuple, tuple]:
    """The recipe's Normalize statistics; ``pretrained``: those of the arm's timm pretrained config, as
    MedMNIST+ takes them (``model.default_cfg['mean'/'std']``): 0.5/0.5 for AugReg ViTs, ImageNet for ResNet a1."""
    if recipe["normalize"] == "pretrained":
        return models.pretrained_mean_std(arm)
    return MEAN_STD[recipe["normalize"]]


class BatchTransform:
    """uint8 (B, C, H, W) on the device -> normalised float (B, C', S, S), optionally augmented.

    The order is MedMNIST+'s (train.py: ToTensor, Normalize, Pad with fill=0): scale to [0, 1], normalise,
    then pad, so the padding is 0 in normalised space. With ``rgb`` grey images become three equal
    channels, as medmnist's ``as_rgb=True`` (PIL ``convert("RGB")``) makes them.
    """

    def __init__(
        self,
        recipe: dict,
        in_chans: int,
        input_size: int,
        device: torch.device,
        memory_format: torch.memory_format = torch.contiguous_format,
        mean_std: tuple[tuple, tuple] | None = None,
    ):
        mean, std = mean_std or MEAN_STD[recipe["normalize"]]
        self.rgb = bool(recipe.get("rgb"))
        in_chans = 3 if self.rgb else in_chans
        if in_chans != len(mean):  # grey images with ImageNet statistics: one averaged channel
            mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.size, self.resize, self.augment = input_size, recipe["resize"], recipe["augment"]
        self.memory_format = memory_format

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float().div_(255)
        if self.rgb and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
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
            x = F.interpolate(
                x, size=(self.size, self.size), mode=mode, **({} if mode == "nearest" else {"align_corners": False})
            )
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
    if recipe["scheduler"] == "cosine_timm":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: _timm_cosine_factor(done, epochs))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _timm_cosine_factor(done: int, epochs: int) -> float:
    """The lr factor of the epoch after ``done`` finished ones under MedMNIST+'s schedule: timm's
    ``CosineLRScheduler(t_initial=epochs, cycle_limit=1)`` (lr_min 0, no warmup) stepped with
    ``step(epoch=e)`` after 0-based epoch e, so the first two epochs both run at the full lr
    (sdoerrich97/rethinking-model-prototyping-MedMNISTPlus@b67b772, train.py)."""
    t = max(done - 1, 0)
    return 0.5 * (1 + math.cos(math.pi * t / epochs)) if t < epochs else 0.0


def _loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "multi-label":
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits, y.float())
    return F.cross_entropy


def _probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multi-label" else torch.softmax(logits, 1)


class Trainer:
    """Holds one run's data, model and optimisation state; ``fit`` is resumable from a checkpoint."""

    def __init__(
        self,
        spec: RunSpec,
        data_path: str | Path,
        weights: dict | None,
        device: torch.device,
        log=print,
        synthetic: bool = False,
    ):
        self.spec, self.device, self.log = spec, device, log
        arm, recipe = spec.arm_spec, spec.recipe
        meta = data.info(spec.dataset)
        # the model sees three channels when the recipe repeats grey to RGB (MedMNIST+: as_rgb=True)
        self.task, in_chans = meta["task"], 3 if recipe.get("rgb") else meta["n_channels"]
        num_classes = meta["n_classes"]
        self.input_size = arm["input_size"] or spec.size
        torch.manual_seed(spec.seed)
        self.synthetic = synthetic  # a stand-in of the dataset's shape (gpu-check, plan): any split lengths
        splits = data.load_splits(data_path, spec.dataset, spec.size, synthetic)
        keep = data.stratified_subset(splits["train"][1], spec.fraction, spec.seed)
        splits["train"] = (splits["train"][0][keep], splits["train"][1][keep])
        self.tensors = {
            s: (runtime.on_device(x, device), torch.from_numpy(y).to(device)) for s, (x, y) in splits.items()
        }
        self.labels = {s: y for s, (_, y) in splits.items()}
        self.n_train = len(keep)
        self.bf16 = runtime.use_bf16(spec.hardware.get("precision", "auto"), device)
        # channels_last suits the convolutions of CUDA and of oneDNN's bf16 kernels (measured: ~10% per
        # step on CPU in bf16, nothing in fp32); transformers gain nothing from it.
        is_cnn = not models.is_transformer(split_name(arm["model"])[0])
        fmt = torch.channels_last if is_cnn and (device.type == "cuda" or self.bf16) else torch.contiguous_format
        self.transform = BatchTransform(
            recipe, in_chans, self.input_size, device, memory_format=fmt, mean_std=mean_std(recipe, arm)
        )
        self.model = models.build(arm, num_classes, in_chans, self.input_size, weights).to(device, memory_format=fmt)
        # measured (benchmarks/bench_conv.py): pays in bf16; in fp32, on contiguous tensors, it does not
        self.gemm_convs = (
            conv_gemm.adopt(self.model, in_chans, self.input_size) if device.type == "cpu" and self.bf16 else []
        )
        self.optimizer = _optimizer(recipe, [p for p in self.model.parameters() if p.requires_grad])
        self.scheduler = _scheduler(recipe, self.optimizer)
        self.loss_fn = _loss_fn(self.task)
        self.generator = torch.Generator(device="cpu").manual_seed(spec.seed)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)
        self.in_chans = in_chans
        # A linear probe whose images never change (no augmentation) trains its head on cached features; a kNN
        # probe votes among them. They are computed (or loaded) by prepare(), inside the run's metered time.
        self.knn = arm["train"] == "knn_probe"
        self._knn_index = None
        self.cached_features = features.usable(spec)
        self._prepare = (
            (lambda: self._use_cached_features(Path(data_path), weights, keep)) if self.cached_features else None
        )
        self.net = self.model.get_classifier() if self.cached_features else self.model
        # compiles on the first step; the uncompiled self.model keeps its state_dict names for checkpoints
        compile_mode = spec.hardware["compile"]
        if compile_mode != "none":
            self.net = torch.compile(self.net, mode="reduce-overhead" if compile_mode == "cudagraphs" else None)
        self.state = {"epoch": 0, "history": [], "best": None, "best_epoch": None, "best_state": None, "bad_evals": 0}

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"

    def _use_cached_features(self, data_path: Path, weights: dict | None, keep: np.ndarray) -> None:
        """Replace each split's images by the frozen backbone's features (all training rows are cached, so
        that every fraction and seed shares them; this run keeps its subset)."""
        spec = self.spec
        name = features.key(spec, data_path, weights, self.input_size, self.precision, self.device)
        path = data_path.parent / "features" / f"{spec.dataset}_{spec.size}" / f"{name}.pt"
        bs = max(256, 4 * spec.recipe["batch_size"])

        def make() -> dict[str, torch.Tensor]:
            splits = data.load_splits(data_path, spec.dataset, spec.size, self.synthetic)
            return {
                s: features.compute(self.model, self.transform, runtime.on_device(x, self.device), bs, self.autocast)
                for s, (x, _) in splits.items()
            }

        feats = features.load_or_compute(path, make, self.log)
        self.tensors = {
            s: ((feats[s][keep] if s == "train" else feats[s]).to(self.device), y) for s, (_, y) in self.tensors.items()
        }

    def prepare(self) -> None:
        """Swap the images for the frozen backbone's features, once (a probe); nothing for end-to-end training."""
        if self._prepare is not None:
            self._prepare, prepare = None, self._prepare
            prepare()

    # -- checkpoints ------------------------------------------------------------------------------
    def trained_state(self) -> dict[str, torch.Tensor]:
        """The model's state without frozen weights (a linear probe's backbone): those come from the weights
        file again when the model is built, so checkpoints and the best-weights copy need not hold them."""
        frozen = self._frozen()
        return {k: v for k, v in self.model.state_dict().items() if k not in frozen}

    def _frozen(self) -> set[str]:
        return {name for name, p in self.model.named_parameters() if not p.requires_grad}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        frozen = self._frozen()
        if set(missing) - frozen or unexpected:  # frozen weights may be absent, nothing else
            raise RuntimeError(
                f"saved state does not fit the model: missing {sorted(set(missing) - frozen)[:3]}, "
                f"unexpected {unexpected[:3]}"
            )

    def save(self, path: Path) -> None:
        ckpt = {
            "config_hash": self.spec.config_hash,
            "model": self.trained_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            # this device's state only: get_rng_state_all() would create a context on every visible GPU
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "state": self.state,
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            torch.save(
                ckpt, fh
            )  # through a Python file: a full disk is an OSError with its errno, not a bare RuntimeError

    def load(self, path: Path) -> bool:
        """Resume from ``path`` if it holds this run's configuration; checkpoints load without pickled code."""
        if not path.exists():
            return False
        try:
            # Onto the CPU: RNG states must stay CPU ByteTensors (set_state refuses others); model and
            # optimiser states are copied to their parameters' device by load_state_dict.
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            self.log(f"checkpoint {path} is unreadable ({type(exc).__name__}); starting from scratch")
            return False
        if ckpt.get("config_hash") != self.spec.config_hash:
            self.log(f"checkpoint {path} belongs to another configuration; starting from scratch")
            return False
        self.load_trained_state(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.generator.set_state(ckpt["generator"].cpu())
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        if self.device.type == "cuda" and isinstance(ckpt["cuda_rng"], torch.Tensor):
            torch.cuda.set_rng_state(ckpt["cuda_rng"].cpu(), self.device)
        self.state = ckpt["state"]
        return True

    # -- steps ------------------------------------------------------------------------------------
    def train_epoch(self) -> float:
        self.model.train()
        images, labels = self.tensors["train"]
        bs = self.spec.recipe["batch_size"]
        order = torch.randperm(len(images), generator=self.generator).to(self.device, non_blocking=True)
        total = torch.zeros((), device=self.device)
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            total += self.train_step(images[idx], labels[idx]) * len(idx)
        self.scheduler.step()
        return float(total) / len(order)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a uint8 batch (features, for a cached linear probe); returns the loss on the
        device (no sync)."""
        x = images if self.cached_features else self.transform(images, self.generator)
        with self.autocast:
            loss = self.loss_fn(self.net(x), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    @torch.inference_mode()
    def predict(self, split: str) -> tuple[np.ndarray, float]:
        """Class probabilities of a split and its mean loss."""
        self.model.eval()
        images, labels = self.tensors[split]
        bs = max(256, 4 * self.spec.recipe["batch_size"])
        probs, loss = [], torch.zeros((), device=self.device)
        for start in range(0, len(images), bs):
            x = images[start : start + bs]
            x = x if self.cached_features else self.transform(x)
            with self.autocast:
                logits = self.net(x).float()
            loss += self.loss_fn(logits, labels[start : start + bs]) * len(x)
            probs.append(_probabilities(logits, self.task))
        return torch.cat(probs).cpu().numpy(), float(loss) / len(images)

    @torch.inference_mode()
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of other uint8 images (N, H, W[, C]) of the split's shape, through the whole model
        (a cached linear probe's backbone too; a kNN probe votes on their features): how kept weights score
        corrupted test sets."""
        self.model.eval()
        images = runtime.on_device(images if images.ndim == 4 else images[..., None], self.device)
        bs = max(256, 4 * self.spec.recipe["batch_size"])
        if self.knn:
            return self.knn_index().shares(features.compute(self.model, self.transform, images, bs, self.autocast))
        probs = []
        for start in range(0, len(images), bs):
            with self.autocast:
                logits = self.model(self.transform(images[start : start + bs])).float()
            probs.append(_probabilities(logits, self.task))
        return torch.cat(probs).cpu().numpy()

    def evaluate(self, split: str) -> tuple[dict, np.ndarray]:
        probs, loss = self.predict(split)
        return metrics.evaluate(self.labels[split], probs, self.task) | {"loss": loss}, probs

    # -- the loop ---------------------------------------------------------------------------------
    def fit(
        self,
        checkpoint: Path,
        on_epoch: Callable[[dict], None] = lambda row: None,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
    ) -> None:
        """Train to the recipe's end; checkpoint after the first epoch and the last, and in between once
        ``checkpoint_every_s`` and 1/CHECKPOINT_SHARE times the last save's duration have passed (0: every epoch)."""
        self.prepare()
        if self.knn:  # nothing to train: the support set is the training split's features
            self.state |= {"best_epoch": 0, "best_state": self.trained_state()}
            return
        recipe = self.spec.recipe
        epochs, select = recipe["epochs"], recipe["select"]
        saved_at, save_s = None, 0.0
        while self.state["epoch"] < epochs and not (self.state.get("stopped_early") or self.state.get("diverged")):
            epoch = self.state["epoch"] + 1
            t0 = time.perf_counter()
            row = {"epoch": epoch, "train_loss": self.train_epoch(), "lr": self.optimizer.param_groups[0]["lr"]}
            if not math.isfinite(row["train_loss"]):
                # diverged: the weights are no longer numbers; they are the run's selected weights (scores NaN)
                self.state |= {"diverged": True, "best_epoch": epoch, "best_state": copy.deepcopy(self.trained_state())}
                self.log(f"epoch {epoch}: training loss {row['train_loss']}: diverged, training stops")
            elif epoch % recipe["eval_every"] == 0 or epoch == epochs:
                val, _ = self.evaluate("val")
                row |= {f"val_{k}": v for k, v in val.items()}
                score = val["auc"] if select == "val_auc" else -val["loss"]
                if self.state["best"] is None or score > self.state["best"]:
                    self.state |= {"best": score, "best_epoch": epoch, "bad_evals": 0}
                    self.state["best_state"] = copy.deepcopy(self.trained_state())
                else:
                    self.state["bad_evals"] += 1
                patience = recipe["early_stop_patience"]
                if patience is not None and self.state["bad_evals"] >= patience:
                    self.state["stopped_early"] = True
            row["seconds"] = time.perf_counter() - t0
            self.state["epoch"] = epoch
            self.state["history"].append(row)
            last = epoch == epochs or self.state.get("stopped_early") or self.state.get("diverged")
            interval = max(checkpoint_every_s, save_s / CHECKPOINT_SHARE) if checkpoint_every_s > 0 else 0.0
            if saved_at is None or last or time.monotonic() - saved_at >= interval:
                t0 = time.monotonic()
                self.save(checkpoint)
                saved_at = time.monotonic()
                save_s = saved_at - t0
            on_epoch(row)
            val_txt = f" val_auc {row['val_auc']:.4f} val_acc {row['val_acc']:.4f}" if "val_auc" in row else ""
            self.log(f"epoch {epoch}/{epochs} loss {row['train_loss']:.4f}{val_txt} ({row['seconds']:.1f} s)")

    def test(self) -> tuple[dict, dict, np.ndarray]:
        """Val and test metrics of the selected weights; the test split is evaluated only here."""
        if self.knn:
            return self._knn_test()
        self.load_trained_state(self.state["best_state"])
        val, _ = self.evaluate("val")
        test, probs = self.evaluate("test")
        return val, test, probs

    def knn_index(self) -> knn.Index:
        """The k-nearest-neighbour index (knn.py) of the training split's features on the device, built once for
        the run's val, test and corrupted sets."""
        if self._knn_index is None:
            k = min(self.spec.arm_spec.get("knn_k", knn.K), self.n_train)
            support, labels = self.tensors["train"]
            n_classes = data.info(self.spec.dataset)["n_classes"]
            self._knn_index = knn.Index(support, labels.cpu().numpy(), k, self.task, n_classes)
        return self._knn_index

    def _knn_test(self) -> tuple[dict, dict, np.ndarray]:
        """Val and test metrics of the k-nearest-neighbour vote; a vote has no loss."""
        shares = {s: self.knn_index().shares(self.tensors[s][0]) for s in ("val", "test")}
        val, test = ({**metrics.evaluate(self.labels[s], shares[s], self.task), "loss": None} for s in ("val", "test"))
        return val, test, shares["test"]
