"""The training engine: one loop for every model.

Loss and accuracy are summed on the device and read once per epoch (``.item()`` is a
host sync), so the GPU is never stalled by logging. Timing synchronises the device
before reading the clock and keeps evaluation out of the training time.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import resource
import signal
import sys
import threading
import time
import zipfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from . import distributed
from .config import ConfigError, ResumeMismatch, enum_value, first_line
from .data import DeviceLoader, held_on
from .metrics import atomic_write
from .models import create_model

# Deterministic cuBLAS needs a fixed workspace configuration, which cuBLAS reads once, when it first
# starts in a process: set afterwards (by a sweep's first deterministic job after others), it
# changes nothing. So it is set here, before any run. ":4096:8" is the size PyTorch chooses on
# Hopper GPUs anyway; elsewhere it costs about 24 MB of GPU memory, and no speed.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

log = logging.getLogger(__name__)


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGUSR2 stopped training after a finished step; a checkpoint was written."""

    def __init__(self, signum: int, where: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")
        self.signum = signum


# SIGUSR2 is what SLURM (through submitit) sends a job that is about to time out or be preempted.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)
# Under torchrun the ranks agree on a stop every this many steps (and at each epoch's end): a read
# of one number from the device, where one process reads a Python flag after every step.
STOP_CHECK_STEPS = 20


@contextmanager
def stop_at_once(where: Callable[[], str]):
    """Outside training (loading data, building, measuring, writing), a stop signal interrupts
    at once: raises Interrupted(signum, where()), ``where`` saying where the run stood. Training
    swaps in ``StopFlag``'s handlers, which finish the current step first. Main thread only; the
    previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, _frame):
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):
            # A stop is being recorded (checkpoint, metrics, summary.json): a second signal, such as
            # torchrun's to every rank once one has stopped, must not cut that short or replace it.
            log.warning("%s received while the run records its stop: finishing that first", signal.Signals(signum).name)
            return
        raise Interrupted(signum, where())

    previous = {sig: signal.signal(sig, handle) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class StopFlag:
    """Set by SIGINT/SIGTERM/SIGUSR2; the training loop checks it after each step (a Python
    attribute read, no device sync). A second Ctrl-C abandons the step at once."""

    def __init__(self):
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, _frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        again = " (Ctrl-C again to abandon it)" if signum == signal.SIGINT else ""  # a scheduler's SIGTERM: no one at the keys
        log.warning("%s received: stopping after this step%s", signal.Signals(signum).name, again)

    @contextmanager
    def installed(self):
        """Catch the stop signals while the block runs (main thread only); the handlers in place
        before come back afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def resolve_device(name: str) -> torch.device:
    """``trainer.device``; under torchrun, ``auto`` and ``cuda`` mean this rank's own GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    world = distributed.from_env()
    if name == "cuda" and world.distributed:
        return torch.device("cuda", world.local_rank)
    return torch.device(name)


AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # trainer.precision's settings


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``trainer.precision`` (None: plain fp32). ``auto``: bf16 on a CUDA
    GPU that computes in it (Ampere and later), fp16 (with loss scaling) on older ones, where
    bf16 is emulated and slow; fp32 on the CPU."""
    precision = enum_value(precision)
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16  # this run's GPU
    return AUTOCAST_DTYPES[precision]


def on_cuda(setting: bool | None, device: torch.device) -> bool:
    """A trainer switch whose ``null`` (the default) means: on for CUDA, off on the CPU."""
    return device.type == "cuda" if setting is None else bool(setting)


def compute_settings(cfg: DictConfig, device: torch.device) -> dict:
    """How a run computes on ``device``, its defaults resolved: what build_trainer builds, what
    summary.json records and the first log line says."""
    dtype = autocast_dtype(cfg.trainer.precision, device)
    return {"precision": next(name for name, d in AUTOCAST_DTYPES.items() if d == dtype),
            "channels_last": on_cuda(cfg.trainer.channels_last, device),
            "compiled": on_cuda(cfg.trainer.compile, device),
            "deterministic": bool(cfg.trainer.deterministic)}


def settings_text(settings: dict) -> str:
    """``compute_settings`` in a few words: "fp32", "bf16, channels_last, compiled"."""
    return ", ".join([settings["precision"], *(name for name in ("channels_last", "compiled", "deterministic") if settings[name])])


_default_threads: list[int] = []  # the process's thread count before the first run set it (torch's: a core each)


def set_backends(deterministic: bool, matmul_precision: str = "high", threads: int | None = None) -> None:
    """Set every global switch a run depends on, at the start of every run, so nothing leaks from
    one job of a sweep into the next: cuDNN autotuning (on, unless deterministic), deterministic
    algorithms, the fp32 matmul precision (``high`` lets fp32 matmuls and convolutions use TF32
    on tensor-core GPUs; ``highest`` keeps full fp32) and the CPU threads (None: torch's default)."""
    if not _default_threads:
        _default_threads.append(torch.get_num_threads())
    torch.set_num_threads(threads or _default_threads[0])
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.set_float32_matmul_precision(matmul_precision)
    torch.backends.cudnn.allow_tf32 = matmul_precision != "highest"


_busy_told: list[bool] = []  # the busy-machine hint, once per process


def tell_if_busy(threads: int | None, device: str) -> None:
    """Once per process, before a CPU run with torch's default threads (one per core): when other
    work keeps the cores busy, say that one thread can be several times faster. torch's threads
    spin-wait for each other, so one that lost its core holds up the rest (docs/speed.md, "CPU
    threads"). Busy: a 1-minute load average of 1 or more, and other threads runnable now (the
    load average alone still counts a run that has just ended)."""
    if threads is not None or _busy_told or resolve_device(device).type != "cpu":
        return
    _busy_told.append(True)
    cores = _default_threads[0] if _default_threads else torch.get_num_threads()
    load, others = _load()
    if cores > 1 and load >= 1.0 and others >= 1:
        log.warning("other work keeps this machine busy (load average %.1f over the last minute, %d other thread%s "
                    "runnable, %d cores): torch's thread per core waits on it, and trainer.threads=1 can train several "
                    "times faster (docs/speed.md, \"CPU threads\")", load, others, "" if others == 1 else "s", cores)


def _load(samples: int = 3) -> tuple[float, int]:
    """The 1-minute load average, and the threads other than this one runnable now (the median
    of a few looks, 10 ms apart, from Linux's /proc/loadavg); (0, 0) where it cannot be read."""
    runnable = []
    try:
        for i in range(samples):
            fields = Path("/proc/loadavg").read_text().split()
            runnable.append(int(fields[3].split("/")[0]) - 1)  # "R/T": R counts this thread
            if i < samples - 1:
                time.sleep(0.01)
    except (OSError, ValueError, IndexError):
        return 0.0, 0
    return float(fields[0]), sorted(runnable)[len(runnable) // 2]


# The user's choice, read before anything imports torch._dynamo (which sets the variable to
# inductor's default, /tmp/torchinductor_$USER, the first time it looks).
_USER_INDUCTOR_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


def compile_cache() -> None:
    """Keep torch.compile's artefacts (inductor's FX graph and autograd caches, Triton kernels)
    under cnnbench's cache dir, on disk: a model compiles once per machine, and later runs of it
    start in seconds. ``TORCHINDUCTOR_CACHE_DIR`` set by the user wins."""
    from .data import cache_dir

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _USER_INDUCTOR_DIR or str(cache_dir() / "inductor")
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for ``peak_memory_mb``: CUDA's allocator statistics; on the CPU the
    process's resident high-water mark (Linux's /proc/self/clear_refs), which otherwise only grows:
    a sweep's later jobs reported the largest earlier job's peak. Elsewhere the CPU's peak stays the
    process's."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # 5: reset the peak resident set size to the current one
    except OSError:
        pass


def peak_memory_mb(device: torch.device, *loaders: DeviceLoader) -> float:
    """Peak device memory since ``reset_peak_memory`` (CUDA), less the images and labels the
    ``loaders`` keep on the GPU (up to 3.5 GB at 224 px: the dataset, not what the model needs);
    else the process's peak resident memory since then (the interpreter, torch and the dataset
    included)."""
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated(device) - held_on(device, *loaders)) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class Trainer:
    """Everything one epoch needs besides the data: built once per run by ``build_trainer``.

    ``step`` is the one training step (forward, loss, backward, clipping, optimizer and
    per-step schedule): training, ``task=bench`` and the benchmarks all call it. With
    ``compile``, the forward pass and its loss and metrics are compiled by torch.compile, and the
    backward pass with them (AOTAutograd); on CUDA in ``reduce-overhead`` mode, which replays
    both as CUDA graphs, so a small model's step costs GPU time, not Python's kernel launches.
    The optimizer step stays eager (a fused kernel on CUDA, see ``build_trainer``), so learning-
    rate schedules, gradient clipping and fp16 loss scaling work as without compilation. A batch
    of another size than the first (the last partial batch of an epoch) runs eagerly: it is
    trained on, and it triggers no recompilation.
    """

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
    world: distributed.World = distributed.World()  # the ranks whose sums an epoch's metrics add up
    compile: bool = False

    def __post_init__(self):
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=self.label_smoothing)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        # Seconds the first compiled steps took: compilation, and on CUDA the graph trees' warm-up
        # step and the CUDA graph capture in the second (replays start with the third).
        self.compile_s: float | None = None
        self._batch: int | None = None  # the batch size the compiled step is specialised to
        self._compiled = None
        # CUDA graphs on CUDA, but not under DistributedDataParallel: with CUDA graph trees it has
        # open upstream bugs (errors, pytorch#113809; batch norm's buffers skip the graphs, #139207).
        self._graphs = self.compile and self.device.type == "cuda" and not self.world.distributed
        self._compiled_calls = 0
        self._starting_calls = 2 if self._graphs else 1
        if self.compile:
            compile_cache()
            torch._dynamo.reset()  # a fresh start for each run: an earlier job's compilations neither count nor linger
            self._compiled = torch.compile(self._forward, mode="reduce-overhead" if self._graphs else None, dynamic=False)

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of a batch and its number of correct predictions."""
        with self.autocast():
            logits = self.model(self._input(x))
            loss = self.loss_fn(logits, y)
        return loss, (logits.argmax(dim=1) == y).sum()

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train on one batch; returns its loss and correct count as device tensors (no host sync)."""
        forward = self._forward
        if self._compiled is not None:
            self._batch = self._batch or len(y)  # an epoch sets it from its loader first (a resume may start on a partial batch)
            if len(y) == self._batch:
                forward = self._compiled
                if self._graphs:
                    torch.compiler.cudagraph_mark_step_begin()  # a new iteration: graph outputs may be reused
        starting = forward is self._compiled and self._compiled_calls < self._starting_calls
        if starting:
            synchronize(self.device)
            started = time.perf_counter()
        loss, correct = forward(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None and self.step_scheduler_per_batch:
            self.scheduler.step()
        if starting:
            synchronize(self.device)
            self.compile_s = (self.compile_s or 0.0) + time.perf_counter() - started
            self._compiled_calls += 1
        return loss.detach(), correct

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch in prediction mode (the caller sets ``model.eval()``)."""
        with self.autocast():
            return self.model(self._input(x))

    def train_one_epoch(self, loader: DeviceLoader, desc: str = "", partial: dict | None = None,
                        stop: StopFlag | None = None) -> dict[str, float]:
        """One pass over ``loader``. ``partial`` continues an epoch that a checkpoint cut short;
        when ``stop`` is set after a step, raises EpochCut with the sums so far."""
        self.model.train()
        if self._compiled is not None and not self._batch:  # (a list of batches, as benchmarks pass, has none)
            self._batch = getattr(loader, "step_batch", None)
        partial = partial or {}
        done, before = partial.get("batches_done", 0), partial.get("elapsed", 0.0)
        # A cut epoch's sums are global (summed over the ranks): rank 0 carries them on.
        carried = partial if self.world.main else {}
        loss_sum = torch.tensor(carried.get("loss_sum", 0.0), device=self.device)
        correct = torch.tensor(carried.get("correct", 0), device=self.device)
        seen = carried.get("seen", 0)
        bar = tqdm(total=len(loader), initial=done, desc=desc, leave=False, dynamic_ncols=True,
                   disable=not (self.progress and sys.stderr.isatty()))
        synchronize(self.device)
        start = time.perf_counter()
        for x, y in loader:
            loss, right = self.step(x, y)
            loss_sum += loss.float() * len(y)
            correct += right
            seen += len(y)
            done += 1
            bar.update()
            if stop is not None and done < len(loader) and self.stopping(stop, done):
                bar.close()
                loss_total, correct_total, seen_total = self._totals(loss_sum, correct, seen)
                raise EpochCut({"loss_sum": loss_total, "correct": int(correct_total), "seen": int(seen_total),
                                "batches_done": done, "elapsed": before + time.perf_counter() - start})
        loss_total, correct_total, seen_total = self._totals(loss_sum, correct, seen)  # the epoch's one host sync
        synchronize(self.device)
        elapsed = before + time.perf_counter() - start
        bar.close()
        if self.scheduler is not None and not self.step_scheduler_per_batch:
            self.scheduler.step()
        return {
            "train_loss": loss_total / seen_total,
            "train_acc": correct_total / seen_total,
            "epoch_time_s": elapsed,
            "train_images_per_s": seen_total / elapsed,
        }

    def stopping(self, stop: StopFlag, done: int | None = None) -> bool:
        """Whether to stop now, after ``done`` steps of an epoch (None: at its end). Under torchrun
        every rank must stop after the same step: a rank stopping alone would meet the others'
        gradient all-reduce with a collective of its own, and all would hang. So they agree every
        STOP_CHECK_STEPS steps, a signal on any rank stopping all (``stop.signum`` becomes it)."""
        if not self.world.distributed:
            return bool(stop)
        if done is not None and done % STOP_CHECK_STEPS:
            return False
        stop.signum = self.world.agreed_signal(stop.signum, self.device)
        return bool(stop)

    def _totals(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, float, float]:
        """Loss sum, correct count and images seen, summed over the ranks and read once."""
        sums = torch.stack([loss_sum.double(), correct.double(), torch.tensor(float(seen), device=self.device).double()])
        return tuple(self.world.sum(sums).tolist())

    def evaluate(self, loader: DeviceLoader, tally=None) -> dict[str, float]:
        """Loss and accuracy on ``loader`` (its own batch size), in the training precision; each
        batch's logits also go to ``tally.add(logits, labels)`` when given (confusion.Tally)."""
        self.model.eval()
        synchronize(self.device)
        start = time.perf_counter()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen = 0
        for x, y in loader:
            logits = self.predict(x)
            loss_sum += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
            correct += (logits.argmax(dim=1) == y).sum()
            seen += len(y)
            if tally is not None:
                tally.add(logits, y)
        loss_total, correct_total, seen_total = self._totals(loss_sum, correct, seen)
        return {"test_loss": loss_total / seen_total, "test_acc": correct_total / seen_total,
                "eval_time_s": time.perf_counter() - start}


class EpochCut(Exception):
    """Raised inside an epoch stopped after a finished step; carries the epoch's sums so far."""

    def __init__(self, partial: dict):
        super().__init__("epoch cut short")
        self.partial = partial


def fit(
    trainer: Trainer,
    train_loader: DeviceLoader,
    test_loader: DeviceLoader,
    max_epochs: int,
    on_epoch: Callable[[dict[str, float]], None],
    checkpoint: Callable[[int, dict | None], None] | None = None,
    start_epoch: int = 1,
    partial: dict | None = None,
    stop: StopFlag | None = None,
    diverge_loss: float = 0.0,
    last_tally=None,
) -> None:
    """Train epochs ``start_epoch..max_epochs``, evaluating after each; ``on_epoch`` gets each
    metrics row, then ``checkpoint(epochs_done, None)`` runs (if given). When ``stop`` is set,
    the epoch stops after its current step, ``checkpoint(epochs_done, partial_epoch)`` saves
    where it stood, and Interrupted is raised. ``partial`` resumes such a cut epoch. An epoch
    whose mean training loss is not finite, or above ``diverge_loss`` (when positive), raises
    Diverged (a cross-entropy starts near ln(classes), 2.3 for ten). The last epoch's evaluation
    also fills ``last_tally`` (the per-class counts of the final model: no pass of their own)."""
    for epoch in range(start_epoch, max_epochs + 1):
        lr = partial["lr"] if partial else trainer.optimizer.param_groups[0]["lr"]
        reset_peak_memory(trainer.device)
        row = {"epoch": epoch, "lr": lr}
        try:
            row |= trainer.train_one_epoch(train_loader, f"epoch {epoch}/{max_epochs}", partial, stop)
        except EpochCut as cut:
            if checkpoint:
                checkpoint(epoch - 1, cut.partial | {"lr": lr})
            raise Interrupted(stop.signum, f"in epoch {epoch} after step {cut.partial['batches_done']}") from None
        partial = None
        loss = row["train_loss"]
        diverged = not math.isfinite(loss) or 0 < diverge_loss < loss
        # A diverged model is not evaluated: its row records the loss that stopped the run.
        if diverged:
            row |= {"test_loss": math.nan, "test_acc": math.nan, "eval_time_s": math.nan}
        else:
            row |= trainer.evaluate(test_loader, last_tally if epoch == max_epochs else None)
        row["peak_mem_mb"] = peak_memory_mb(trainer.device, train_loader, test_loader)
        on_epoch(row)
        if diverged:
            why = f" (above trainer.diverge_loss={diverge_loss:g})" if math.isfinite(loss) else ""
            raise Diverged(f"the training loss became {loss:.4g}{why} in epoch {epoch}")
        # agreed before saving: rank 0 saves when any rank was signalled (trainer.stopping sets its flag)
        stopping = stop is not None and epoch < max_epochs and trainer.stopping(stop)
        if checkpoint:
            checkpoint(epoch, None)
        if stopping:
            raise Interrupted(stop.signum, f"after epoch {epoch}")


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
    """The learning-rate schedule for ``scheduler.name``; returns (scheduler, steps per batch?)."""
    name = enum_value(cfg.name)
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
    """The model (seeded), optimizer and schedule on ``device``, ready to train (the backend
    switches are the run's: ``set_backends``, at its start)."""
    torch.manual_seed(cfg.seed)
    settings = compute_settings(cfg, device)
    channels_last = settings["channels_last"]
    model = create_model(cfg.model.name, image_size=size, **knobs).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer, params=model.parameters(), **fused_if_possible(cfg.optimizer, device))
    scheduler, per_batch = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.max_epochs, steps_per_epoch)
    world = distributed.from_env()
    if world.distributed:  # gradients averaged over the ranks at every backward
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Trainer(
        model=model,
        optimizer=optimizer,
        device=device,
        scheduler=scheduler,
        step_scheduler_per_batch=per_batch,
        label_smoothing=cfg.trainer.label_smoothing,
        amp_dtype=AUTOCAST_DTYPES[settings["precision"]],
        channels_last=channels_last,
        grad_clip=cfg.trainer.grad_clip,
        progress=cfg.trainer.progress and world.main,
        world=world,
        compile=settings["compiled"],
    )


def fused_if_possible(optimizer_cfg: DictConfig, device: torch.device) -> dict:
    """``fused=True`` on CUDA for optimizers that have a fused kernel (SGD, Adam, AdamW: the whole
    update in one launch instead of a few per parameter group), unless the config chooses."""
    if device.type != "cuda" or "fused" in optimizer_cfg or "foreach" in optimizer_cfg:
        return {}
    import inspect

    from hydra.utils import get_class

    takes = "fused" in inspect.signature(get_class(optimizer_cfg._target_).__init__).parameters
    return {"fused": True} if takes else {}


# --- checkpoints ------------------------------------------------------------------------


def unwrap(model: nn.Module) -> nn.Module:
    """The module itself, under torch.compile's and DistributedDataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def save_checkpoint(path: Path, trainer: Trainer, loader: DeviceLoader, epoch: int, partial: dict | None,
                    meta: dict) -> None:
    """Everything an exact resume needs, written atomically: a kill or a full disk at any moment
    leaves the old checkpoint or the new one, whole. Only tensors and plain values, so it loads
    weights-only."""
    state = {
        "meta": meta,  # what the checkpoint is of: model, knobs, resolution
        "epoch": epoch,  # epochs completed
        "partial": partial,  # the sums of an epoch cut short, or None
        "model": unwrap(trainer.model).state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler else None,
        "scaler": trainer.scaler.state_dict(),
        "loader": loader.state_dict(partial["batches_done"] if partial else 0),
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    atomic_write(path, lambda f: torch.save(state, f), binary=True)


def save_weights(path: Path, trainer: Trainer, meta: dict) -> None:
    """The model's weights alone (best.pt), written atomically like a checkpoint."""
    atomic_write(path, lambda f: torch.save({"meta": meta, "model": unwrap(trainer.model).state_dict()}, f), binary=True)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or holds more than tensors and plain values."""


NOT_A_CHECKPOINT = "is not a checkpoint (torch.save writes a zip archive; this file is not one)"
META_KEYS = ("model", "knobs", "resolution")  # what every checkpoint's meta record names: enough to rebuild its model
RESUME_KEYS = ("epoch", "optimizer", "scaler", "loader", "rng")  # what last.pt adds to the weights: where the run was


def zip_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a checkpoint by its bytes alone (None when it is a zip archive, as
    torch.save writes): not a zip at all, or one whose end is missing (a copy cut short)."""
    try:
        with open(path, "rb") as f:
            begins_as_zip = f.read(4) == b"PK\x03\x04"
    except OSError as err:  # (is_zipfile would say no, not why)
        return f"cannot be read ({err.strerror or err})"
    if zipfile.is_zipfile(path):
        return None
    if begins_as_zip:
        return (f"is damaged: it begins as the zip archive torch.save writes but its end is missing "
                f"({path.stat().st_size:,} bytes; truncated, e.g. a copy or a write cut short)")
    return NOT_A_CHECKPOINT


def checkpoint_path(resume: str, evaluate: bool = False) -> Path:
    """The file ``trainer.resume`` names: a .pt file, or a run dir's last.pt (for task=evaluate,
    its last.pt, else its best.pt). Checked before a run makes its dir: it must exist and be a
    file torch.save wrote (a zip archive), so a typo or a wrong file is refused at once."""
    path = Path(resume).expanduser()
    if path.is_dir():
        names = ("last.pt", "best.pt") if evaluate else ("last.pt",)
        path = next((path / name for name in names if (path / name).is_file()), path / names[0])
    if not path.is_file():
        kept = "last.pt or best.pt" if evaluate else "last.pt"
        how = ("a run keeps them when trained with trainer.checkpoint=true or trainer.save_best=true" if evaluate else
               "a run writes last.pt every epoch with trainer.checkpoint=true, and when a signal stops it")
        raise ConfigError(f"trainer.resume={resume!r}: no checkpoint at {path} (a run dir with {kept}, or a .pt file; {how})")
    if problem := zip_problem(path):
        raise ConfigError(f"trainer.resume={resume!r}: {path} {problem}")
    return path


def _what_it_holds(state) -> str:
    """A checkpoint-like object in a few words, for an error: what was found instead."""
    if isinstance(state, torch.Tensor):
        return f"a tensor of shape {tuple(state.shape)}"
    if isinstance(state, dict):
        if state and all(isinstance(v, torch.Tensor) for v in state.values()):
            return f"a dict of {len(state)} tensor{'s' if len(state) > 1 else ''} (a bare state_dict?)"
        keys = ", ".join(map(str, list(state)[:6])) + (", ..." if len(state) > 6 else "")
        return f"a dict of {keys}" if state else "an empty dict"
    return f"a {type(state).__name__}"


def load_checkpoint(path: Path) -> dict:
    """A checkpoint a cnnbench run wrote (last.pt, best.pt), read without trusting it: a zip
    archive whose every record matches the CRC-32 written with it (a damaged file is refused, not
    trained or evaluated with wrong weights); loaded weights-only (tensors and plain Python values,
    never objects whose unpickling could run code: nothing in a crafted file runs); shaped as a
    run writes it (a dict with its meta record and the model's weights). Raises CheckpointError
    saying what is wrong."""
    if problem := zip_problem(path):
        raise CheckpointError(f"{path} {problem}")
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            # torch.serialization.set_crc32_options(False) writes every checksum as 0: nothing to verify against
            checksummed = any(record.CRC for record in records if record.file_size)
            damaged = archive.testzip() if checksummed else None  # reads every record against its CRC-32
            written_by_torch = any(record.filename.endswith("/data.pkl") for record in records)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"{path} is damaged: its zip archive cannot be read ({first_line(err)})") from None
    if damaged:
        raise CheckpointError(f"{path} is damaged: its record {damaged} does not match the checksum written with it "
                              "(the file changed after it was saved, e.g. a disk or copy error); use another copy")
    if not written_by_torch:
        raise CheckpointError(f"{path} is a zip archive, but not one torch.save wrote (it has no data.pkl record)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err) or "global" in str(err).lower() and "allowed" in str(err):
            refused = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), first_line(err)).split(". Please")[0]
            raise CheckpointError(f"{path} holds objects other than tensors and plain values, which cnnbench "
                                  f"refuses to load (unpickling them could run code): {refused}") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (not a file torch.save wrote)") from None
    except Exception as err:  # a record torch cannot decode
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first_line(err)})") from None
    meta = state.get("meta") if isinstance(state, dict) else None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is not a checkpoint a cnnbench run wrote: it holds {_what_it_holds(state)}, where "
                              f"a run's last.pt and best.pt hold a meta record (naming the {', '.join(META_KEYS)}) "
                              "and the model's weights")
    lacking = [key for key in META_KEYS if key not in meta] + ([] if isinstance(state.get("model"), dict) else ["model weights"])
    if lacking:
        raise CheckpointError(f"{path} is not a checkpoint a cnnbench run wrote: its meta record or state lacks "
                              f"{', '.join(lacking)} (a run's last.pt and best.pt name the {', '.join(META_KEYS)} and hold "
                              "the model's weights)")
    return state


def read_checkpoint(resume: str, evaluate: bool = False) -> tuple[Path, dict]:
    """The checkpoint ``trainer.resume`` names, found (``checkpoint_path``) and loaded
    (``load_checkpoint``); what is wrong with it is a ConfigError naming the key. A resume needs
    what only last.pt holds (best.pt is the weights alone)."""
    path = checkpoint_path(resume, evaluate)
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        raise ConfigError(f"trainer.resume={resume!r}: {err}") from None
    if not evaluate and not all(key in state for key in RESUME_KEYS):
        raise ConfigError(f"trainer.resume={resume!r}: {path} holds a model's weights but not the run's place (its "
                          f"optimizer, epoch, data order): a resume needs the last.pt a run writes with "
                          "trainer.checkpoint=true (best.pt serves task=evaluate)")
    return path, state


def training_recipe(cfg: DictConfig) -> dict:
    """What a resumed run must share with the run that wrote its checkpoint, beyond the model,
    its knobs, the resolution and the batch size: the optimizer, the schedule, the data's
    treatment and the loss, the epoch's length (trainer.limit_train_batches) and the seed, and the
    run's length where the schedule spans it (cosine and one-cycle are built for trainer.max_epochs)."""
    sections = {name: OmegaConf.to_container(cfg[name], resolve=True, enum_to_str=True) for name in ("optimizer", "scheduler")}
    recipe = {f"{name}.{key}": value for name, section in sections.items() for key, value in section.items()}
    recipe |= {f"data.{key}": cfg.data[key] for key in ("normalize", "crop_padding", "hflip", "subset", "drop_last")}
    recipe |= {f"trainer.{key}": cfg.trainer[key] for key in ("label_smoothing", "grad_clip", "limit_train_batches")}
    recipe["seed"] = cfg.seed  # what the run records as its seed: the checkpoint's weights and data order came from it
    if enum_value(cfg.scheduler.name) in ("cosine", "onecycle"):
        recipe["trainer.max_epochs"] = cfg.trainer.max_epochs
    return recipe


# Recipe keys recorded only since a later version: a checkpoint written before is not checked on them
RECORDED_SINCE = {"seed", "trainer.limit_train_batches"}


def find_checkpoint(resume: str, meta: dict) -> tuple[Path, dict]:
    """The checkpoint ``trainer.resume`` names (a run dir or a .pt file) and its state, checked
    against this run's model and training recipe before anything is trained: a resume in other
    settings would train on silently (a cosine schedule at its end, other inputs) while its files
    name this run's."""
    path, state = read_checkpoint(resume)
    theirs = state["meta"]
    started = " ".join(theirs.get("overrides") or []) or "(no overrides)"
    advice = (f"resume with the overrides of the run that wrote it: {started} (those and no others; "
              "trainer.max_epochs=N trains on to epoch N where its schedule does not span the run), "
              "or drop trainer.resume to start a new run")
    for key in (*META_KEYS, "batch_size"):
        if theirs.get(key) != meta[key]:
            raise ResumeMismatch(f"trainer.resume={resume!r}: the checkpoint is of {key}={theirs.get(key)!r}, this run has "
                              f"{key}={meta[key]!r}; {advice}")
    if "recipe" in theirs:  # checkpoints before the recipe was recorded are checked as above only
        differ = [key for key in sorted(set(theirs["recipe"]) | set(meta["recipe"]))
                  if theirs["recipe"].get(key) != meta["recipe"].get(key) and (key in theirs["recipe"] or key not in RECORDED_SINCE)]
        if differ:
            was = ", ".join(f"{key}={theirs['recipe'].get(key)}" for key in differ)
            now = ", ".join(f"{key}={meta['recipe'].get(key)}" for key in differ)
            raise ResumeMismatch(f"trainer.resume={resume!r}: the checkpoint's run had {was}; this run has {now}. An exact "
                              f"resume needs the same settings; {advice}")
    return path, state


OPTIMIZER_KERNEL_KEYS = ("fused", "foreach", "capturable", "differentiable")  # how to step, not what: this machine's


def load_weights(model: nn.Module, state: dict, resume: str) -> None:
    """A checkpoint's weights into the model its meta record names, or a ConfigError saying how
    they do not fit it (a file whose weights and record disagree is not what it says)."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        mine, theirs = model.state_dict(), state["model"]

        def some(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

        missing, unexpected = [k for k in mine if k not in theirs], [k for k in theirs if k not in mine]
        shaped = [f"{k} {list(getattr(theirs[k], 'shape', []))} where the model has {list(mine[k].shape)}"
                  for k in mine if k in theirs and getattr(theirs[k], "shape", None) != mine[k].shape]
        wrong = "; ".join(f"{len(keys)} {what} ({some(keys)})" for what, keys in
                          (("missing", missing), ("unexpected", unexpected), ("of another shape", shaped)) if keys)
        meta = state["meta"]
        raise ConfigError(f"trainer.resume={resume!r}: its weights do not fit the model its record names ({meta['model']} at "
                          f"{'x'.join(map(str, meta['resolution']))}, with its recorded knobs): {wrong or 'torch refused them'}") from None


def restore(state: dict, trainer: Trainer, loader: DeviceLoader, resume: str) -> None:
    """Put a checkpoint's state back into a freshly built trainer and its training loader."""
    load_weights(unwrap(trainer.model), state, resume)
    # The saved param groups replace this run's, kernel choices included: a checkpoint written on
    # the CPU would turn CUDA's fused optimizer off, and with fp16 loss scaling then fail at the
    # first step (the optimizer still takes the scaler's arguments only a fused kernel handles).
    kernels = [{key: group[key] for key in OPTIMIZER_KERNEL_KEYS if key in group} for group in trainer.optimizer.param_groups]
    trainer.optimizer.load_state_dict(state["optimizer"])
    for group, own in zip(trainer.optimizer.param_groups, kernels):
        group.update(own)
    if trainer.scheduler and state["scheduler"]:
        trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.scaler.load_state_dict(state["scaler"])
    loader.load_state_dict(state["loader"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():  # as many GPUs as both machines have
        for index, rng in enumerate(state["rng"]["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(rng, index)
