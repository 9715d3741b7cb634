"""MedMNIST v2's own ResNet-18 for 28 px images, so that the from-scratch baseline is the network the paper trained.

Transcribed from MedMNIST/experiments @ 70b6b3a7ad7afddff1df2a3b735235830fbdb142, ``MedMNIST2D/models.py``
(itself adapted from kuangliu/pytorch-cifar): a 3x3 stride-1 stem without max-pooling, four stages of two basic
blocks, a projection shortcut (1x1 conv + BN) where the shape changes, global average pooling, a linear head.
Module names, creation order and initialisation are theirs: every layer keeps PyTorch's default initialisation
(convolutions and the head kaiming_uniform(a=sqrt(5)), BatchNorm weight 1 and bias 0), so the same seed gives
the same initial weights as their code. timm's ``resnet18`` differs in exactly that (kaiming-normal fan-out
convolutions and the last BN of every block zero-initialised), which moved BreastMNIST's test AUC (issue 13).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modelnames import DEFINITIONS


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion * planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(self.expansion * planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class MedMNISTResNet(nn.Module):
    """Their ``ResNet(block, num_blocks, in_channels, num_classes)`` with timm's classifier interface added
    (``get_classifier``, ``reset_classifier``, ``num_features``), which the trainer and the feature cache use."""

    definition = DEFINITIONS["scaleaudit_resnet18_cifar"]

    def __init__(self, block=BasicBlock, num_blocks=(2, 2, 2, 2), in_chans: int = 1, num_classes: int = 2, **_):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = 512 * block.expansion
        self.num_classes = num_classes
        self.linear = nn.Linear(self.num_features, num_classes)

    def _make_layer(self, block, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(self.in_planes, planes, s))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int, *_, **__) -> None:
        self.num_classes = num_classes
        self.linear = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.avgpool(out), 1))
