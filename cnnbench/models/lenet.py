"""LeNet-5 (d2l 7.6) and LeNet with batch normalisation (d2l 8.5)."""
from __future__ import annotations

from torch import nn

from .layers import Classifier, Init, Norm, flat_features, init_weights, norm_layer
from .registry import register_model


def lenet_net(
    num_classes: int,
    in_channels: int,
    image_size,
    norm: Norm,
    padding: int,
    init: Init,
) -> Classifier:
    """conv(6, 5x5) -> [norm] -> sigmoid -> avgpool, conv(16, 5x5) -> [norm] -> sigmoid ->
    avgpool, then dense 120 -> 84 -> classes, each hidden dense layer [norm] -> sigmoid."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding), *norm_layer(norm, 6, 4),
        nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), *norm_layer(norm, 16, 4),
        nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
    )
    head = nn.Sequential(
        nn.Linear(flat_features(features, in_channels, image_size), 120), *norm_layer(norm, 120, 2), nn.Sigmoid(),
        nn.Linear(120, 84), *norm_layer(norm, 84, 2), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )
    return init_weights(Classifier(features, head), init)


@register_model("lenet", resolution=28)
def lenet(num_classes=10, in_channels=1, image_size=28, norm: Norm = "none", padding: int = 2, init: Init = "xavier"):
    """LeNet-5 with sigmoid activations and average pooling (61,706 parameters)."""
    return lenet_net(num_classes, in_channels, image_size, norm, padding, init)


@register_model("bn_lenet", resolution=28)
def bn_lenet(num_classes=10, in_channels=1, image_size=28, norm: Norm = "batch", padding: int = 0, init: Init = "xavier"):
    """LeNet with nn.BatchNorm after every conv and hidden dense layer (the book's concise BNLeNet)."""
    return lenet_net(num_classes, in_channels, image_size, norm, padding, init)


@register_model("bn_lenet_scratch", resolution=28)
def bn_lenet_scratch(num_classes=10, in_channels=1, image_size=28, norm: Norm = "scratch", padding: int = 0, init: Init = "xavier"):
    """LeNet with the chapter's from-scratch BatchNorm (BNLeNetScratch)."""
    return lenet_net(num_classes, in_channels, image_size, norm, padding, init)
