"""Measurements that need no training: parameters, FLOPs, memory, throughput, input sizes.

Shapes, FLOPs and saved activations are computed on the meta device (no arithmetic, no
memory), so even VGG-11 at 224 px with a batch of 256 costs nothing on a laptop. Throughput
and the GPU's peak memory are measured for real on the run's device.
"""
from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .engine import Trainer, peak_memory_mb, reset_peak_memory, synchronize
from .models import create_model, min_input_size
from .models.layers import ScratchBatchNorm
from .models.registry import accepts_input

log = logging.getLogger(__name__)
MB = 2**20  # the *_mb fields are MiB, as torch and nvidia-smi count

# Leaf layer kinds for the parameter and FLOP split.
KINDS = {
    "conv": (nn.Conv2d,),
    "linear": (nn.Linear,),
    "norm": (nn.modules.batchnorm._BatchNorm, ScratchBatchNorm),
}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, size: tuple[int, int], in_channels: int = 1, **knobs: Any) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, in_channels=in_channels, image_size=size, **knobs)


def count_flops(name: str, size: tuple[int, int], in_channels: int = 1, **knobs: Any) -> int:
    """Forward FLOPs for one image (a multiply-add counts as two), by PyTorch's FLOP counter."""
    model = meta_model(name, size, in_channels, **knobs).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, in_channels, *size, device="meta"))
    return counter.get_total_flops()


_COUNTS: dict[tuple, tuple[int, int]] = {}  # a model is a pure function of its arguments: counted once per process


def meta_counts(name: str, size: tuple[int, int], in_channels: int = 1, **knobs: Any) -> tuple[int, int]:
    """Parameters and forward FLOPs per image (see ``count_flops``), counted once per process."""
    key = (name, tuple(size), in_channels, repr(sorted(knobs.items())))
    if key not in _COUNTS:
        _COUNTS[key] = count_params(meta_model(name, size, in_channels, **knobs)), count_flops(name, size, in_channels, **knobs)
    return _COUNTS[key]


def kind_of(module: nn.Module) -> str:
    return next((kind for kind, types in KINDS.items() if isinstance(module, types)), "other")


def layer_table(name: str, size: tuple[int, int], in_channels: int = 1, **knobs: Any) -> list[dict[str, Any]]:
    """One row per leaf layer in forward order: name, type, kind, output shape, parameters,
    forward FLOPs and output activation size, all per image."""
    model = meta_model(name, size, in_channels, **knobs).eval()
    rows: dict[str, dict[str, Any]] = {}

    def record(layer_name):
        def hook(module, _inputs, output):
            if layer_name not in rows:  # a layer called twice keeps its first call
                rows[layer_name] = {
                    "layer": layer_name,
                    "type": type(module).__name__,
                    "kind": kind_of(module),
                    "output_shape": "x".join(map(str, output.shape[1:])),
                    "params": sum(p.numel() for p in module.parameters()),
                    "activation_kb": output[0].numel() * output.element_size() / 1024,
                }
        return hook

    leaves = {n: m for n, m in model.named_modules() if n and not any(True for _ in m.children())}
    handles = [m.register_forward_hook(record(n)) for n, m in leaves.items()]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, in_channels, *size, device="meta"))
    for h in handles:
        h.remove()
    # The counter names modules by their path below the root class, e.g. "Classifier.features.0".
    flops = {key.split(".", 1)[1]: sum(v.values()) for key, v in counter.get_flop_counts().items() if "." in key}
    for row in rows.values():
        row["flops"] = flops.get(row["layer"], 0)
    return list(rows.values())


def split_by_kind(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Totals of parameters and FLOPs per layer kind: params_conv, flops_linear, ..."""
    out = {}
    for kind in (*KINDS, "other"):
        out[f"params_{kind}"] = sum(r["params"] for r in rows if r["kind"] == kind)
        out[f"flops_{kind}"] = sum(r["flops"] for r in rows if r["kind"] == kind)
    return out


def memory_estimate(name: str, size: tuple[int, int], batch_size: int, optimizer_cfg, in_channels: int = 1,
                    **knobs: Any) -> dict[str, float]:
    """Memory (MiB, fp32) to train and to predict on a batch.

    Training holds parameters, their gradients, the optimizer's state and the activations
    autograd saves for the backward pass (counted with saved-tensor hooks, each storage
    once, parameters excluded). Prediction holds the parameters and, at worst, one layer's
    input and output at once.
    """
    from hydra.utils import instantiate

    model = meta_model(name, size, in_channels, **knobs).train()
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        key = t.untyped_storage()._cdata
        if key not in params:
            saved[key] = t.untyped_storage().nbytes()
        return t

    x = torch.empty(batch_size, in_channels, *size, device="meta")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)

    peak_pair = 0  # the largest input + output of a leaf layer in prediction
    def hook(_module, inputs, output):
        nonlocal peak_pair
        peak_pair = max(peak_pair, sum(t.numel() * t.element_size() for t in (*inputs, output) if torch.is_tensor(t)))
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()

    # Optimizer state: one step with zero gradients creates it (momentum buffers, Adam moments).
    optimizer = instantiate(optimizer_cfg, params=model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    state_bytes = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                      if torch.is_tensor(t) and t.dim() > 0)

    out = {
        "params_mb": param_bytes / MB,
        "grads_mb": param_bytes / MB,
        "optimizer_state_mb": state_bytes / MB,
        "activations_mb": sum(saved.values()) / MB,
        "infer_activations_mb": peak_pair / MB,
    }
    out["train_memory_mb"] = out["params_mb"] + out["grads_mb"] + out["optimizer_state_mb"] + out["activations_mb"]
    out["infer_memory_mb"] = out["params_mb"] + out["infer_activations_mb"]
    return out


def measure_steps(trainer: Trainer, loader, steps: int, warmup: int, train: bool) -> dict[str, float]:
    """Median step time over ``steps`` steps after ``warmup`` steps, synchronised, with the
    device's peak memory over those steps. Training times ``Trainer.step``, the step ``task=train`` runs
    (clipping, per-step schedule and compilation included); prediction times ``Trainer.predict``.
    Batches come from the real device-resident loader."""
    trainer.model.train(train)
    batches = iter(loader)
    times = []
    for i in range(warmup + steps):
        if i == warmup:
            # the steady steps' peak: cuDNN's autotuning workspaces, compilation and graph capture
            # in the warm-up are not what a step needs (nor, on the CPU, an earlier batch size's)
            reset_peak_memory(trainer.device)
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        synchronize(trainer.device)
        start = time.perf_counter()
        if train:
            trainer.step(x, y)
        else:
            trainer.predict(x)
        synchronize(trainer.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {"images_per_s": len(y) / step, "step_time_ms": step * 1e3, "peak_mem_mb": peak_memory_mb(trainer.device, loader)}


def min_size_report(name: str, in_channels: int = 1, **knobs: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The smallest square input the model accepts, and the smallest at which no stage's
    feature map has collapsed to 1x1; with each stage's output shape at both sizes."""
    smallest = min_input_size(name, in_channels, **knobs)

    def stage_shapes(side: int) -> list[tuple[str, tuple[int, ...]]]:
        model = meta_model(name, (side, side), in_channels, **knobs).eval()
        shapes = []
        x = torch.empty(1, in_channels, side, side, device="meta")
        with torch.no_grad():
            for stage_name, stage in model.features.named_children():
                x = stage(x)
                shapes.append((f"features.{stage_name} ({type(stage).__name__})", tuple(x.shape[1:])))
        return shapes

    def no_collapse(side: int) -> bool:
        return all(len(s) < 3 or min(s[1:]) > 1 for _, s in stage_shapes(side))

    lo, hi = smallest, smallest
    while not no_collapse(hi):
        lo, hi = hi, hi * 2
    while lo < hi:  # smallest side with every stage above 1x1 (monotone in the side)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if no_collapse(mid) else (mid + 1, hi)
    assert accepts_input(name, smallest, in_channels, **knobs)
    rows = [
        {"stage": stage, "shape_at_min_size": "x".join(map(str, a)), "shape_at_no_collapse_size": "x".join(map(str, b))}
        for (stage, a), (_, b) in zip(stage_shapes(smallest), stage_shapes(hi))
    ]
    return {"min_size": smallest, "no_collapse_size": hi}, rows


