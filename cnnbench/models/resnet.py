"""ResNet and ResNeXt (d2l 8.6): stages of residual blocks after a 7x7/2 stem; the family is
Table 1 of He et al. (2016), ResNeXt is the bottleneck block with grouped 3x3 convolutions
(Xie et al. 2017), and ``preact`` gives the pre-activation blocks of He et al. (2016b)."""
from __future__ import annotations

from torch import nn

from .layers import (
    BlockKind,
    Channels,
    Classifier,
    Init,
    Norm,
    Ratio,
    ResidualBlock,
    init_weights,
    norm_layer,
    pooled_head,
    resnet_stem,
)
from .registry import add_model

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
    norm: Norm = "batch",
    init: Init = "xavier",
):
    """Stem, stages of residual blocks (each stage after the first halves the resolution in its
    first block), global average pooling, a dense layer. The book's convolutions keep their bias
    and its basic block's projection has no batch norm; the paper's (and torchvision's) settings
    are ``bias=False shortcut_norm=True``. ``norm`` is the norm layer of every block and the stem
    (batch norm; ``scratch`` and the lite kinds, or ``none`` for a ResNet without normalisation)."""
    layers, channels = resnet_stem(in_channels, bias=bias, norm=norm), 64
    for i, (num_blocks, out_channels) in enumerate(arch):
        blocks = [
            ResidualBlock(channels if j == 0 else out_channels, out_channels, block, 2 if (j == 0 and i > 0) else 1,
                          groups, bottleneck_ratio, preact, bias, shortcut_norm, norm)
            for j in range(num_blocks)
        ]
        layers.append(nn.Sequential(*blocks))
        channels = out_channels
    if preact:  # the last block's sum is not activated yet
        layers += [*norm_layer(norm, channels, 4), nn.ReLU()]
    return init_weights(Classifier(nn.Sequential(*layers), pooled_head(channels, num_classes)), init)


add_model("resnet18", resnet, 96, "ResNet-18: stem and four stages of two basic blocks (d2l 8.6)")
add_model("resnet34", resnet, 96, "ResNet-34: basic blocks [3, 4, 6, 3] (ResNet paper, Table 1)", arch=RESNET["resnet34"])
_BOTTLENECK = dict(block="bottleneck", bottleneck_ratio=0.25, shortcut_norm=True)
for _name, _blocks in (("resnet50", "[3, 4, 6, 3]"), ("resnet101", "[3, 4, 23, 3]"), ("resnet152", "[3, 8, 36, 3]")):
    add_model(_name, resnet, 96, f"ResNet-{_name[6:]}: bottleneck blocks {_blocks} (ResNet paper, Table 1)",
              arch=RESNET[_name], **_BOTTLENECK)
add_model("resnext50", resnet, 96, "ResNeXt-50 (32x4d): ResNet-50 with 32-group 3x3 convolutions twice as wide",
          arch=RESNET["resnet50"], **(_BOTTLENECK | dict(bottleneck_ratio=0.5, groups=32)))
