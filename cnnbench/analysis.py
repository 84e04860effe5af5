"""Measurements of a model that need no training: parameters and FLOPs."""
from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from .models import create_model


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(name: str, size: tuple[int, int], in_channels: int = 1, num_classes: int = 10, **knobs: Any) -> int:
    """Forward FLOPs for one image (a multiply-add counts as two), by PyTorch's FLOP
    counter, on the meta device: no arithmetic is done, so even VGG at 224 costs nothing."""
    h, w = size
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_channels=in_channels, image_size=(h, w), **knobs).eval()
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.empty(1, in_channels, h, w))
    return counter.get_total_flops()
