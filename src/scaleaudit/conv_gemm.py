"""Convolutions as explicit im2col matrix multiplies, for the layers where oneDNN's bf16 CPU kernels are slow.

oneDNN's convolutions run far below its own matrix multiply on tiny feature maps: ResNet-18's last
stage at 28 px works on 4x4 maps, where the bf16 weight gradient of a 512-channel layer takes 70 ms
on a Xeon with AMX against 20 ms as one GEMM. There each pass (forward, input gradient, weight
gradient) is one GEMM over the unfolded input; elsewhere oneDNN wins and is kept.
``benchmarks/bench_conv.py`` prints the per-layer figures behind ``MAX_POSITIONS``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .models import blank_forward

# Output positions per image up to which the GEMM form wins in bf16 at batch 128 (4x4 maps: 1.8-3.2x); on 7x7
# and 8x8 maps it mostly loses.
MAX_POSITIONS = 16


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _unfold(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[torch.Tensor, int, int]:
    """(N, C, H, W) -> (N*Ho*Wo, kh*kw*C), one row per output position with channels innermost; and Ho, Wo."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    x = F.pad(x.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph)).contiguous()
    s = x.stride()
    cols = x.as_strided((n, ho, wo, kh, kw, c), (s[0], s[1] * sh, s[2] * sw, s[1], s[2], s[3])).reshape(n * ho * wo, -1)
    return cols, ho, wo


def _fold(
    cols: torch.Tensor, shape: torch.Size, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> torch.Tensor:
    """The adjoint of ``_unfold``: sums each row's patch back onto the (N, C, H, W) input (channels_last)."""
    n, c, h, w = shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    ho, wo = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    patches = cols.view(n, ho, wo, kh, kw, c)
    out = cols.new_zeros(n, h + 2 * ph, w + 2 * pw, c)
    for i in range(kh):
        for j in range(kw):
            out[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw] += patches[:, :, :, i, j]
    return out[:, ph : ph + h, pw : pw + w].permute(0, 3, 1, 2)


class _Conv2dAsGemm(torch.autograd.Function):
    """conv2d (groups 1, dilation 1, zero padding) whose three passes are matrix multiplies."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding):
        k, _, kh, kw = weight.shape
        cols, ho, wo = _unfold(x, (kh, kw), stride, padding)
        w2d = weight.permute(0, 2, 3, 1).reshape(k, -1)  # rows ordered like the columns: (kh, kw, C)
        out = cols @ w2d.t() if bias is None else torch.addmm(bias, cols, w2d.t())
        ctx.save_for_backward(cols, w2d)
        ctx.geometry = (x.shape, (kh, kw), stride, padding, bias is not None)
        return out.view(len(x), ho, wo, k).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad):
        cols, w2d = ctx.saved_tensors
        shape, kernel, stride, padding, has_bias = ctx.geometry
        g = grad.permute(0, 2, 3, 1).reshape(-1, w2d.shape[0])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _fold(g @ w2d, shape, kernel, stride, padding)
        if ctx.needs_input_grad[1]:
            # contiguous: with a transposed left operand oneDNN's matmul runs at half speed here
            grad_w = (g.t().contiguous() @ cols).view(w2d.shape[0], *kernel, shape[1]).permute(0, 3, 1, 2)
        if has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(0)
        return grad_x, grad_w, grad_b, None, None


class GemmConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` computed by ``_Conv2dAsGemm``; same parameters, same state dict.

    Under autocast its inputs are cast the way autocast casts a convolution's, so gradients reach
    the fp32 parameters in fp32.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        bias = None if self.bias is None else self.bias.to(dtype)
        with torch.autocast(device, enabled=False):
            return _Conv2dAsGemm.apply(x.to(dtype), self.weight.to(dtype), bias, self.stride, self.padding)


def _eligible(conv: nn.Module, input_shape: torch.Size) -> bool:
    if type(conv) is not nn.Conv2d or conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):  # 'same' / 'valid'
        return False
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    positions = _out_size(input_shape[-2], kh, sh, ph) * _out_size(input_shape[-1], kw, sw, pw)
    return positions <= MAX_POSITIONS


def input_shapes(model: nn.Module, in_chans: int, input_size: int) -> dict[str, torch.Size]:
    """The input shape of each ``nn.Conv2d`` of ``model``, from one pass of a blank image."""
    shapes: dict[str, torch.Size] = {}

    def record(name: str):
        def hook(module, args) -> None:
            shapes[name] = args[0].shape

        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        blank_forward(model, in_chans, input_size)
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def adopt(model: nn.Module, in_chans: int, input_size: int) -> list[str]:
    """Turn the convolutions of ``model`` that the GEMM form speeds up into ``GemmConv2d``; returns their names."""
    names = [
        name
        for name, shape in input_shapes(model, in_chans, input_size).items()
        if _eligible(model.get_submodule(name), shape)
    ]
    for name in names:
        model.get_submodule(name).__class__ = GemmConv2d
    return names
