import pytest
import timm
import torch
from safetensors.torch import save_file

from scaleaudit import models
from scaleaudit.errors import ScaleauditError

VIT = {"model": "vit_tiny_patch16_224", "pretrained": True, "weights_tag": "augreg_in21k_ft_in1k", "train": "finetune"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(models.WEIGHTS_ENV, raising=False)


@pytest.fixture
def vit_file(tmp_path):
    """A checkpoint shaped like the published ViT-Ti/16 (3 channels, 1000 classes), made here."""
    torch.manual_seed(123)
    state = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()
    path = tmp_path / "weights" / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.safetensors"
    path.parent.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


def test_registry_names_reach_scaleaudit_models():
    small = timm.create_model("scaleaudit_cnn_small", num_classes=3, in_chans=1)
    assert sum(p.numel() for p in small.parameters()) < 1_000_000
    assert small(torch.zeros(2, 1, 28, 28)).shape == (2, 3)


def test_cifar_resnet_keeps_28px_resolution_into_layer1():
    model = timm.create_model("scaleaudit_resnet18_cifar", num_classes=2, in_chans=1)
    seen = {}
    model.layer1.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    model(torch.zeros(1, 1, 28, 28))
    assert seen["shape"][-2:] == (28, 28)  # an ImageNet stem would give 7 x 7


def test_unknown_model_is_named():
    with pytest.raises(ScaleauditError, match="unknown model 'vit_tinny'"):
        models.check_arm({"model": "vit_tinny"})
    with pytest.raises(ScaleauditError, match="no pretrained weights named"):
        models.check_arm({"model": "vit_tiny_patch16_224", "pretrained": True, "weights_tag": "nope"})


def test_local_weights_load_through_timm_and_adapt_channels_and_head(vit_file):
    path, state = vit_file
    record = models.resolve_weights("vit", VIT, str(path.parent), False, path.parent / "selfmade")
    assert record["published"] is False and record["file"] == str(path.resolve())
    model = models.build(VIT, num_classes=2, in_chans=1, input_size=32, weights=record)
    assert model.head.out_features == 2
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])
    # grey input: timm sums the RGB filters of the patch embedding
    assert torch.allclose(model.patch_embed.proj.weight[:, 0], state["patch_embed.proj.weight"].sum(1))
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2)


def test_weights_dir_from_env_when_config_has_none(vit_file, monkeypatch, tmp_path):
    path, _ = vit_file
    monkeypatch.setenv(models.WEIGHTS_ENV, str(path.parent))
    record = models.resolve_weights("vit", VIT, None, False, tmp_path)
    assert record["file"] == str(path.resolve())
    # a configured folder wins over the variable: nothing there, offline, so it is an error
    with pytest.raises(ScaleauditError, match="not available"):
        models.resolve_weights("vit", VIT, str(tmp_path / "elsewhere"), False, tmp_path)


def test_missing_weights_offline_is_a_clear_error(tmp_path):
    with pytest.raises(ScaleauditError, match="not available") as err:
        models.resolve_weights("vit", VIT, None, False, tmp_path)
    assert models.WEIGHTS_ENV in err.value.fix
    assert not any(tmp_path.iterdir())


def test_selfmade_stand_in_is_flagged(tmp_path):
    record = models.resolve_weights("vit", VIT, None, True, tmp_path)
    assert record["published"] is False and "NOT the published" in record["source"]
    assert (tmp_path / "vit_tiny_patch16_224.augreg_in21k_ft_in1k.selfmade.safetensors").exists()


def test_linear_probe_trains_only_the_head(vit_file):
    path, _ = vit_file
    arm = VIT | {"train": "linear_probe", "weights_file": str(path)}
    record = models.resolve_weights("probe", arm, None, False, path.parent)
    model = models.build(arm, num_classes=3, in_chans=3, input_size=32, weights=record)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head.weight", "head.bias"}
