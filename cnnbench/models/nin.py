"""Network in Network (d2l 8.3): conv blocks with two 1x1 convolutions, a global-average-pool head."""
from __future__ import annotations

from torch import nn

from .layers import Classifier, Init, init_weights
from .registry import register_model


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )


@register_model("nin", resolution=224)
def nin(num_classes=10, in_channels=1, dropout: float = 0.5, init: Init = "xavier"):
    """Three NiN blocks (96, 256, 384 channels) with max-pools, dropout, a last block with one
    channel per class, and global average pooling in place of dense layers."""
    features = nn.Sequential(
        nin_block(in_channels, 96, kernel_size=11, stride=4, padding=0),
        nn.MaxPool2d(3, stride=2),
        nin_block(96, 256, kernel_size=5, stride=1, padding=2),
        nn.MaxPool2d(3, stride=2),
        nin_block(256, 384, kernel_size=3, stride=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.Dropout(dropout),
        nin_block(384, num_classes, kernel_size=3, stride=1, padding=1),
    )
    head = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten())
    return init_weights(Classifier(features, head), init)
