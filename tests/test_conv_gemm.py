"""Convolutions as GEMMs: the same function and gradients as nn.Conv2d, adopted only where they pay."""

from __future__ import annotations

import pytest
import timm
import torch
from mirror import REPO
from torch import nn

import scaleaudit.models  # noqa: F401 - registers the scaleaudit_* architectures
from scaleaudit import config, conv_gemm, data, train


def _pair(conv: nn.Conv2d) -> tuple[nn.Conv2d, nn.Conv2d]:
    gemm = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    ).to(conv.weight.dtype)
    gemm.load_state_dict(conv.state_dict())
    gemm.__class__ = conv_gemm.GemmConv2d
    return conv, gemm


@pytest.mark.parametrize(
    "in_ch, out_ch, kernel, stride, padding, size, bias",
    [
        (3, 5, 3, 1, 1, (5, 6), True),  # ResNet 3x3, odd rectangle
        (2, 4, (3, 2), (2, 1), (1, 0), (7, 5), False),  # anisotropic kernel, stride and padding
        (1, 3, 7, 2, 3, (9, 9), True),  # a grey stem
        (4, 2, 1, 2, 0, (6, 6), False),  # 1x1 strided shortcut
    ],
)
def test_gemm_convolution_matches_conv2d_and_its_gradients(in_ch, out_ch, kernel, stride, padding, size, bias):
    torch.manual_seed(0)
    conv, gemm = _pair(nn.Conv2d(in_ch, out_ch, kernel, stride, padding, bias=bias).double())
    x = torch.randn(2, in_ch, *size, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(gemm, (x,))
    x_ref = x.detach().clone().requires_grad_()
    out, out_ref = gemm(x), conv(x_ref)
    torch.testing.assert_close(out, out_ref)
    grad = torch.randn_like(out)
    out.backward(grad)
    out_ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    for p, p_ref in zip(gemm.parameters(), conv.parameters()):
        torch.testing.assert_close(p.grad, p_ref.grad)


def test_under_bf16_autocast_it_computes_in_bf16_and_returns_fp32_gradients():
    torch.manual_seed(0)
    conv, gemm = _pair(nn.Conv2d(16, 8, 3, 1, 1))
    x = torch.randn(4, 16, 4, 4).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, out_ref = gemm(x), conv(x)
    assert out.dtype == out_ref.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), out_ref.float(), atol=0.05, rtol=0.02)
    out.float().square().sum().backward()
    out_ref.float().square().sum().backward()
    assert gemm.weight.grad.dtype == torch.float32
    torch.testing.assert_close(gemm.weight.grad, conv.weight.grad, atol=0.1, rtol=0.03)


def test_adopt_picks_the_tiny_feature_maps_and_keeps_the_weights():
    model = timm.create_model("scaleaudit_resnet18_cifar", num_classes=2, in_chans=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    expected = model(x)
    # at 28 px layer4 works on 4x4 maps (16 positions); layer3's 7x7 stays with oneDNN
    assert conv_gemm.adopt(model, 1, 28) == [
        "layer4.0.conv1",
        "layer4.0.conv2",
        "layer4.0.shortcut.0",
        "layer4.1.conv1",
        "layer4.1.conv2",
    ]
    assert isinstance(model.layer4[1].conv2, conv_gemm.GemmConv2d) and type(model.layer3[1].conv2) is nn.Conv2d
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)
    torch.testing.assert_close(model(x), expected, atol=1e-4, rtol=1e-4)


def test_adopt_leaves_grouped_and_dilated_convolutions_alone():
    model = nn.Sequential(
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2),
        nn.Conv2d(8, 4, 3, padding=1),
    )
    model.train()
    assert conv_gemm.adopt(model, 8, 4) == ["2"]
    assert model.training  # the probing pass restores the mode


@pytest.mark.parametrize("precision, adopted", [("fp32", False), ("bf16", True)])
def test_trainer_runs_the_4x4_convolutions_as_gemms_in_bf16_on_a_cpu(tiny_mirror, tmp_path, precision, adopted):
    cfg = config.load(
        REPO / "config" / "config.yaml",
        REPO / "config" / "demo.yaml",
        overrides={"hardware": {"device": "cpu", "precision": precision}},
    )
    spec = config.run_spec(cfg, "breastmnist", 28, "resnet18_scratch", 1.0, 0)
    record = data.fetch("breastmnist", 28, tmp_path / "breastmnist_28.npz", tiny_mirror)
    trainer = train.Trainer(spec, record["file"], None, torch.device("cpu"), log=lambda msg: None)
    converted = [n for n, m in trainer.model.named_modules() if isinstance(m, conv_gemm.GemmConv2d)]
    assert trainer.gemm_convs == converted
    assert converted == (
        ["layer4.0.conv1", "layer4.0.conv2", "layer4.0.shortcut.0", "layer4.1.conv1", "layer4.1.conv2"]
        if adopted
        else []
    )
