"""VGG (d2l 8.2): stages of 3x3 convolutions, each closed by a 2x2 max-pool."""
from __future__ import annotations

from torch import nn

from .layers import Classifier, Init, dense_head, flat_features, init_weights
from .registry import register_model

# (number of convolutions, output channels) per stage: configuration A of the VGG paper.
VGG11 = [[1, 64], [1, 128], [2, 256], [2, 512], [2, 512]]


def vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


@register_model("vgg11", resolution=224)
def vgg11(
    num_classes=10,
    in_channels=1,
    image_size=224,
    arch: list = VGG11,
    width: float = 1.0,
    hidden: int = 4096,
    dropout: float = 0.5,
    init: Init = "xavier",
):
    """VGG-11. ``width`` scales every stage's channels (the chapter trains width=0.25);
    the two dense layers keep ``hidden`` units whatever the width, as in the book."""
    if width <= 0:
        raise ValueError(f"width={width}: must be positive")
    stages, channels = [], in_channels
    for num_convs, out_channels in arch:
        out_channels = max(1, round(out_channels * width))
        stages.append(vgg_block(num_convs, channels, out_channels))
        channels = out_channels
    features = nn.Sequential(*stages, nn.Flatten())
    head = dense_head(flat_features(features, in_channels, image_size), [hidden, hidden], num_classes, dropout)
    return init_weights(Classifier(features, head), init)
