"""Building blocks shared by several model families."""
from __future__ import annotations

import typing
from itertools import chain
from typing import Annotated, Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ModelError, Range

Init = Literal["xavier", "pytorch"]
# Knob types with their ranges (checked before a model is built; see registry.Range).
Dropout = Annotated[float, Range(0, 1, open_hi=True)]  # a probability of dropping a unit
Fraction = Annotated[float, Range(0, 1, open_lo=True)]  # a share of channels kept
Ratio = Annotated[float, Range(0, 64, open_lo=True)]  # a width multiplier
Channels = Annotated[int, Range(1, 65536)]
Kernel = Annotated[int, Range(1, 31)]
Stride = Annotated[int, Range(1, 8)]


def init_weights(model: nn.Module, scheme: Init) -> nn.Module:
    """Apply the chapter's weight initialisation.

    ``xavier`` is the book's ``init_cnn``: Xavier-uniform weights for every Conv2d and
    Linear, biases left at PyTorch's default. ``pytorch`` keeps PyTorch's own
    initialisation; the book's DenseNet and RegNet runs end up with it, because they call
    ``init_cnn`` before their lazy layers exist, so it touches nothing.
    """
    if scheme == "xavier":
        for m in model.modules():
            if type(m) in (nn.Conv2d, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
    elif scheme != "pytorch":
        raise ValueError(f"init={scheme!r}: choose xavier or pytorch")
    return model


def biased(layer: nn.Module, bias: bool) -> nn.Module:
    """``layer`` (built with its bias) without it when ``bias`` is false. PyTorch draws a layer's
    weights and then its bias, so dropping the bias afterwards leaves every draw of the seed's
    stream where it was: a network with and without biases starts from the same weights, and the
    bias knob's comparison (ex_bn_bias) sees the bias's effect, not another random start."""
    if not bias:
        layer.register_parameter("bias", None)
    return layer


def pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def output_shape(module: nn.Module, in_shape: tuple[int, ...]) -> torch.Size:
    """Shape of ``module``'s output for an input of ``in_shape``, computed on the meta
    device, so it costs no arithmetic and leaves the module's buffers untouched."""
    state = {k: torch.empty_like(v, device="meta") for k, v in chain(module.named_parameters(), module.named_buffers())}
    with torch.no_grad():
        x = torch.empty(in_shape, device="meta")
        return torch.func.functional_call(module, state, (x,)).shape


def flat_features(features: nn.Module, in_channels: int, image_size: int | tuple[int, int]) -> int:
    """Number of features a flatten head sees after ``features`` (the book's LazyLinear)."""
    h, w = pair(image_size)
    shape = output_shape(features, (2, in_channels, h, w))
    if min(shape) < 1:
        raise ValueError(f"input {h}x{w} leaves an empty feature map {tuple(shape[1:])}")
    return int(torch.Size(shape[1:]).numel())


class ScratchBatchNorm(nn.Module):
    """The chapter's from-scratch batch normalisation (d2l section 8.5), and its "lite" cousins.

    Normalises over the batch (and the spatial positions for conv features) in training,
    with the biased variance, and keeps moving averages for prediction. ``center=False``
    keeps the mean (divides by the standard deviation only: ``variance_only``),
    ``scale=False`` keeps the variance (subtracts the mean only: ``mean_only``), and
    ``affine=False`` fixes gamma=1, beta=0 instead of learning them.

    Two fixes the book lacks, neither changing the parameter count: the moving statistics
    are buffers (so ``.to()``, ``state_dict`` and checkpoints carry them), and the mode
    follows ``self.training`` instead of ``torch.is_grad_enabled()``.
    """

    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5, momentum: float = 0.1,
                 center: bool = True, scale: bool = True, affine: bool = True):
        super().__init__()
        shape = (1, num_features) if num_dims == 2 else (1, num_features, 1, 1)
        self.eps, self.momentum, self.center, self.scale = eps, momentum, center, scale
        self.gamma = nn.Parameter(torch.ones(shape)) if affine else None
        self.beta = nn.Parameter(torch.zeros(shape)) if affine else None
        self.register_buffer("moving_mean", torch.zeros(shape))
        self.register_buffer("moving_var", torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics and the moving averages in fp32 whatever the input's precision (under
        # autocast a conv's output is bf16/fp16, the buffers stay fp32); the output keeps the
        # input's dtype, as nn.BatchNorm does under autocast.
        dtype, x = x.dtype, x.float()
        if self.training:
            dims = (0,) if x.dim() == 2 else (0, 2, 3)
            mean = x.mean(dim=dims, keepdim=True)
            var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
            with torch.no_grad():
                self.moving_mean.lerp_(mean.to(self.moving_mean.dtype), self.momentum)
                self.moving_var.lerp_(var.to(self.moving_var.dtype), self.momentum)
        else:
            mean, var = self.moving_mean.float(), self.moving_var.float()
        if self.center:
            x = x - mean
        if self.scale:
            x = x / torch.sqrt(var + self.eps)
        if self.gamma is not None:
            x = self.gamma.float() * x + self.beta.float()
        return x.to(dtype)


# batch: nn.BatchNorm; scratch: the chapter's own layer; mean_only / variance_only: the
# chapter's layer removing only the mean or only the variance (the "lite" exercise).
Norm = Literal["none", "batch", "scratch", "mean_only", "variance_only"]
# Where a network with conv and dense layers puts its norm layers.
NormAt = Literal["none", "conv", "dense", "all"]


def norm_layer(kind: Norm, num_features: int, num_dims: int, affine: bool = True) -> list[nn.Module]:
    """The normalisation layer(s) to insert after a conv (num_dims=4) or dense (2) layer."""
    if kind == "none":
        return []
    if kind == "batch":
        return [(nn.BatchNorm2d if num_dims == 4 else nn.BatchNorm1d)(num_features, affine=affine)]
    lite = {"scratch": {}, "mean_only": {"scale": False}, "variance_only": {"center": False}}
    if kind not in lite:
        raise ValueError(f"norm={kind!r}: choose one of {', '.join(typing.get_args(Norm))}")
    return [ScratchBatchNorm(num_features, num_dims, affine=affine, **lite[kind])]


def normalised(norm: Norm, norm_at: NormAt, where: Literal["conv", "dense"]) -> bool:
    """Whether a ``where`` layer is followed by a norm layer."""
    return norm != "none" and norm_at in (where, "all")


Act = Literal["relu", "sigmoid"]
Pool = Literal["max", "avg"]


def act_layer(kind: Act) -> nn.Module:
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid}[kind]()


def pool_layer(kind: Pool, kernel_size: int, stride: int) -> nn.Module:
    return {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[kind](kernel_size, stride)


def conv_plan(plan: list, in_channels: int, block: Callable[[int, int, int, int, int], list[nn.Module]],
              pool: Callable[[], nn.Module]) -> tuple[list[nn.Module], int]:
    """Layers from an architecture table whose rows are ``[channels, kernel, stride, padding]``
    (one ``block``) or ``"M"`` (``pool``), as AlexNet and NiN are written; returns the layers
    and the channels they end with."""
    layers: list[nn.Module] = []
    for row in plan:
        if row == "M":
            layers.append(pool())
        else:
            out, kernel, stride, padding = row
            layers += block(in_channels, out, kernel, stride, padding)
            in_channels = out
    return layers, in_channels


def dense_head(in_features: int, hidden: list[int] | tuple[int, ...], num_classes: int, dropout: float) -> nn.Sequential:
    """AlexNet/VGG classifier: (Linear, ReLU, Dropout) per hidden layer, then the output layer."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), nn.ReLU(), nn.Dropout(dropout)]
        in_features = width
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """``features`` then ``head``: the shape every model in the zoo shares."""

    def __init__(self, features: nn.Module, head: nn.Module):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# --- residual blocks, shared by ResNet/ResNeXt and AnyNet/RegNet; stems and heads --------

BlockKind = Literal["basic", "bottleneck"]


class ResidualBlock(nn.Module):
    """A residual block: a branch of convolutions plus the input.

    ``basic`` (the book's ``Residual``): 3x3 -> 3x3. ``bottleneck`` (the book's
    ``ResNeXtBlock``): 1x1 -> 3x3 -> 1x1. The inner width is ``round(out * bottleneck_ratio)``,
    the 3x3 convolutions have ``groups`` groups, and the first 3x3 carries the stride. The input
    goes through a 1x1 projection (with a norm when ``shortcut_norm``) when the shape changes.
    ``norm`` is the norm layer after (or, pre-activation, before) each convolution: batch norm,
    or any kind ``norm_layer`` builds.

    Post-activation (``preact=False``, the original): conv-BN-ReLU per layer, the last ReLU
    after the sum. Pre-activation: BN-ReLU-conv per layer, nothing after the sum, and the
    projection sees the pre-activated input.
    """

    def __init__(self, in_channels: int, out_channels: int, kind: BlockKind = "basic", stride: int = 1,
                 groups: int = 1, bottleneck_ratio: float = 1.0, preact: bool = False, bias: bool = True,
                 shortcut_norm: bool = False, norm: Norm = "batch"):
        super().__init__()
        mid = int(round(out_channels * bottleneck_ratio))
        if mid < 1:
            raise ModelError(f"model.bottleneck_ratio={bottleneck_ratio} leaves the block's inner width at 0 (= "
                             f"{out_channels} x {bottleneck_ratio}, rounded); it must be above {0.5 / out_channels:.3g}")
        if mid % groups:
            raise ModelError(f"model.groups={groups}: the block's inner width {mid} "
                             f"(= {out_channels} x bottleneck_ratio {bottleneck_ratio}) must be a multiple of it")
        # (kernel, out channels, stride, groups) per convolution
        convs = [(3, mid, stride, groups), (3, out_channels, 1, groups)] if kind == "basic" else \
            [(1, mid, 1, 1), (3, mid, stride, groups), (1, out_channels, 1, 1)]
        self.pre = nn.Sequential(*norm_layer(norm, in_channels, 4), nn.ReLU()) if preact else None
        layers, channels = [], in_channels
        for i, (k, cout, s, g) in enumerate(convs):
            if preact and i > 0:
                layers += [*norm_layer(norm, channels, 4), nn.ReLU()]
            layers.append(biased(nn.Conv2d(channels, cout, k, stride=s, padding=k // 2, groups=g), bias))
            if not preact:
                layers += [*norm_layer(norm, cout, 4)] + ([nn.ReLU()] if i < len(convs) - 1 else [])
            channels = cout
        self.branch = nn.Sequential(*layers)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                biased(nn.Conv2d(in_channels, out_channels, 1, stride=stride), bias),
                *(norm_layer(norm, out_channels, 4) if shortcut_norm else []),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = self.pre(x)
            return self.branch(x) + (x if self.shortcut is None else self.shortcut(x))
        y = self.branch(x) + (x if self.shortcut is None else self.shortcut(x))
        return F.relu(y)


def resnet_stem(in_channels: int, channels: int = 64, bias: bool = True, norm: Norm = "batch") -> list[nn.Module]:
    """7x7/2 conv, norm, ReLU, 3x3/2 max-pool: the stem of ResNet and DenseNet."""
    return [
        biased(nn.Conv2d(in_channels, channels, kernel_size=7, stride=2, padding=3), bias), *norm_layer(norm, channels, 4),
        nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
    ]


def pooled_head(channels: int, num_classes: int) -> nn.Sequential:
    """Global average pooling and one dense layer: the head of every network after NiN."""
    return nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, num_classes))


# [3x3 convolutions, output channels] per stage: configurations A, B, D and E of the VGG paper
# (Simonyan & Zisserman 2015, Table 1), laid out by VGG and by the VGG-style NiN family.
VGG_STAGES = {
    "vgg11": [[1, 64], [1, 128], [2, 256], [2, 512], [2, 512]],
    "vgg13": [[2, 64], [2, 128], [2, 256], [2, 512], [2, 512]],
    "vgg16": [[2, 64], [2, 128], [3, 256], [3, 512], [3, 512]],
    "vgg19": [[2, 64], [2, 128], [4, 256], [4, 512], [4, 512]],
}



