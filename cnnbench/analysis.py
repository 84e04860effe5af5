"""Measurements that need no training: parameters, FLOPs, memory, throughput, input sizes.

Shapes, FLOPs and saved activations are computed on the meta device (no arithmetic, no
memory), so even VGG-11 at 224 px with a batch of 256 costs nothing on a laptop. Throughput
and the GPU's peak memory are measured for real on the run's device.
"""
from __future__ import annotations

import gc
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .config import model_knobs, resolution
from .data import DeviceLoader, Split, load
from .engine import Trainer, build_trainer, peak_memory_mb, resolve_device, synchronize
from .metrics import environment, plot_bench
from .models import create_model, min_input_size
from .models.design_space import summary_fields as drawn_fields
from .models.layers import ScratchBatchNorm
from .models.registry import accepts_input

log = logging.getLogger(__name__)
MB = 2**20

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


def describe(cfg: DictConfig, summary: dict[str, Any]) -> tuple[torch.device, tuple[int, int], dict[str, Any]]:
    """Resolve the device, input size and knobs, and record the model and environment."""
    device = resolve_device(cfg.trainer.device)
    size = resolution(cfg)
    knobs = model_knobs(cfg)
    summary |= {
        "resolution": list(size),
        "params": count_params(meta_model(cfg.model.name, size, **knobs)),
        "flops": count_flops(cfg.model.name, size, **knobs),
        **drawn_fields(cfg.model.name, size, **knobs),  # anynet_sample: the drawn architecture, ds_* columns
        **environment(device),
    }
    return device, size, knobs


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
    """Memory (MB, fp32) to train and to predict on a batch.

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
    device's peak memory. Batches come from the real device-resident loader."""
    model = trainer.model.train(train)
    batches = iter(loader)
    times = []
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(trainer.device)
    for i in range(warmup + steps):
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        synchronize(trainer.device)
        start = time.perf_counter()
        if train:
            with trainer.autocast():
                loss = trainer.loss_fn(model(trainer._input(x)), y)
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.scaler.scale(loss).backward()
            trainer.scaler.step(trainer.optimizer)
            trainer.scaler.update()
        else:
            with torch.no_grad(), trainer.autocast():
                model(trainer._input(x))
        synchronize(trainer.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    step = sorted(times)[len(times) // 2]
    return {"images_per_s": len(y) / step, "step_time_ms": step * 1e3, "peak_mem_mb": peak_memory_mb(trainer.device)}


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


# --- tasks: each fills the run's summary and writes its own table ------------------------


def summary_task(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> None:
    """task=summary: layers.csv, totals and their split by layer kind, memory at the batch size."""
    device, size, knobs = describe(cfg, summary)
    rows = layer_table(cfg.model.name, size, **knobs)
    write_csv(out_dir / "layers.csv", rows)
    summary |= split_by_kind(rows)
    summary |= memory_estimate(cfg.model.name, size, cfg.data.batch_size, cfg.optimizer, **knobs)
    summary["batch_size"] = cfg.data.batch_size
    if device.type == "cuda":  # the real thing, next to the estimate
        train_split, _ = load(cfg.data.root, cfg.data.download)
        measured = _bench_one(cfg, device, size, knobs, train_split, cfg.data.batch_size, warmup=1, steps=2)
        summary["train_peak_mb_measured"] = measured["train"]["peak_mem_mb"]
        summary["infer_peak_mb_measured"] = measured["infer"]["peak_mem_mb"]
    print(format_layers(rows, summary))


def bench_task(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> None:
    """task=bench: training and inference throughput and peak memory per batch size.
    A batch size that runs out of memory is recorded as such and the others go on.
    ``peak_mem_mb`` is measured (CUDA's peak allocation; on the CPU the process's peak
    resident memory, which only grows); ``estimated_mem_mb`` is ``memory_estimate``'s."""
    device, size, knobs = describe(cfg, summary)
    train_split, _ = load(cfg.data.root, cfg.data.download)
    rows = []
    for batch_size in cfg.bench.batch_sizes:
        try:
            results = _bench_one(cfg, device, size, knobs, train_split, batch_size, cfg.bench.warmup_steps, cfg.bench.steps)
            status = "completed"
        except torch.OutOfMemoryError:
            results, status = {}, "oom"
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        estimate = memory_estimate(cfg.model.name, size, batch_size, cfg.optimizer, **knobs)
        for mode in ("train", "infer"):
            r = results.get(mode, {"images_per_s": math.nan, "step_time_ms": math.nan, "peak_mem_mb": math.nan})
            rows.append({"batch_size": batch_size, "mode": mode, **r, "status": status,
                         "estimated_mem_mb": estimate[f"{mode}_memory_mb"]})
            log.info("batch %4d %-5s %s: %8.1f img/s  %8.2f ms/step  %8.1f MB", batch_size, mode, status,
                     r["images_per_s"], r["step_time_ms"], r["peak_mem_mb"])
    write_csv(out_dir / "bench.csv", rows)
    plot_bench(rows, out_dir / "bench.png", f"{cfg.model.name} at {size[0]}x{size[1]} px on {summary['device_name']}")
    best = max((r for r in rows if r["mode"] == "train" and r["status"] == "completed"), key=lambda r: r["images_per_s"], default=None)
    if best:
        summary |= {"best_train_images_per_s": best["images_per_s"], "best_train_batch_size": best["batch_size"]}


def _bench_one(cfg, device, size, knobs, train_split, batch_size, warmup, steps) -> dict[str, dict[str, float]]:
    """Training then inference steps of a fresh model at one batch size, on real batches."""
    idx = torch.arange(batch_size * (warmup + steps)) % len(train_split)  # wraps round a small split
    split = Split(train_split.images[idx], train_split.labels[idx]).to(device)
    loader = DeviceLoader(split, batch_size, size, shuffle=True, drop_last=True, seed=cfg.seed)
    trainer = build_trainer(cfg, device, size, knobs, len(loader))
    return {
        "train": measure_steps(trainer, loader, steps, warmup, train=True),
        "infer": measure_steps(trainer, loader, steps, warmup, train=False),
    }


def min_size_task(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> None:
    """task=min_size: the smallest square input, and the shape each stage gives it (stages.csv)."""
    knobs = model_knobs(cfg)
    sizes, rows = min_size_report(cfg.model.name, **knobs)
    summary |= sizes
    write_csv(out_dir / "stages.csv", rows)
    print(f"{cfg.model.name}: smallest input {sizes['min_size']}x{sizes['min_size']}; "
          f"every stage keeps more than 1x1 from {sizes['no_collapse_size']}x{sizes['no_collapse_size']}")
    width = max(len(r["stage"]) for r in rows)
    print(f"{'stage':{width}}  {'at ' + str(sizes['min_size']):>14}  {'at ' + str(sizes['no_collapse_size']):>14}")
    for r in rows:
        print(f"{r['stage']:{width}}  {r['shape_at_min_size']:>14}  {r['shape_at_no_collapse_size']:>14}")


TASKS = {"summary": summary_task, "bench": bench_task, "min_size": min_size_task}


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    os.replace(tmp, path)


def format_layers(rows: list[dict[str, Any]], s: dict[str, Any]) -> str:
    """The layer table and its totals, as printed by task=summary."""
    lines = [f"{'layer':28} {'type':18} {'output':>14} {'params':>12} {'MFLOPs':>10} {'act KB':>9}"]
    for r in rows:
        lines.append(f"{r['layer']:28} {r['type']:18} {r['output_shape']:>14} {r['params']:>12,} "
                     f"{r['flops'] / 1e6:>10.2f} {r['activation_kb']:>9.1f}")
    total_p, total_f = s["params"], s["flops"]
    for kind in (*KINDS, "other"):
        p, f = s[f"params_{kind}"], s[f"flops_{kind}"]
        if p or f:
            lines.append(f"{kind:>8}: {p:>12,} params ({p / total_p:6.1%})  {f / 1e6:10.1f} MFLOPs ({f / max(total_f, 1):6.1%})")
    lines.append(f"   total: {total_p:>12,} params           {total_f / 1e6:10.1f} MFLOPs per image")
    lines.append(
        f"memory at batch {s['batch_size']} (MB): training {s['train_memory_mb']:.1f} = params {s['params_mb']:.1f} "
        f"+ grads {s['grads_mb']:.1f} + optimizer {s['optimizer_state_mb']:.1f} + activations {s['activations_mb']:.1f}; "
        f"prediction {s['infer_memory_mb']:.1f} = params {s['params_mb']:.1f} + activations {s['infer_activations_mb']:.1f}"
    )
    return "\n".join(lines)
