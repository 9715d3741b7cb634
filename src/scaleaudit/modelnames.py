"""Model names as a config gives them, without importing torch or timm.

A config string is ``arch`` or ``arch.tag`` (timm's naming); the models scaleaudit defines itself name the code
they were transcribed from, which enters the run's spec. The workflow reads these on every Snakefile parse,
including each cluster job's, so this module stays free of torch (timm's import takes about 10 s).
"""

from __future__ import annotations

# scaleaudit's own definitions of registered models (reference_models.py holds the code), by source: recorded with
# every run that uses one, and part of its config hash, so that results of an earlier definition are never taken for
# this one's.
DEFINITIONS = {
    "scaleaudit_resnet18_cifar": (
        "MedMNIST/experiments@70b6b3a7ad7afddff1df2a3b735235830fbdb142 MedMNIST2D/models.py ResNet18 "
        "(PyTorch default initialisation)"
    ),
}


def split_name(model: str) -> tuple[str, str | None]:
    """``arch.tag`` -> (arch, tag); (arch, None) without a tag."""
    arch, _, tag = model.partition(".")
    return arch, tag or None
