"""GoogLeNet (d2l 8.4): a stem, then stages of Inception blocks, global average pooling."""
from __future__ import annotations

import torch
from torch import nn

from .layers import Classifier, Init, init_weights
from .registry import register_model


class Inception(nn.Module):
    """Four parallel paths concatenated on channels: 1x1; 1x1 -> 3x3; 1x1 -> 5x5;
    3x3 max-pool -> 1x1. ``c2`` and ``c3`` are (reduction, output) channel pairs."""

    def __init__(self, in_channels: int, c1: int, c2: list[int], c3: list[int], c4: int):
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(in_channels, c1, 1), nn.ReLU())
        self.b2 = nn.Sequential(
            nn.Conv2d(in_channels, c2[0], 1), nn.ReLU(), nn.Conv2d(c2[0], c2[1], 3, padding=1), nn.ReLU()
        )
        self.b3 = nn.Sequential(
            nn.Conv2d(in_channels, c3[0], 1), nn.ReLU(), nn.Conv2d(c3[0], c3[1], 5, padding=2), nn.ReLU()
        )
        self.b4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(in_channels, c4, 1), nn.ReLU())
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], dim=1)


# Inception stages of the chapter's network (b3, b4, b5); each row is (c1, c2, c3, c4).
# Every stage but the last ends with a 3x3/2 max-pool.
GOOGLENET = [
    [[64, [96, 128], [16, 32], 32], [128, [128, 192], [32, 96], 64]],
    [[192, [96, 208], [16, 48], 64], [160, [112, 224], [24, 64], 64], [128, [128, 256], [24, 64], 64],
     [112, [144, 288], [32, 64], 64], [256, [160, 320], [32, 128], 128]],
    [[256, [160, 320], [32, 128], 128], [384, [192, 384], [48, 128], 128]],
]


@register_model("googlenet", resolution=96)
def googlenet(num_classes=10, in_channels=1, stages: list = GOOGLENET, init: Init = "xavier"):
    """The chapter's GoogLeNet: 7x7/2 stem, 1x1 + 3x3 convs, nine Inception blocks in three stages."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
        nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]
    channels = 192
    for i, stage in enumerate(stages):
        for c1, c2, c3, c4 in stage:
            block = Inception(channels, c1, c2, c3, c4)
            layers.append(block)
            channels = block.out_channels
        if i < len(stages) - 1:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
    features = nn.Sequential(*layers)
    head = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, num_classes))
    return init_weights(Classifier(features, head), init)
