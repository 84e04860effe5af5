"""DenseNet (d2l 8.7): dense blocks that concatenate each layer's output to its input, with
transition layers shrinking the channels and the resolution between blocks. The family is
Table 1 of Huang et al. (2017): DenseNet-BC, with bottleneck layers and compression 0.5."""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .layers import (
    Channels,
    Classifier,
    Fraction,
    Init,
    Norm,
    biased,
    init_weights,
    norm_layer,
    pooled_head,
    resnet_stem,
)
from .registry import ModelError, add_model


def conv_block(in_channels: int, out_channels: int, kernel_size: int = 3, bias: bool = True,
               norm: Norm = "batch") -> list[nn.Module]:
    """norm-ReLU-conv (the pre-activation order)."""
    return [*norm_layer(norm, in_channels, 4), nn.ReLU(),
            biased(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2), bias)]


class DenseBlock(nn.Module):
    """``num_convs`` layers, each adding ``growth_rate`` channels. A layer is BN-ReLU-conv3x3,
    or with ``bottleneck`` BN-ReLU-conv1x1 to ``bn_size * growth_rate`` channels first (DenseNet-B)."""

    def __init__(self, num_convs: int, in_channels: int, growth_rate: int, bottleneck: bool = False,
                 bn_size: int = 4, bias: bool = True, norm: Norm = "batch"):
        super().__init__()

        def layer(cin):
            if not bottleneck:
                return nn.Sequential(*conv_block(cin, growth_rate, 3, bias, norm))
            return nn.Sequential(*conv_block(cin, bn_size * growth_rate, 1, bias, norm),
                                 *conv_block(bn_size * growth_rate, growth_rate, 3, bias, norm))

        self.net = nn.ModuleList(layer(in_channels + i * growth_rate) for i in range(num_convs))
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.net:
            x = torch.cat((x, blk(x)), dim=1)
        return x


# Layers per dense block: Table 1 of the DenseNet paper (growth rate 32, 64-channel stem).
DENSENET = {
    "densenet121": [6, 12, 24, 16],
    "densenet169": [6, 12, 32, 32],
    "densenet201": [6, 12, 48, 32],
    "densenet264": [6, 12, 64, 48],
}


def densenet(
    num_classes=10,
    in_channels=1,
    stem_channels: Channels = 64,
    growth_rate: Channels = 32,
    arch: list = [4, 4, 4, 4],
    bottleneck: bool = False,
    bn_size: Channels = 4,
    compression: Fraction = 0.5,
    transition_pool: Literal["avg", "max"] = "avg",
    bias: bool = True,
    norm: Norm = "batch",
    init: Init = "pytorch",
):
    """Stem, dense blocks of ``arch`` layers; between blocks a transition (BN-ReLU-conv1x1 to
    ``compression`` of the channels, then a 2x2/2 ``transition_pool``); BN-ReLU, GAP, dense.
    The book's convolutions keep their bias; the paper's (torchvision's) have none: ``bias=False``.
    ``norm`` is every layer's norm (batch norm by default). ``init=pytorch``: the book's run never
    applies its Xavier init to DenseNet."""
    if not 0 < compression <= 1:
        raise ModelError(f"model.compression={compression} is not allowed; it must be in (0, 1]")
    layers, channels = resnet_stem(in_channels, stem_channels, bias, norm), stem_channels
    pool = nn.AvgPool2d if transition_pool == "avg" else nn.MaxPool2d
    for i, num_convs in enumerate(arch):
        layers.append(DenseBlock(num_convs, channels, growth_rate, bottleneck, bn_size, bias, norm))
        channels = layers[-1].out_channels
        if i != len(arch) - 1:
            out = int(channels * compression)
            if out < 1:
                raise ModelError(f"model.compression={compression} keeps no channel of the {channels} after dense block "
                                 f"{i + 1}; it must keep at least one: at least {1 / channels:.3g}")
            layers.append(nn.Sequential(*conv_block(channels, out, 1, bias, norm), pool(2, stride=2)))
            channels = out
    layers += [*norm_layer(norm, channels, 4), nn.ReLU()]
    return init_weights(Classifier(nn.Sequential(*layers), pooled_head(channels, num_classes)), init)


add_model("densenet", densenet, 96, "The chapter's DenseNet: four dense blocks of four BN-ReLU-conv layers, growth 32 (d2l 8.7)")
for _name, _layers in DENSENET.items():
    add_model(_name, densenet, 96, f"DenseNet-{_name[8:]} (DenseNet-BC): dense blocks {_layers}, bottlenecks, compression 0.5",
              arch=_layers, bottleneck=True)
