"""Model registry: arms name timm models; scaleaudit's own small models are registered in timm.

Pretrained weights come from the timm / Hugging Face hub, a local weights folder, or an explicit
file; all three reach the model through timm's own loader (``pretrained_cfg_overlay=dict(file=...)``),
which adapts the input channels and replaces the classifier head.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import timm
import torch
from timm.models import register_model
from torch import nn

from . import reference_models, settings
from .errors import ScaleauditError
from .files import file_digest
from .modelnames import split_name

WEIGHTS_ENV = settings.BY_KEY["weights.dir"].env
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class SmallCNN(nn.Module):
    """A targeted CNN for small images: four conv-BN-ReLU stages and a linear head (~0.4M parameters)."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3, widths=(32, 64, 128, 256), drop_rate: float = 0.0, **_):
        super().__init__()
        layers, c_in = [], in_chans
        for i, c_out in enumerate(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.num_features = c_in
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.fc = nn.Linear(c_in, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, *_, **__) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))
        return self.fc(self.drop(x))


@register_model
def scaleaudit_cnn_small(pretrained: bool = False, **kwargs) -> SmallCNN:
    if pretrained:
        raise ScaleauditError("scaleaudit_cnn_small has no pretrained weights", "set pretrained: false for this arm")
    kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)
    return SmallCNN(**kwargs)


@register_model
def scaleaudit_resnet18_cifar(pretrained: bool = False, **kwargs) -> nn.Module:
    """MedMNIST v2's ResNet-18 (28): their own definition and initialisation (reference_models.py)."""
    if pretrained:
        raise ScaleauditError(
            "scaleaudit_resnet18_cifar has no pretrained weights", "use timm's resnet18 for a pretrained arm"
        )
    kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None)
    return reference_models.MedMNISTResNet(**kwargs)


def check_arm(arm: dict, where: str = "") -> None:
    """Fail early on a model name timm does not know, or an unknown pretrained tag."""
    arch, _ = split_name(arm["model"])
    prefix = f"{where}: " if where else ""
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise ScaleauditError(
            f"{prefix}unknown model {arm['model']!r}",
            f"use a timm model name ({', '.join(close) or 'see timm.list_models()'}), "
            "or scaleaudit_cnn_small / scaleaudit_resnet18_cifar",
        )
    if arm.get("pretrained") and not arm.get("weights_file"):
        name = pretrained_name(arm)
        try:
            known = timm.models.get_pretrained_cfg(name) is not None
        except RuntimeError:  # timm raises for a wrong tag of a known architecture
            known = False
        if not known:
            tags = [m for m in timm.list_pretrained(f"{arch}.*")][:8]
            raise ScaleauditError(
                f"{prefix}timm has no pretrained weights named {name!r}",
                f"use one of {', '.join(tags) or 'timm.list_pretrained()'}, or give the arm a weights_file",
            )


def pretrained_name(arm: dict) -> str:
    """``arch.tag`` of an arm's pretrained weights (timm's default tag when none is given)."""
    arch, tag = split_name(arm["model"])
    tag = arm.get("weights_tag") or tag
    if tag is None:
        default = timm.models.get_pretrained_cfg(arch)
        tag = default.tag if default else None
    return f"{arch}.{tag}" if tag else arch


def pretrained_mean_std(arm: dict) -> tuple[tuple, tuple]:
    """Mean and std of the arm's timm pretrained config (of timm's default weights for the architecture when
    the arm trains from scratch), as MedMNIST+ normalises (train.py: ``m.default_cfg['mean'], ['std']``)."""
    name = pretrained_name(arm)
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # a wrong tag of a known architecture
        cfg = None
    if cfg is None:
        raise ScaleauditError(
            f"model {arm['model']!r} has no timm pretrained config to take normalisation statistics from",
            "give its recipe `normalize: half` or `normalize: imagenet` instead of `normalize: pretrained`",
        )
    return tuple(cfg.mean), tuple(cfg.std)


def _local_candidates(weights_dir: Path, name: str) -> list[Path]:
    arch, _ = split_name(name)
    stems = [name, name.replace(".", "_"), arch]
    return [weights_dir / f"{stem}{suffix}" for stem in stems for suffix in WEIGHT_SUFFIXES]


def _hub_file(name: str) -> tuple[Path, str]:
    """Download (or find in the HF cache) the published weights of ``arch.tag``; return the file and source."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise ScaleauditError(
            f"timm has no hub weights for {name!r}", "choose another weights_tag or give weights_file"
        )
    repo = cfg.hf_hub_id.split("@")[0]
    if not constants.HF_HUB_OFFLINE:
        # Without DNS the hub client retries for tens of seconds; one lookup tells us at once.
        socket.getaddrinfo(urlparse(constants.ENDPOINT).hostname, 443)
    for filename in ("model.safetensors", "pytorch_model.bin"):
        try:
            path = Path(hf_hub_download(repo, filename))
            return path, f"hf-hub:{repo}/{filename}@{path.parent.name}"
        except EntryNotFoundError as exc:
            missing = exc
    raise missing


def _write_selfmade(name: str, dest: Path) -> None:
    """A deterministic stand-in for the published weights: timm's initialisation, seed 0."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(split_name(name)[0], pretrained=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(dest))


def resolve_weights(
    arm_name: str, arm: dict, weights_dir: str | None, allow_selfmade: bool, selfmade_dir: Path
) -> dict:
    """Find an arm's pretrained weights and describe their provenance.

    Order: the arm's ``weights_file``; ``{weights_dir}/{arch.tag}{suffix}`` (the config's
    ``weights.dir``, else ``$SCALEAUDIT_WEIGHTS_DIR``); the hub; and only with ``allow_selfmade`` a self-made stand-in. Anything but the
    hub download is flagged ``published: false``.
    """
    name = pretrained_name(arm)
    record = {"arm": arm_name, "model": arm["model"], "pretrained_name": name}
    weights_dir = settings.value("weights.dir", weights_dir)
    candidates = []
    if arm.get("weights_file"):
        candidates.append(Path(arm["weights_file"]).expanduser())
        if not candidates[0].exists():
            raise ScaleauditError(
                f"arm {arm_name!r}: weights_file {candidates[0]} does not exist", "fix the path or remove weights_file"
            )
    elif weights_dir:
        candidates += _local_candidates(Path(weights_dir).expanduser(), name)
    for path in candidates:
        if path.exists():
            return record | {
                "file": str(path.resolve()),
                "source": f"local file {path.resolve()}",
                "published": False,
                "sha256": file_digest(path),
            }
    try:
        path, source = _hub_file(name)
        return record | {"file": str(path), "source": source, "published": True, "sha256": file_digest(path)}
    except ScaleauditError:
        raise
    except Exception as exc:
        hub_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if allow_selfmade:
        dest = selfmade_dir / f"{name}.selfmade.safetensors"
        _write_selfmade(name, dest)
        return record | {
            "file": str(dest.resolve()),
            "source": "self-made stand-in (timm initialisation, seed 0): NOT the published pretrained weights",
            "published": False,
            "sha256": file_digest(dest),
            "hub_error": hub_error,
        }
    looked = f" and in {weights_dir}" if weights_dir else ""
    raise ScaleauditError(
        f"arm {arm_name!r}: pretrained weights {name} are not available: the hub failed ({hub_error}){looked}",
        f"run where the Hugging Face hub is reachable, or stage the file as <dir>/{name}.safetensors and set "
        f"{WEIGHTS_ENV}=<dir> (or weights.dir in the config), or give the arm a weights_file",
    )


def verify_weights(weights: dict) -> None:
    """The weights file is still the one whose SHA-256 fetch-weights recorded (results must not cite a file that changed)."""
    path = Path(weights["file"])
    if not path.exists():
        raise ScaleauditError(
            f"weights file {path} recorded by fetch-weights is gone",
            "restore it, or delete the arm's weights record (results/<study>/weights/<arm>.json) so that the "
            "weights are resolved and recorded again (the arm's runs then train again)",
        )
    actual = file_digest(path)
    if actual != weights["sha256"]:
        raise ScaleauditError(
            f"weights file {path} changed since fetch-weights recorded it: sha256 {actual}, recorded {weights['sha256']}",
            "restore the recorded file, or delete the arm's weights record (results/<study>/weights/<arm>.json) so "
            "that the new file is recorded (the arm's runs then train again on it)",
        )


def is_transformer(arch: str) -> bool:
    """Transformers take their input size at construction (img_size) and gain nothing from channels_last."""
    module = timm.models.model_entrypoint(arch).__module__
    return any(k in module for k in ("vision_transformer", "deit", "eva", "beit", "swin", "vit"))


@torch.no_grad()
def blank_forward(model: nn.Module, in_chans: int, input_size: int) -> None:
    """One eval-mode pass of a blank image, for hooks and counters to observe; the model's mode is restored."""
    was_training = model.training
    try:
        model.eval()
        model(torch.zeros(1, in_chans, input_size, input_size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)


def _weight_names(file: str) -> list[str]:
    """Tensor names of a weights file; a safetensors header is read without loading the tensors again."""
    from timm.models import load_state_dict
    from timm.models._helpers import clean_state_dict

    if file.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(file, framework="pt") as fh:
            return list(clean_state_dict(dict.fromkeys(fh.keys())))  # the prefixes timm's loader strips

    return list(load_state_dict(file))


def _check_weight_names(model: nn.Module, file: str, name: str) -> None:
    """Fail unless the file provides exactly the model's weights (bar the classifier head, which is new).

    timm loads non-strictly whenever the head is replaced, so a file of another architecture would
    otherwise leave most layers silently at random initialisation.
    """
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))
    provided = {k for k in _weight_names(file) if not k.startswith(heads)}
    expected = {k for k in model.state_dict() if not k.startswith(heads)}
    missing, unexpected = sorted(expected - provided), sorted(provided - expected)
    if missing or unexpected:
        detail = "; ".join(
            f"{label} {len(keys)} weights ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for label, keys in (("lacks", missing), ("has unknown", unexpected))
            if keys
        )
        raise ScaleauditError(
            f"weights file {file} does not fit {name}: it {detail}",
            "the file is of another architecture: stage the weights of this exact model",
        )


def build(arm: dict, num_classes: int, in_chans: int, input_size: int, weights: dict | None = None) -> nn.Module:
    """Create an arm's model; with ``weights`` (a record from :func:`resolve_weights`) load that file."""
    arch, _ = split_name(arm["model"])
    kwargs = {"num_classes": num_classes, "in_chans": in_chans}
    if is_transformer(arch):
        kwargs["img_size"] = input_size
    if arm["pretrained"]:
        if weights is None:
            raise ScaleauditError(
                f"arm with model {arm['model']!r} is pretrained but no weights were resolved",
                "run `scaleaudit fetch-weights` for it first (the workflow does this)",
            )
        try:
            model = timm.create_model(
                pretrained_name(arm), pretrained=True, pretrained_cfg_overlay={"file": weights["file"]}, **kwargs
            )
        except (RuntimeError, KeyError, ValueError) as exc:
            if isinstance(exc.__cause__, pickle.UnpicklingError):  # timm's weights_only=True refused it
                raise ScaleauditError(
                    f"weights file {weights['file']} holds pickled Python objects that would run code when loaded; "
                    "it was refused (weights are loaded with weights_only=True, never via plain pickle)",
                    "use a .safetensors file, or a plain state_dict of tensors from a source you trust",
                ) from exc
            raise ScaleauditError(
                f"weights file {weights['file']} does not fit {pretrained_name(arm)}: {str(exc).splitlines()[0]}",
                "the file is of another architecture: stage the weights of this exact model",
            ) from exc
        _check_weight_names(model, weights["file"], pretrained_name(arm))
    else:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    if arm.get("train") in ("linear_probe", "knn_probe"):  # a kNN probe never steps its head either
        head = model.get_classifier()
        for p in model.parameters():
            p.requires_grad = False
        for p in head.parameters():
            p.requires_grad = True
    return model
