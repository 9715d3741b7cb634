"""Per-layer timings behind scaleaudit.conv_gemm: oneDNN's convolution against the same layer as GEMMs.

    python benchmarks/bench_conv.py [--model scaleaudit_resnet18_cifar --size 28 --in-chans 1]

For every ungrouped convolution of the model, at the feature-map size it sees, forward plus backward
(input and weight gradients) of a batch as a CPU training step runs it (bf16 autocast and channels_last,
or fp32), once with nn.Conv2d (oneDNN) and once as GEMMs. Printed: both times, their ratio, and
whether ``conv_gemm.adopt`` picks the layer. On another CPU this shows whether ``MAX_POSITIONS`` holds.
"""

from __future__ import annotations

import argparse
import copy
import time

import timm
import torch
from torch import nn

import scaleaudit.models  # noqa: F401 - registers the scaleaudit_* architectures
from scaleaudit import conv_gemm
from scaleaudit.models import is_transformer


def _time_step(conv: nn.Module, x: torch.Tensor, bf16: bool, repeats: int) -> float:
    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = conv(x)
        out.backward(torch.ones_like(out))

    step()
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="scaleaudit_resnet18_cifar")
    p.add_argument("--size", type=int, default=28, help="input size (px)")
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    model = timm.create_model(
        args.model,
        num_classes=2,
        in_chans=args.in_chans,
        **({"img_size": args.size} if is_transformer(args.model) else {}),
    )
    shapes = {
        name: shape
        for name, shape in conv_gemm.input_shapes(model, args.in_chans, args.size).items()
        if type(model.get_submodule(name)) is nn.Conv2d and model.get_submodule(name).groups == 1
    }
    first = next(iter(shapes))  # it sees the image, which needs no gradient
    adopted = set(conv_gemm.adopt(copy.deepcopy(model), args.in_chans, args.size))

    bf16 = args.precision == "bf16"
    fmt = torch.channels_last if bf16 else torch.contiguous_format  # as Trainer lays out a CNN on a CPU
    print(
        f"{args.model} at {args.size} px, batch {args.batch_size}, {args.precision}, {fmt}, "
        f"{args.threads} thread(s); forward + backward per layer (ms)"
    )
    print(f"  {'layer':24} {'in -> out':>16} {'map':>7} {'oneDNN':>8} {'GEMM':>8} {'ratio':>6}  adopted")
    totals = {"onednn": 0.0, "chosen": 0.0}
    for name, shape in shapes.items():
        conv = model.get_submodule(name).to(memory_format=fmt)
        gemm = copy.deepcopy(conv)
        gemm.__class__ = conv_gemm.GemmConv2d
        x = torch.randn(args.batch_size, *shape[1:]).contiguous(memory_format=fmt)
        x.requires_grad_(name != first)
        onednn, as_gemm = (_time_step(c, x, bf16, args.repeats) * 1e3 for c in (conv, gemm))
        out = conv(x[:1]).shape[-1]
        totals["onednn"] += onednn
        totals["chosen"] += as_gemm if name in adopted else onednn
        print(
            f"  {name:24} {conv.in_channels:>6} -> {conv.out_channels:<6} {shape[-1]:>3}>{out:<3} {onednn:8.1f} "
            f"{as_gemm:8.1f} {onednn / as_gemm:6.2f}  {'yes' if name in adopted else ''}"
        )
    print(
        f"  all convolutions: oneDNN {totals['onednn']:.0f} ms, with adopt's choice {totals['chosen']:.0f} ms "
        f"({totals['onednn'] / totals['chosen']:.2f}x)"
    )
    if not bf16:
        print("  (training converts them only in bf16: in fp32 every convolution stays with oneDNN)")


if __name__ == "__main__":
    main()
