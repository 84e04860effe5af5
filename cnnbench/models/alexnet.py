"""AlexNet (d2l 8.1), adapted by the book to one-channel 224x224 Fashion-MNIST."""
from __future__ import annotations

from torch import nn

from .layers import Classifier, Init, dense_head, flat_features, init_weights
from .registry import register_model


@register_model("alexnet", resolution=224)
def alexnet(num_classes=10, in_channels=1, image_size=224, dropout: float = 0.5, init: Init = "xavier"):
    """Five convolutions (11x11/4, 5x5, three 3x3) with three max-pools, two 4096-wide dense layers."""
    features = nn.Sequential(
        nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
    )
    head = dense_head(flat_features(features, in_channels, image_size), [4096, 4096], num_classes, dropout)
    return init_weights(Classifier(features, head), init)
