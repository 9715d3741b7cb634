"""A linear probe's frozen-backbone features, computed once per (dataset, size, weights) and reused by every
seed and fraction.

The features are what the model's classifier receives, captured by a hook on it, with the backbone in
eval mode. They are exact only when the images reach the model unchanged in every epoch, so a recipe
with augmentation keeps the end-to-end path. Runs of one dataset share a file under the data folder;
a lock makes concurrent runs wait for the first one instead of computing the same features again.
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path

import torch

from .files import atomic_path, canonical_hash
from .provenance import numerics
from .records import RunSpec


def usable(spec: RunSpec) -> bool:
    """A kNN probe always works on features (it never sees an augmented image); a linear probe without augmentation."""
    train = spec.arm_spec["train"]
    return train == "knn_probe" or (train == "linear_probe" and spec.recipe["augment"] == "none")


def key(
    spec: RunSpec, data_path: Path, weights: dict | None, input_size: int, precision: str, device: torch.device
) -> str:
    """What the features depend on: data file, backbone weights (the seed where they are not pretrained),
    preprocessing, precision, and the device's kind and model and the library versions (another GPU model runs
    other kernels: its features differ in the last bits, so the first node's must not stand for all)."""
    arm, stat = spec.arm_spec, Path(data_path).stat()
    return canonical_hash(
        {
            "data": [str(Path(data_path).resolve()), stat.st_size, stat.st_mtime_ns],
            "dataset": spec.dataset,
            "model": arm["model"],
            "weights": weights["sha256"] if weights else None,
            "seed": None if arm["pretrained"] else spec.seed,
            "input_size": input_size,
            "normalize": spec.recipe["normalize"],
            "rgb": bool(spec.recipe.get("rgb")),
            "resize": spec.recipe["resize"],
            "precision": precision,
            "numerics": numerics(device),
        }
    )


@torch.inference_mode()
def compute(
    model: torch.nn.Module, transform: Callable, images: torch.Tensor, batch_size: int, autocast
) -> torch.Tensor:
    """The classifier's inputs for ``images`` (uint8 on the device), as float32, backbone in eval mode."""
    grabbed: list[torch.Tensor] = []
    hook = model.get_classifier().register_forward_pre_hook(lambda module, args: grabbed.append(args[0].float()))
    was_training = model.training
    try:
        model.eval()
        for start in range(0, len(images), batch_size):
            with autocast:
                model(transform(images[start : start + batch_size]))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(grabbed)


def load_or_compute(path: Path, make: Callable[[], dict[str, torch.Tensor]], log=print) -> dict[str, torch.Tensor]:
    """The features at ``path`` (CPU tensors); computed by ``make`` and saved when absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one run computes, concurrent ones wait and load
        if path.exists():
            try:
                feats = torch.load(path, map_location="cpu", weights_only=True)
                log(f"frozen-backbone features from {path}")
                return feats
            except Exception as exc:
                log(f"features cache {path} is unreadable ({type(exc).__name__}); computing again")
        feats = {split: t.cpu() for split, t in make().items()}
        with atomic_path(path) as tmp:
            torch.save(feats, tmp)
        log(f"frozen-backbone features computed and cached in {path}")
        return feats
