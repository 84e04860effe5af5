"""GoogLeNet (d2l 8.4): a stem, then stages of Inception blocks, global average pooling; and
the exercises' variants: batch norm, Inception-v2/v3 factorised blocks, residual Inception
blocks, and a stem for native 28x28 inputs."""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Classifier, Init, Kernel, Norm, biased, init_weights, norm_layer
from .registry import ModelError, add_model

Inception = Literal["v1", "v2", "v3"]


def conv(cin: int, cout: int, kernel: int | tuple[int, int], norm: Norm, bias: bool, act: bool = True) -> list[nn.Module]:
    """A same-padded convolution, [norm], [ReLU]."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return [biased(nn.Conv2d(cin, cout, (kh, kw), padding=(kh // 2, kw // 2)), bias or norm == "none"),
            *norm_layer(norm, cout, 4), *([nn.ReLU()] if act else [])]


class InceptionBlock(nn.Module):
    """Four parallel paths concatenated on channels: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 max-pool
    -> 1x1. ``c2`` and ``c3`` are (reduction, output) channel pairs.

    ``version``: v1 is the book's; v2 replaces the 5x5 by two 3x3 (Szegedy et al. 2016, fig. 5);
    v3 also splits every 3x3 into a 1x3 and a 3x1 (fig. 6 with n=3). ``kernel5`` is v1's third
    path kernel (torchvision's googlenet uses 3 there, a bug it keeps for its weights).
    ``residual``: the concatenation goes through a linear 1x1 convolution and is added to the
    input (through a 1x1 projection when the channels differ), then ReLU, as in Inception-ResNet.
    """

    def __init__(self, in_channels: int, c1: int, c2: list[int], c3: list[int], c4: int,
                 version: Inception = "v1", norm: Norm = "none", bias: bool = True, kernel5: int = 5,
                 residual: bool = False):
        super().__init__()

        def k3(cin, cout):  # a 3x3 convolution, or its v3 factorisation
            if version == "v3":
                return conv(cin, cout, (1, 3), norm, bias) + conv(cout, cout, (3, 1), norm, bias)
            return conv(cin, cout, 3, norm, bias)

        self.b1 = nn.Sequential(*conv(in_channels, c1, 1, norm, bias))
        self.b2 = nn.Sequential(*conv(in_channels, c2[0], 1, norm, bias), *k3(c2[0], c2[1]))
        wide = conv(c3[0], c3[1], kernel5, norm, bias) if version == "v1" else k3(c3[0], c3[1]) + k3(c3[1], c3[1])
        self.b3 = nn.Sequential(*conv(in_channels, c3[0], 1, norm, bias), *wide)
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *conv(in_channels, c4, 1, norm, bias))
        self.out_channels = c1 + c2[1] + c3[1] + c4
        self.mix = self.shortcut = None
        if residual:
            self.mix = nn.Sequential(*conv(self.out_channels, self.out_channels, 1, norm, bias, act=False))
            if in_channels != self.out_channels:
                self.shortcut = nn.Sequential(*conv(in_channels, self.out_channels, 1, norm, bias, act=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)
        if self.mix is None:
            return y
        return F.relu(self.mix(y) + (x if self.shortcut is None else self.shortcut(x)))


# Inception stages of the chapter's network (b3, b4, b5); each row is (c1, c2, c3, c4).
# Every stage but the last ends with a 3x3/2 max-pool.
GOOGLENET = [
    [[64, [96, 128], [16, 32], 32], [128, [128, 192], [32, 96], 64]],
    [[192, [96, 208], [16, 48], 64], [160, [112, 224], [24, 64], 64], [128, [128, 256], [24, 64], 64],
     [112, [144, 288], [32, 64], 64], [256, [160, 320], [32, 128], 128]],
    [[256, [160, 320], [32, 128], 128], [384, [192, 384], [48, 128], 128]],
]


def stem_layers(stem: str, in_channels: int, norm: Norm, bias: bool) -> list[nn.Module]:
    """``imagenet``: the book's 7x7/2 conv, pool, 1x1 and 3x3 convs, pool (input / 8);
    ``small``: for 28x28 inputs, two 3x3 convs (to 64, then 192 channels) and one pool (input / 2),
    so 28 px reaches the Inception stages at 14 px, as 96 px does at 12 px through the book's."""
    if stem == "imagenet":
        return [
            biased(nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), bias or norm == "none"),
            *norm_layer(norm, 64, 4), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            *conv(64, 64, 1, norm, bias), *conv(64, 192, 3, norm, bias),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        ]
    return [*conv(in_channels, 64, 3, norm, bias), *conv(64, 192, 3, norm, bias),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]


def googlenet(
    num_classes=10,
    in_channels=1,
    stem: Literal["imagenet", "small"] = "imagenet",
    arch: list = GOOGLENET,
    inception: Inception = "v1",
    residual: bool = False,
    norm: Norm = "none",
    bias: bool = True,
    kernel5: Kernel = 5,
    init: Init = "xavier",
):
    """GoogLeNet: ``stem``, Inception stages with a 3x3/2 max-pool between them, GAP, a dense
    layer. ``norm=batch`` adds batch norm after every convolution (``bias=False`` then drops
    the conv biases, as torchvision does)."""
    if inception != "v1" and kernel5 != 5:
        raise ModelError(f"model.kernel5={kernel5} applies to inception=v1 only (inception={inception} factorises the 5x5)")
    layers, channels = stem_layers(stem, in_channels, norm, bias), 192
    for i, stage in enumerate(arch):
        for c1, c2, c3, c4 in stage:
            layers.append(InceptionBlock(channels, c1, c2, c3, c4, inception, norm, bias, kernel5, residual))
            channels = layers[-1].out_channels
        if i < len(arch) - 1:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    head = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, num_classes))
    return init_weights(Classifier(nn.Sequential(*layers), head), init)


add_model("googlenet", googlenet, 96, "GoogLeNet: 7x7/2 stem, nine Inception blocks in three stages (d2l 8.4)")
add_model("googlenet28", googlenet, 28, "GoogLeNet for native 28x28 inputs: a stem of 3x3 convs and one pool, "
          "stages at 14, 7 and 4 px", stem="small")
