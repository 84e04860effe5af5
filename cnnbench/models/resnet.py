"""ResNet (d2l 8.6): residual blocks of two 3x3 convolutions with batch norm, and the
ResNeXt block (grouped 3x3 between two 1x1 convolutions) that AnyNet/RegNet build on."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Classifier, Init, init_weights
from .registry import register_model


class Residual(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (through a strided 1x1 conv when the
    shape changes), then ReLU. Convolutions keep their bias, as the book's do."""

    def __init__(self, in_channels: int, out_channels: int, use_1x1conv: bool = False, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv3 = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if use_1x1conv else None
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.conv3 is not None:
            x = self.conv3(x)
        return F.relu(y + x)


class ResNeXtBlock(nn.Module):
    """1x1 (to ``bottleneck_ratio * out``) -> grouped 3x3 -> 1x1, each with BN, plus the
    input (through a strided 1x1 conv + BN when ``use_1x1conv``). ``group_width`` is the
    channels per group: the book's ``groups`` argument means this too
    (``groups=bot_channels // groups`` in its code)."""

    def __init__(self, in_channels: int, out_channels: int, group_width: int, bottleneck_ratio: float,
                 use_1x1conv: bool = False, stride: int = 1):
        super().__init__()
        bot = int(round(out_channels * bottleneck_ratio))
        if bot % group_width:
            raise ValueError(f"bottleneck width {bot} is not a multiple of group_width={group_width}")
        self.conv1 = nn.Conv2d(in_channels, bot, 1)
        self.conv2 = nn.Conv2d(bot, bot, 3, stride=stride, padding=1, groups=bot // group_width)
        self.conv3 = nn.Conv2d(bot, out_channels, 1)
        self.bn1, self.bn2, self.bn3 = nn.BatchNorm2d(bot), nn.BatchNorm2d(bot), nn.BatchNorm2d(out_channels)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride), nn.BatchNorm2d(out_channels))
            if use_1x1conv else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        if self.shortcut is not None:
            x = self.shortcut(x)
        return F.relu(y + x)


def resnet_stem(in_channels: int, channels: int = 64) -> list[nn.Module]:
    """7x7/2 conv, BN, ReLU, 3x3/2 max-pool: the stem of ResNet, DenseNet and the chapter's GoogLeNet."""
    return [
        nn.Conv2d(in_channels, channels, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]


def pooled_head(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, num_classes))


# (residual blocks, channels) per stage.
RESNET18 = [[2, 64], [2, 128], [2, 256], [2, 512]]


@register_model("resnet18", resolution=96)
def resnet18(num_classes=10, in_channels=1, arch: list = RESNET18, init: Init = "xavier"):
    """The chapter's ResNet-18: stem, four stages of two residual blocks, each stage after the
    first halving the resolution with a strided 1x1 shortcut."""
    layers, channels = resnet_stem(in_channels), 64
    for i, (num_blocks, out_channels) in enumerate(arch):
        blocks = []
        for j in range(num_blocks):
            downsample = j == 0 and i > 0
            blocks.append(Residual(channels, out_channels, use_1x1conv=downsample, stride=2 if downsample else 1))
            channels = out_channels
        layers.append(nn.Sequential(*blocks))
    return init_weights(Classifier(nn.Sequential(*layers), pooled_head(channels, num_classes)), init)
