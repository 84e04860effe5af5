"""LeNet-5 (d2l 7.6), LeNet with batch normalisation (d2l 8.5), and the exercises' variants:
ReLU and max-pooling, dropout, and batch norm in other places and of other kinds."""
from __future__ import annotations

from typing import Annotated

from torch import nn

from .layers import (
    Act,
    Classifier,
    Dropout,
    Init,
    Norm,
    NormAt,
    Pool,
    act_layer,
    biased,
    flat_features,
    init_weights,
    norm_layer,
    normalised,
    pool_layer,
)
from .registry import Range, add_model


def lenet(
    num_classes=10,
    in_channels=1,
    image_size=28,
    norm: Norm = "none",
    norm_at: NormAt = "all",
    norm_affine: bool = True,
    bias: bool = True,
    activation: Act = "sigmoid",
    pool: Pool = "avg",
    dropout: Dropout = 0.0,
    padding: Annotated[int, Range(0, 14)] = 2,
    init: Init = "xavier",
):
    """conv(6, 5x5) -> [norm] -> act -> pool, conv(16, 5x5) -> [norm] -> act -> pool, then dense
    120 -> 84 -> classes, each hidden dense layer [norm] -> act -> [dropout].

    ``norm_at`` says which layers get a norm (conv, dense, all, none); ``bias=False`` drops the
    bias of the layers a norm follows (the norm's shift makes it redundant); ``norm_affine=False``
    fixes the norm's scale and shift at 1 and 0."""

    def layer(kind, cin, cout, dims, **kw):
        with_norm = normalised(norm, norm_at, kind)
        make = nn.Conv2d if kind == "conv" else nn.Linear
        return [biased(make(cin, cout, **kw), bias or not with_norm),
                *(norm_layer(norm, cout, dims, norm_affine) if with_norm else []), act_layer(activation)]

    features = nn.Sequential(
        *layer("conv", in_channels, 6, 4, kernel_size=5, padding=padding), pool_layer(pool, 2, 2),
        *layer("conv", 6, 16, 4, kernel_size=5), pool_layer(pool, 2, 2),
        nn.Flatten(),
    )
    def drop():
        return [nn.Dropout(dropout)] if dropout else []

    head = nn.Sequential(
        *layer("dense", flat_features(features, in_channels, image_size), 120, 2), *drop(),
        *layer("dense", 120, 84, 2), *drop(),
        nn.Linear(84, num_classes),
    )
    return init_weights(Classifier(features, head), init)


add_model("lenet", lenet, 28, "LeNet-5: sigmoid, average pooling (d2l 7.6; 61,706 parameters)")
add_model("bn_lenet", lenet, 28, "LeNet with nn.BatchNorm after every conv and hidden dense layer (d2l 8.5)",
          norm="batch", padding=0)
add_model("bn_lenet_scratch", lenet, 28, "LeNet with the chapter's from-scratch batch norm (d2l 8.5)",
          norm="scratch", padding=0)
