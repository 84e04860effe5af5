"""ResNet and ResNeXt (d2l 8.6): stages of residual blocks after a 7x7/2 stem; the family is
Table 1 of He et al. (2016), ResNeXt is the bottleneck block with grouped 3x3 convolutions
(Xie et al. 2017), and ``preact`` gives the pre-activation blocks of He et al. (2016b)."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Channels, Classifier, Init, Ratio, init_weights
from .registry import ModelError, add_model

BlockKind = Literal["basic", "bottleneck"]


class ResidualBlock(nn.Module):
    """A residual block: a branch of convolutions plus the input.

    ``basic`` (the book's ``Residual``): 3x3 -> 3x3. ``bottleneck`` (the book's
    ``ResNeXtBlock``): 1x1 -> 3x3 -> 1x1. The inner width is ``round(out * bottleneck_ratio)``,
    the 3x3 convolutions have ``groups`` groups, and the first 3x3 carries the stride. The input
    goes through a 1x1 projection (with batch norm when ``shortcut_norm``) when the shape changes.

    Post-activation (``preact=False``, the original): conv-BN-ReLU per layer, the last ReLU
    after the sum. Pre-activation: BN-ReLU-conv per layer, nothing after the sum, and the
    projection sees the pre-activated input.
    """

    def __init__(self, in_channels: int, out_channels: int, kind: BlockKind = "basic", stride: int = 1,
                 groups: int = 1, bottleneck_ratio: float = 1.0, preact: bool = False, bias: bool = True,
                 shortcut_norm: bool = False):
        super().__init__()
        mid = int(round(out_channels * bottleneck_ratio))
        if mid < 1 or mid % groups:
            raise ModelError(f"model.groups={groups}: the block's inner width {mid} "
                             f"(= {out_channels} x bottleneck_ratio {bottleneck_ratio}) must be a positive multiple of it")
        # (kernel, out channels, stride, groups) per convolution
        convs = [(3, mid, stride, groups), (3, out_channels, 1, groups)] if kind == "basic" else \
            [(1, mid, 1, 1), (3, mid, stride, groups), (1, out_channels, 1, 1)]
        self.pre = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU()) if preact else None
        layers, channels = [], in_channels
        for i, (k, cout, s, g) in enumerate(convs):
            if preact and i > 0:
                layers += [nn.BatchNorm2d(channels), nn.ReLU()]
            layers.append(nn.Conv2d(channels, cout, k, stride=s, padding=k // 2, groups=g, bias=bias))
            if not preact:
                layers += [nn.BatchNorm2d(cout)] + ([nn.ReLU()] if i < len(convs) - 1 else [])
            channels = cout
        self.branch = nn.Sequential(*layers)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias),
                *([nn.BatchNorm2d(out_channels)] if shortcut_norm else []),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = self.pre(x)
            return self.branch(x) + (x if self.shortcut is None else self.shortcut(x))
        y = self.branch(x) + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(y)


def resnet_stem(in_channels: int, channels: int = 64, bias: bool = True) -> list[nn.Module]:
    """7x7/2 conv, BN, ReLU, 3x3/2 max-pool: the stem of ResNet, DenseNet and the chapter's GoogLeNet."""
    return [
        nn.Conv2d(in_channels, channels, kernel_size=7, stride=2, padding=3, bias=bias), nn.BatchNorm2d(channels),
        nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]


def pooled_head(channels: int, num_classes: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, num_classes))


# [residual blocks, output channels] per stage: Table 1 of the ResNet paper.
RESNET = {
    "resnet18": [[2, 64], [2, 128], [2, 256], [2, 512]],
    "resnet34": [[3, 64], [4, 128], [6, 256], [3, 512]],
    "resnet50": [[3, 256], [4, 512], [6, 1024], [3, 2048]],
    "resnet101": [[3, 256], [4, 512], [23, 1024], [3, 2048]],
    "resnet152": [[3, 256], [8, 512], [36, 1024], [3, 2048]],
}


def resnet(
    num_classes=10,
    in_channels=1,
    arch: list = RESNET["resnet18"],
    block: BlockKind = "basic",
    bottleneck_ratio: Ratio = 1.0,
    groups: Channels = 1,
    preact: bool = False,
    bias: bool = True,
    shortcut_norm: bool = False,
    init: Init = "xavier",
):
    """Stem, stages of residual blocks (each stage after the first halves the resolution in its
    first block), global average pooling, a dense layer. The book's convolutions keep their bias
    and its basic block's projection has no batch norm; the paper's (and torchvision's) settings
    are ``bias=False shortcut_norm=True``."""
    layers, channels = resnet_stem(in_channels, bias=bias), 64
    for i, (num_blocks, out_channels) in enumerate(arch):
        blocks = [
            ResidualBlock(channels if j == 0 else out_channels, out_channels, block, 2 if (j == 0 and i > 0) else 1,
                          groups, bottleneck_ratio, preact, bias, shortcut_norm)
            for j in range(num_blocks)
        ]
        layers.append(nn.Sequential(*blocks))
        channels = out_channels
    if preact:  # the last block's sum is not activated yet
        layers += [nn.BatchNorm2d(channels), nn.ReLU()]
    return init_weights(Classifier(nn.Sequential(*layers), pooled_head(channels, num_classes)), init)


add_model("resnet18", resnet, 96, "ResNet-18: stem and four stages of two basic blocks (d2l 8.6)")
add_model("resnet34", resnet, 96, "ResNet-34: basic blocks [3, 4, 6, 3] (ResNet paper, Table 1)", arch=RESNET["resnet34"])
_BOTTLENECK = dict(block="bottleneck", bottleneck_ratio=0.25, shortcut_norm=True)
for _name, _blocks in (("resnet50", "[3, 4, 6, 3]"), ("resnet101", "[3, 4, 23, 3]"), ("resnet152", "[3, 8, 36, 3]")):
    add_model(_name, resnet, 96, f"ResNet-{_name[6:]}: bottleneck blocks {_blocks} (ResNet paper, Table 1)",
              arch=RESNET[_name], **_BOTTLENECK)
add_model("resnext50", resnet, 96, "ResNeXt-50 (32x4d): ResNet-50 with 32-group 3x3 convolutions twice as wide",
          arch=RESNET["resnet50"], **(_BOTTLENECK | dict(bottleneck_ratio=0.5, groups=32)))
