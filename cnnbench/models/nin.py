"""Network in Network (d2l 8.3): NiN blocks (a convolution followed by 1x1 convolutions that
act as a per-pixel MLP) and a global-average-pool head instead of dense layers."""
from __future__ import annotations

from typing import Annotated, Literal

from torch import nn

from .layers import (
    VGG_STAGES,
    Classifier,
    Dropout,
    Init,
    Kernel,
    conv_plan,
    flat_features,
    init_weights,
)
from .registry import ModelError, Range, add_model

# Rows are NiN blocks [channels, kernel, stride, padding] of the first convolution, "M" a max-pool.
NIN = [[96, 11, 4, 0], "M", [256, 5, 1, 2], "M", [384, 3, 1, 1], "M"]


def vgg_style(stages: list) -> list:
    """A VGG table ([convs, channels] per stage) as NiN rows: a 3x3 NiN block per convolution,
    a max-pool after each stage."""
    return [row for convs, channels in stages for row in [[channels, 3, 1, 1]] * convs + ["M"]]


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
              num_1x1: int = 2, kernel_1x1: int = 1) -> list[nn.Module]:
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU()]
    for _ in range(num_1x1):
        layers += [nn.Conv2d(out_channels, out_channels, kernel_1x1, padding=kernel_1x1 // 2), nn.ReLU()]
    return layers


def nin(
    num_classes=10,
    in_channels=1,
    image_size=224,
    arch: list = NIN,
    pool: list = [3, 2],
    num_1x1: Annotated[int, Range(0, 16)] = 2,
    kernel_1x1: Kernel = 1,
    head: Literal["gap", "dense"] = "gap",
    dropout: Dropout = 0.5,
    init: Init = "xavier",
):
    """NiN blocks from ``arch``, dropout, a last NiN block with one channel per class, then the
    head: ``gap`` averages each channel (the book), ``dense`` flattens into a dense layer.

    ``num_1x1`` is the number of 1x1 convolutions per block (the book: 2); ``kernel_1x1=3``
    makes them 3x3 (padded, so shapes do not change)."""
    if kernel_1x1 % 2 == 0:  # (the knob ranges check 0 <= num_1x1 <= 16 and 1 <= kernel_1x1 <= 31)
        raise ModelError(f"model.kernel_1x1={kernel_1x1} is not allowed; it must be odd (1, 3, 5, ...), "
                         "so that its padding keeps the size of the feature map")
    layers, channels = conv_plan(
        arch, in_channels,
        lambda cin, cout, k, s, p: nin_block(cin, cout, k, s, p, num_1x1, kernel_1x1),
        lambda: nn.MaxPool2d(*pool),
    )
    features = nn.Sequential(*layers, nn.Dropout(dropout),
                             *nin_block(channels, num_classes, 3, 1, 1, num_1x1, kernel_1x1))
    if head == "gap":
        top = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    else:
        top = nn.Sequential(nn.Flatten(), nn.Linear(flat_features(features, in_channels, image_size), num_classes))
    return init_weights(Classifier(features, top), init)


add_model("nin", nin, 224, "NiN: three NiN blocks with max-pools, a class-channel block, global average pooling (d2l 8.3)")
for _name in VGG_STAGES:  # the exercise's VGG-style NiN family of growing depth
    add_model(f"nin_{_name}", nin, 96, f"NiN laid out like {_name.upper()}: a 3x3 NiN block per convolution, 2x2 pools",
              arch=vgg_style(VGG_STAGES[_name]), pool=[2, 2])
