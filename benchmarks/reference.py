"""The MedMNIST v2 reference trainer's loop, rewritten compactly as the yardstick for scaleaudit's fast path.

It follows ``experiments/MedMNIST2D/train_and_eval_pytorch.py`` of MedMNIST/experiments: each sample
becomes a PIL image and goes through ``ToTensor`` + ``Normalize(0.5, 0.5)`` in a ``DataLoader``
(default workers, as there); Adam with MultiStepLR at 50% and 75% of the epochs; ``loss.item()`` per
batch; and after every epoch an evaluation of train, val and test, keeping a copy of the model with
the best validation AUC. Left out: the TensorBoard writer and the result files. The model is passed
in, so both paths train the very same architecture.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.utils.data as tud
from PIL import Image
from torch import nn
from torchvision import transforms

from scaleaudit import metrics


class NpzSplit(tud.Dataset):
    """One split served the way ``medmnist.MedMNIST2D.__getitem__`` serves it: a PIL image per sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels.reshape(len(labels), -1), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index].squeeze(-1) if self.images.shape[-1] == 1 else self.images[index])
        return self.transform(img), self.labels[index].astype(int)


def _train(model, loader, criterion, optimizer, device) -> tuple[float, float]:
    """One epoch; returns the mean loss and the seconds it took."""
    t0 = time.perf_counter()
    model.train()
    losses = []
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss = criterion(model(inputs.to(device)), torch.squeeze(targets, 1).long().to(device))
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return sum(losses) / len(losses), time.perf_counter() - t0


@torch.no_grad()
def _test(model, loader, criterion, labels: np.ndarray, task: str, device) -> dict:
    model.eval()
    losses, scores = [], []
    for inputs, targets in loader:
        outputs = model(inputs.to(device))
        losses.append(criterion(outputs, torch.squeeze(targets, 1).long().to(device)).item())
        scores.append(torch.softmax(outputs, dim=1))
    y_score = torch.cat(scores).cpu().numpy()
    return {
        "loss": sum(losses) / len(losses),
        "auc": metrics.auc(labels, y_score, task),
        "acc": metrics.acc(labels, y_score, task),
    }


def train_and_eval(
    model: nn.Module,
    splits: dict,
    task: str,
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    gamma: float = 0.1,
    seed: int = 0,
    device: torch.device | None = None,
    input_size: int | None = None,
) -> dict:
    """Train ``model`` on ``splits`` ({split: (uint8 N,H,W,C images, labels)}) as the reference does.

    Single-label tasks only (the reference's CrossEntropyLoss branch). Returns per-epoch timings
    (``train_seconds``: the training loop; ``epoch_seconds``: training plus its three evaluations)
    and the test metrics of the best-validation-AUC model. ``input_size`` resizes each PIL image
    (NEAREST), as the reference does for its 224 px runs.
    """
    if task == "multi-label":
        raise ValueError("the reference loop here covers single-label tasks")
    device = device or torch.device("cpu")
    torch.manual_seed(seed)
    resize = [transforms.Resize((input_size, input_size), interpolation=transforms.InterpolationMode.NEAREST)]
    transform = transforms.Compose(
        (resize if input_size else []) + [transforms.ToTensor(), transforms.Normalize(mean=[0.5], std=[0.5])]
    )
    data = {s: NpzSplit(x, y, transform) for s, (x, y) in splits.items()}
    train_loader = tud.DataLoader(data["train"], batch_size=batch_size, shuffle=True)
    eval_loaders = {s: tud.DataLoader(d, batch_size=batch_size, shuffle=False) for s, d in data.items()}
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[0.5 * epochs, 0.75 * epochs], gamma=gamma)
    best_auc, best_model, history = -1.0, model, []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_seconds = _train(model, train_loader, criterion, optimizer, device)
        evals = {s: _test(model, loader, criterion, splits[s][1], task, device) for s, loader in eval_loaders.items()}
        scheduler.step()
        if evals["val"]["auc"] > best_auc:
            best_auc, best_model = evals["val"]["auc"], copy.deepcopy(model)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_seconds": train_seconds,
                "epoch_seconds": time.perf_counter() - t0,
                "val_auc": evals["val"]["auc"],
            }
        )
    test = _test(best_model, eval_loaders["test"], criterion, splits["test"][1], task, device)
    return {"history": history, "test": test, "best_val_auc": best_auc}
