"""AnyNet and RegNetX (d2l 8.8): a 3x3/2 stem, stages of ResNeXt blocks given as data, a pooled head."""
from __future__ import annotations

from torch import nn

from .layers import Classifier, Init, init_weights
from .registry import register_model
from .resnet import ResNeXtBlock, pooled_head

# (depth, width, group_width, bottleneck_ratio) per stage: the chapter's 32-layer RegNetX.
REGNETX32 = [[4, 32, 16, 1.0], [6, 80, 16, 1.0]]


def anynet(num_classes: int, in_channels: int, stem_channels: int, stages, init: Init) -> Classifier:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, stem_channels, kernel_size=3, stride=2, padding=1),
        nn.BatchNorm2d(stem_channels), nn.ReLU(),
    ]
    channels = stem_channels
    for depth, width, group_width, ratio in stages:
        blocks = [ResNeXtBlock(channels, width, group_width, ratio, use_1x1conv=True, stride=2)]
        blocks += [ResNeXtBlock(width, width, group_width, ratio) for _ in range(depth - 1)]
        layers.append(nn.Sequential(*blocks))
        channels = width
    return init_weights(Classifier(nn.Sequential(*layers), pooled_head(channels, num_classes)), init)


@register_model("regnetx32", resolution=96)
def regnetx32(num_classes=10, in_channels=1, stem_channels: int = 32, stages: list = REGNETX32,
              init: Init = "default"):
    """The chapter's RegNetX-32: stem of 32 channels, two stages (depth 4 and 6, widths 32 and 80),
    group width 16, no bottleneck. ``init=default``: the book never applies Xavier to it."""
    return anynet(num_classes, in_channels, stem_channels, stages, init)
