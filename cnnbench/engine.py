"""The training engine: one loop for every model.

Loss and accuracy are summed on the device and read once per epoch (``.item()`` is a
host sync), so the GPU is never stalled by logging. Timing synchronises the device
before reading the clock and keeps evaluation out of the training time.
"""
from __future__ import annotations

import logging
import math
import resource
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm

from .data import DeviceLoader
from .models import create_model

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``trainer.precision`` (None: plain fp32)."""
    precision = getattr(precision, "value", precision)
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory since the last reset (CUDA), else the process's peak resident memory."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class Trainer:
    """Everything one epoch needs besides the data: built once per run by ``train.run``."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    step_scheduler_per_batch: bool = False
    label_smoothing: float = 0.0
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    grad_clip: float = 0.0
    progress: bool = True

    def __post_init__(self):
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_one_epoch(self, loader: DeviceLoader, desc: str = "") -> dict[str, float]:
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        bar = tqdm(total=len(loader), desc=desc, leave=False, dynamic_ncols=True,
                   disable=not (self.progress and sys.stderr.isatty()))
        synchronize(self.device)
        start = time.perf_counter()
        for x, y in loader:
            with self.autocast():
                logits = self.model(self._input(x))
                loss = self.loss_fn(logits, y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scheduler is not None and self.step_scheduler_per_batch:
                self.scheduler.step()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.argmax(dim=1) == y).sum()
            seen += len(y)
            bar.update()
        synchronize(self.device)
        elapsed = time.perf_counter() - start
        bar.close()
        if self.scheduler is not None and not self.step_scheduler_per_batch:
            self.scheduler.step()
        return {
            "train_loss": loss_sum.item() / seen,  # the epoch's one host sync
            "train_acc": correct.item() / seen,
            "epoch_time_s": elapsed,
            "train_images_per_s": seen / elapsed,
        }

    @torch.no_grad()
    def evaluate(self, loader: DeviceLoader) -> dict[str, float]:
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for x, y in loader:
            with self.autocast():
                logits = self.model(self._input(x))
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
            seen += len(y)
        return {"test_loss": loss_sum.item() / seen, "test_acc": correct.item() / seen}


def fit(
    trainer: Trainer,
    train_loader: DeviceLoader,
    test_loader: DeviceLoader,
    max_epochs: int,
    on_epoch: Callable[[dict[str, float]], None],
) -> None:
    """Train for ``max_epochs``, evaluating after each; ``on_epoch`` gets each metrics row."""
    for epoch in range(1, max_epochs + 1):
        lr = trainer.optimizer.param_groups[0]["lr"]
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        row = {"epoch": epoch, "lr": lr}
        row |= trainer.train_one_epoch(train_loader, desc=f"epoch {epoch}/{max_epochs}")
        diverged = not math.isfinite(row["train_loss"])
        # A diverged model is not evaluated: its row records the loss that stopped the run.
        row |= {"test_loss": math.nan, "test_acc": math.nan} if diverged else trainer.evaluate(test_loader)
        row["peak_mem_mb"] = peak_memory_mb(trainer.device)
        on_epoch(row)
        if diverged:
            raise Diverged(f"the training loss became {row['train_loss']} in epoch {epoch}")


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
    """The learning-rate schedule for ``scheduler.name``; returns (scheduler, steps per batch?)."""
    name = getattr(cfg.name, "value", cfg.name)
    total = epochs * steps_per_epoch
    if name == "none":
        return None, False
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma), False
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg.min_lr), True
    if name == "onecycle":
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=cfg.pct_start), True
    raise ValueError(f"scheduler.name={name!r}: choose none, step, cosine or onecycle")


def build_trainer(cfg: DictConfig, device: torch.device, size, knobs, steps_per_epoch: int) -> Trainer:
    """The model (seeded), optimizer and schedule on ``device``, ready to train."""
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, image_size=size, **knobs).to(device)
    if cfg.trainer.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer, params=model.parameters())
    scheduler, per_batch = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.max_epochs, steps_per_epoch)
    return Trainer(
        model=torch.compile(model) if cfg.trainer.compile else model,
        optimizer=optimizer,
        device=device,
        scheduler=scheduler,
        step_scheduler_per_batch=per_batch,
        label_smoothing=cfg.trainer.label_smoothing,
        amp_dtype=autocast_dtype(cfg.trainer.precision, device),
        channels_last=cfg.trainer.channels_last,
        grad_clip=cfg.trainer.grad_clip,
        progress=cfg.trainer.progress,
    )
