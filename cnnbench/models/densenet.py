"""DenseNet (d2l 8.7): dense blocks that concatenate each layer's output to its input,
with 1x1-conv + avg-pool transition layers halving the channels between blocks."""
from __future__ import annotations

import torch
from torch import nn

from .layers import Classifier, Init, init_weights
from .registry import register_model
from .resnet import pooled_head, resnet_stem


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """BN-ReLU-conv3x3 (the pre-activation order)."""
    return nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, out_channels, 3, padding=1))


class DenseBlock(nn.Module):
    def __init__(self, num_convs: int, in_channels: int, growth_rate: int):
        super().__init__()
        self.net = nn.ModuleList(conv_block(in_channels + i * growth_rate, growth_rate) for i in range(num_convs))
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            x = torch.cat((x, blk(x)), dim=1)
        return x


def transition_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_channels), nn.ReLU(), nn.Conv2d(in_channels, out_channels, 1), nn.AvgPool2d(2, stride=2)
    )


@register_model("densenet", resolution=96)
def densenet(
    num_classes=10,
    in_channels=1,
    num_channels: int = 64,
    growth_rate: int = 32,
    arch: list = [4, 4, 4, 4],
    init: Init = "default",
):
    """The chapter's DenseNet: four dense blocks of four conv blocks, growth rate 32.
    ``init=default``: the book's run never applies its Xavier init to this model."""
    layers, channels = resnet_stem(in_channels, num_channels), num_channels
    for i, num_convs in enumerate(arch):
        block = DenseBlock(num_convs, channels, growth_rate)
        layers.append(block)
        channels = block.out_channels
        if i != len(arch) - 1:
            layers.append(transition_block(channels, channels // 2))
            channels //= 2
    layers += [nn.BatchNorm2d(channels), nn.ReLU()]
    return init_weights(Classifier(nn.Sequential(*layers), pooled_head(channels, num_classes)), init)
