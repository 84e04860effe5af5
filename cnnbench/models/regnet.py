"""AnyNet and RegNetX (d2l 8.8): a 3x3/2 stem, stages of residual blocks given as data, a
pooled head. The exercises' variants are tables too: a deeper four-stage RegNetX, the block
switched from ResNeXt to ResNet, and "VioNets" that break one RegNetX design rule each."""
from __future__ import annotations

from torch import nn

from .layers import (
    BlockKind,
    Channels,
    Classifier,
    Init,
    Norm,
    ResidualBlock,
    Stride,
    biased,
    init_weights,
    norm_layer,
    pooled_head,
)
from .registry import ModelError, add_model

# [depth, width, group_width, bottleneck_ratio] per stage.
REGNETX32 = [[4, 32, 16, 1.0], [6, 80, 16, 1.0]]  # the chapter's 32-layer RegNetX
# RegNetX-200MF (Radosavovic et al. 2020, appendix): d = [1, 1, 4, 7], w = [24, 56, 152, 368], g = 8, b = 1.
REGNETX_200MF = [[1, 24, 8, 1.0], [1, 56, 8, 1.0], [4, 152, 8, 1.0], [7, 368, 8, 1.0]]
# The RegNetX rules are: widths and depths do not shrink from stage to stage, and all stages
# share one bottleneck ratio and one group width. Each VioNet breaks one of them.
VIONET = {
    "vionet_width": ([[4, 80, 16, 1.0], [6, 32, 16, 1.0]], "widths shrink (80 -> 32)"),
    "vionet_depth": ([[6, 32, 16, 1.0], [4, 80, 16, 1.0]], "depths shrink (6 -> 4)"),
    "vionet_ratio": ([[4, 32, 16, 0.5], [6, 80, 16, 2.0]], "the bottleneck ratio grows (0.5 -> 2)"),
    "vionet_groups": ([[4, 32, 8, 1.0], [6, 80, 40, 1.0]], "the group width grows (8 -> 40)"),
}


def anynet(
    num_classes=10,
    in_channels=1,
    stem_channels: Channels = 32,
    arch: list = REGNETX32,
    block: BlockKind = "bottleneck",
    norm: Norm = "batch",
    init: Init = "pytorch",
    stem_stride: Stride = 2,  # 1: a stem that keeps the resolution (pycls's CIFAR stem), for 28 px inputs
    bias: bool = True,  # the book's convolutions keep their bias; torchvision's and pycls's RegNets have none
):
    """AnyNet: ``arch`` is [depth, width, group_width, bottleneck_ratio] per stage; every stage
    starts with a block that halves the resolution. ``block=bottleneck`` is the book's ResNeXt
    block (1x1 -> grouped 3x3 -> 1x1, ``width * bottleneck_ratio`` inner channels, ``group_width``
    channels per group); ``block=basic`` is the book's ResNet block (two 3x3 convolutions at the
    stage width), which has no groups or bottleneck, so the table's group_width and
    bottleneck_ratio then go unused. ``norm`` is every block's norm layer. ``init=pytorch``: the
    book's runs never apply Xavier init to these networks."""
    layers: list[nn.Module] = [
        biased(nn.Conv2d(in_channels, stem_channels, kernel_size=3, stride=stem_stride, padding=1), bias),
        *norm_layer(norm, stem_channels, 4), nn.ReLU(),
    ]
    channels = stem_channels
    for i, row in enumerate(arch):
        if len(row) != 4:
            raise ModelError(f"model.arch[{i}]={list(row)}: give [depth, width, group_width, bottleneck_ratio]")
        depth, width, group_width, ratio = row
        if block == "bottleneck":
            mid = int(round(width * ratio))
            if group_width < 1 or mid % group_width:
                raise ModelError(f"model.arch[{i}]: group_width {group_width} does not divide the inner width "
                                 f"{mid} (= width {width} x bottleneck_ratio {ratio})")
            kw = dict(kind="bottleneck", groups=mid // group_width, bottleneck_ratio=ratio, shortcut_norm=True)
        else:
            kw = dict(kind="basic")
        kw |= {"bias": bias, "norm": norm}
        layers.append(nn.Sequential(*(
            ResidualBlock(channels if j == 0 else width, width, stride=2 if j == 0 else 1, **kw) for j in range(depth)
        )))
        channels = width
    return init_weights(Classifier(nn.Sequential(*layers), pooled_head(channels, num_classes)), init)


add_model("regnetx32", anynet, 96, "The chapter's RegNetX-32: two stages of ResNeXt blocks, group width 16 (d2l 8.8)")
add_model("regnetx_200mf", anynet, 96, "RegNetX-200MF: four stages, depths [1, 1, 4, 7], widths [24, 56, 152, 368], "
          "group width 8", arch=REGNETX_200MF)
for _name, (_stages, _broken) in VIONET.items():
    add_model(_name, anynet, 96, f"VioNet: RegNetX-32 except that {_broken}", arch=_stages)
