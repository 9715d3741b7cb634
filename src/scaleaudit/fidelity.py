"""Fidelity to the published protocols: each recipe that follows one (recipe key ``protocol``) beside the protocol's
own settings, key by key, for the fidelity table of the report's Methods.

The reference settings are read from the authors' code (the tests compare scaleaudit's pipeline with
transcriptions of it, tests/test_fidelity.py):
- medmnist_v2: MedMNIST/experiments @ 70b6b3a, MedMNIST2D/train_and_eval_pytorch.py (Adam 1e-3, batch 128,
  100 epochs, MultiStepLR x0.1 at 50 % and 75 %, Normalize(0.5, 0.5), NEAREST resize to 224 where resized, the
  best validation AUC tested);
- medmnist_plus: sdoerrich97/rethinking-model-prototyping-MedMNISTPlus @ b67b772, train.py and config.yaml (timm
  AdamW 1e-4 with its default weight decay 0.01, timm CosineLRScheduler(t_initial=epochs) stepped per epoch,
  batch 64, 100 epochs, as_rgb, the model's pretrained mean/std, zero-padding to 224, best validation loss,
  early stop after 5 epochs without improvement).
"""

from __future__ import annotations

import pandas as pd

PROTOCOLS = {
    "medmnist_v2": {
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0,
        "batch_size": 128,
        "epochs": 100,
        "scheduler": "multistep",
        "milestones": [0.5, 0.75],
        "gamma": 0.1,
        "resize": "nearest",
        "normalize": "half",
        "rgb": False,
        "augment": "none",
        "select": "val_auc",
        "early_stop_patience": None,
    },
    "medmnist_plus": {
        "optimizer": "adamw",
        "lr": 1e-4,
        "weight_decay": 0.01,
        "batch_size": 64,
        "epochs": 100,
        "scheduler": "cosine_timm",
        "resize": "pad",
        "normalize": "pretrained",
        "rgb": True,
        "augment": "none",
        "select": "val_loss",
        "early_stop_patience": 5,
    },
}


def differences(config: dict) -> pd.DataFrame:
    """One row per setting in which a recipe used by the design departs from the protocol it follows:
    recipe, protocol, setting, the protocol's value, the recipe's. Empty when every such recipe is faithful."""
    used = sorted({config["arms"][a]["recipe"] for a in config["design"]["arms"]})
    rows = []
    for name in used:
        recipe = config["recipes"][name]
        protocol = recipe.get("protocol")
        if protocol is None:
            continue
        for key, theirs in PROTOCOLS[protocol].items():
            ours = recipe.get(key, False if key == "rgb" else None)
            if ours != theirs:
                rows.append({"recipe": name, "protocol": protocol, "setting": key, "theirs": theirs, "ours": ours})
    return pd.DataFrame(rows, columns=["recipe", "protocol", "setting", "theirs", "ours"])


def protocols_used(config: dict) -> list[str]:
    """The published protocols that recipes of the design follow."""
    recipes = {config["arms"][a]["recipe"] for a in config["design"]["arms"]}
    return sorted({config["recipes"][r]["protocol"] for r in recipes if config["recipes"][r].get("protocol")})
