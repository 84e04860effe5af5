"""VGG (d2l 8.2): stages of 3x3 convolutions, each closed by a 2x2 max-pool, and two wide
dense layers. The family is Table 1 of Simonyan & Zisserman (2015), one row per stage."""
from __future__ import annotations

from torch import nn

from .layers import (
    VGG_STAGES,
    Classifier,
    Dropout,
    Init,
    Norm,
    Ratio,
    dense_head,
    flat_features,
    init_weights,
    norm_layer,
)
from .registry import ModelError, add_model

# For 56 or 84 px inputs instead of 224 upsampled: two or three convolutions (more
# non-linearity) before every downsampling, and four stages, so 56 px ends at 3x3.
VGG_LOWRES = [[2, 64], [2, 128], [3, 256], [3, 512]]


def vgg_block(num_convs: int, in_channels: int, out_channels: int, norm: Norm = "none") -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                   *norm_layer(norm, out_channels, 4), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


def vgg(
    num_classes=10,
    in_channels=1,
    image_size=224,
    arch: list = VGG_STAGES["vgg11"],
    width: Ratio = 1.0,
    hidden: list = [4096, 4096],
    dropout: Dropout = 0.5,
    norm: Norm = "none",
    init: Init = "xavier",
):
    """VGG: ``width`` scales every stage's channels (the chapter trains width=0.25); the dense
    layers keep ``hidden`` units whatever the width, as in the book. ``norm=batch`` puts batch
    norm after every convolution (torchvision's vgg*_bn, which keeps the conv bias)."""
    if width <= 0:
        raise ModelError(f"model.width={width}: must be positive")
    for stage in arch:
        if not isinstance(stage, (list, tuple)) or len(stage) != 2 or \
                not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in stage):
            raise ModelError(f"model.arch={arch}: each stage is [convolutions, channels], two positive whole "
                             f"numbers (VGG-11: {VGG_STAGES['vgg11']}); {stage!r} is not")
    stages, channels = [], in_channels
    for num_convs, out_channels in arch:
        out_channels = max(1, round(out_channels * width))
        stages.append(vgg_block(num_convs, channels, out_channels, norm))
        channels = out_channels
    features = nn.Sequential(*stages, nn.Flatten())
    head = dense_head(flat_features(features, in_channels, image_size), hidden, num_classes, dropout)
    return init_weights(Classifier(features, head), init)


for _name, _depth in (("vgg11", "A"), ("vgg13", "B"), ("vgg16", "D"), ("vgg19", "E")):
    add_model(_name, vgg, 224, f"VGG-{_name[3:]}, configuration {_depth} of the VGG paper (d2l 8.2)", arch=VGG_STAGES[_name])
add_model("vgg_lowres", vgg, 56, "VGG for 56 or 84 px inputs: more convolutions before each pool, four stages",
          arch=VGG_LOWRES)
