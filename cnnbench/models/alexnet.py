"""AlexNet (d2l 8.1) as the book adapts it to one-channel 224x224 Fashion-MNIST, and two
variants the exercises ask for: a lighter one that trains faster, and one for native 28x28."""
from __future__ import annotations

from torch import nn

from .layers import (
    Classifier,
    Dropout,
    Init,
    conv_plan,
    dense_head,
    flat_features,
    init_weights,
)
from .registry import ModelError, add_model

# Rows are [channels, kernel, stride, padding] convolutions (each followed by ReLU), "M" a max-pool.
ALEXNET = [[96, 11, 4, 1], "M", [256, 5, 1, 2], "M", [384, 3, 1, 1], [384, 3, 1, 1], [256, 3, 1, 1], "M"]
# Three convolutions of fewer channels and 1024-wide dense layers: about 1/6 of the parameters.
ALEXNET_LITE = [[64, 11, 4, 1], "M", [128, 5, 1, 2], "M", [256, 3, 1, 1], "M"]
# For 28x28 inputs: 3x3 convolutions at stride 1 and 2x2 pools (28 -> 14 -> 7 -> 3).
ALEXNET28 = [[64, 3, 1, 1], "M", [128, 3, 1, 1], "M", [256, 3, 1, 1], [256, 3, 1, 1], [128, 3, 1, 1], "M"]


def alexnet(
    num_classes=10,
    in_channels=1,
    image_size=224,
    arch: list = ALEXNET,
    pool: list = [3, 2],
    hidden: list = [4096, 4096],
    dropout: Dropout = 0.5,
    init: Init = "xavier",
):
    """Convolutions and max-pools from ``arch``, then dense layers of ``hidden`` units, each
    followed by ReLU and dropout (``dropout=0`` turns it off: the "make AlexNet overfit" exercise)."""
    if len(pool) != 2:
        raise ModelError(f"model.pool={pool!r}: give [kernel, stride] of the max-pools")
    layers, _ = conv_plan(
        arch, in_channels,
        lambda cin, cout, k, s, p: [nn.Conv2d(cin, cout, k, s, p), nn.ReLU()],
        lambda: nn.MaxPool2d(*pool),
    )
    features = nn.Sequential(*layers, nn.Flatten())
    head = dense_head(flat_features(features, in_channels, image_size), hidden, num_classes, dropout)
    return init_weights(Classifier(features, head), init)


add_model("alexnet", alexnet, 224, "AlexNet: five convolutions, three max-pools, two 4096-wide dense layers (d2l 8.1)")
add_model("alexnet_lite", alexnet, 224, "AlexNet with three thinner convolutions and 1024-wide dense layers: trains faster",
          arch=ALEXNET_LITE, hidden=[1024, 1024])
add_model("alexnet28", alexnet, 28, "AlexNet redesigned for native 28x28 inputs: 3x3 convolutions, 2x2 pools",
          arch=ALEXNET28, pool=[2, 2], hidden=[1024, 1024])
