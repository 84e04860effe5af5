"""Config schemas (registered in Hydra's ConfigStore) and the checks that run before training.

Hydra rejects a mistyped key or a value of the wrong type for the typed groups (data,
trainer, scheduler) while composing. The model and optimizer groups differ per choice, so
their keys are checked against the model builder's and the optimizer's signatures here.
Every error names the key, the bad value and what is allowed.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Optional

import torch
from hydra.core.config_store import ConfigStore
from hydra.utils import get_class, instantiate
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

from . import distributed
from .models import ModelError, get_spec, min_input_size
from .models.registry import accepts_input, check_knobs


class ConfigError(ValueError):
    """A bad setting, caught before training starts."""


class Precision(str, Enum):
    auto = "auto"  # bf16 autocast on CUDA, fp32 on the CPU
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # autocast with a gradient scaler (CUDA)


class SchedulerName(str, Enum):
    none = "none"
    step = "step"  # multiply the rate by gamma every step_size epochs
    cosine = "cosine"  # cosine decay to min_lr over the run, per step
    onecycle = "onecycle"  # warm up to optimizer.lr then anneal (Smith's one-cycle), per step


class Task(str, Enum):
    train = "train"  # train and evaluate: metrics.csv, curves.png
    summary = "summary"  # layer table, parameter/FLOP split, memory: layers.csv
    bench = "bench"  # training and inference throughput and memory per batch size: bench.csv
    min_size = "min_size"  # the smallest input the model accepts: stages.csv
    evaluate = "evaluate"  # a checkpoint (trainer.resume=RUN_OR_PT) on the test set: per_class.csv, confusion.png


@dataclass
class BenchConfig:
    batch_sizes: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    warmup_steps: int = 3  # untimed steps first (allocator, cuDNN autotuning, compilation)
    steps: int = 10  # timed steps per batch size and mode; the median is reported


@dataclass
class DataConfig:
    root: Optional[str] = None  # folder with the four IDX files (gzipped or not); unset: Debian package, then download
    download: bool = True  # let torchvision download as a last resort (needs internet)
    resize: Any = None  # side in px, or [h, w]; unset: the model's chapter resolution; 28 = native
    batch_size: int = 128  # images per training step
    test_batch_size: Optional[int] = None  # unset: batch_size
    subset: Optional[int] = None  # train on the first N training images only
    test_subset: Optional[int] = None  # evaluate on the first N test images only
    drop_last: bool = False  # drop the last partial training batch (fixed shapes help torch.compile)
    normalize: bool = False  # standardise with the training set's mean and std (the book does not)
    crop_padding: int = 0  # augmentation: zero-pad by N native pixels and crop 28x28 back at random (0: off)
    hflip: bool = False  # augmentation: flip half the images left-right


@dataclass
class SchedulerConfig:
    name: SchedulerName = SchedulerName.none
    step_size: int = 5  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    min_lr: float = 0.0  # cosine: the final learning rate
    pct_start: float = 0.25  # onecycle: share of the steps spent warming up


@dataclass
class TrainerConfig:
    max_epochs: int = 10  # the book trains every model for 10 epochs
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    precision: Precision = Precision.auto
    channels_last: bool = False  # NHWC memory format (faster convolutions on tensor-core GPUs)
    compile: bool = False  # torch.compile the model (first epoch pays the compile time)
    label_smoothing: float = 0.0  # cross-entropy label smoothing, in [0, 1)
    grad_clip: float = 0.0  # clip the gradient norm to this value (0: off)
    diverge_loss: float = 1000.0  # an epoch's mean training loss above this ends the run as diverged (0: only NaN/inf)
    limit_train_batches: Optional[int] = None  # stop each training epoch after N steps (smoke runs)
    limit_test_batches: Optional[int] = None  # evaluate on N batches only
    checkpoint: bool = False  # write last.pt (everything a resume needs) at every epoch end
    save_best: bool = False  # keep the weights with the best test accuracy in best.pt
    resume: Optional[str] = None  # a run dir (or .pt file) to continue from, e.g. hydra.run.dir=D trainer.resume=D
    deterministic: bool = False  # deterministic algorithms on the GPU (slower); the CPU is deterministic anyway
    progress: bool = True  # tqdm bar per epoch when stderr is a terminal
    plot: bool = True  # write curves.png at the end of the run


@dataclass
class Config:
    task: Task = Task.train
    model: Any = MISSING  # name + knobs, checked against the model's builder
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: Any = MISSING  # _target_ + keyword arguments of a torch.optim class
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    bench: BenchConfig = field(default_factory=BenchConfig)  # task=bench
    seed: int = 0  # seeds weights, data order and augmentation
    objective: str = "best_test_acc"  # the summary.json field a run returns to a sweeper (e.g. Optuna)
    logger: Dict[str, Any] = field(default_factory=dict)  # trackers by name (conf/logger/; cnnbench/loggers.py)


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


# --- checks run before training ---------------------------------------------------------


def resolution(cfg: DictConfig) -> tuple[int, int]:
    """The input (h, w) of this run: data.resize, else the model's chapter resolution."""
    size = cfg.data.resize
    if size is None:
        side = get_spec(cfg.model.name).resolution
        return side, side
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if isinstance(size, (list, tuple, ListConfig)) and len(size) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size
    ):
        return int(size[0]), int(size[1])
    raise ConfigError(f"data.resize={size!r} is not allowed; give a positive side in pixels (e.g. 96) or [height, width]")


def model_knobs(cfg: DictConfig) -> dict[str, Any]:
    """The model's knobs from the config (without its name), as plain Python values."""
    knobs = OmegaConf.to_container(cfg.model, resolve=True)
    knobs.pop("name", None)
    return knobs


def optimizer_class(cfg: DictConfig) -> type[torch.optim.Optimizer]:
    target = cfg.optimizer.get("_target_")
    try:
        cls = get_class(target)
    except Exception:
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer._target_={target!r} is not a torch.optim optimizer class (e.g. torch.optim.SGD)")
    return cls


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked without data: raises ConfigError naming key and value."""
    if "name" not in cfg.model:
        raise ConfigError("model.name is missing; choose a model with model=NAME")
    name = cfg.model.name
    try:
        knobs = check_knobs(name, model_knobs(cfg))
    except ModelError as err:
        raise ConfigError(str(err)) from None

    positive = {
        "data.batch_size": cfg.data.batch_size,
        "trainer.max_epochs": cfg.trainer.max_epochs,
        "data.test_batch_size": cfg.data.test_batch_size,
        "data.subset": cfg.data.subset,
        "data.test_subset": cfg.data.test_subset,
        "trainer.limit_train_batches": cfg.trainer.limit_train_batches,
        "trainer.limit_test_batches": cfg.trainer.limit_test_batches,
        "bench.steps": cfg.bench.steps,
    }
    if not cfg.bench.batch_sizes or any(b < 1 for b in cfg.bench.batch_sizes):
        raise ConfigError(f"bench.batch_sizes={list(cfg.bench.batch_sizes)} is not allowed; give a list of positive integers")
    if cfg.bench.warmup_steps < 0:
        raise ConfigError(f"bench.warmup_steps={cfg.bench.warmup_steps} is not allowed; it must be 0 or more")
    for key, value in positive.items():
        if value is not None and value < 1:
            raise ConfigError(f"{key}={value} is not allowed; it must be a positive integer")
    if cfg.data.crop_padding < 0:
        raise ConfigError(f"data.crop_padding={cfg.data.crop_padding} is not allowed; use 0 (off) or a positive number of pixels")
    if not 0 <= cfg.trainer.label_smoothing < 1:
        raise ConfigError(f"trainer.label_smoothing={cfg.trainer.label_smoothing} is not allowed; it must be in [0, 1)")
    if not cfg.trainer.diverge_loss >= 0:
        raise ConfigError(f"trainer.diverge_loss={cfg.trainer.diverge_loss} is not allowed; use 0 (only NaN/inf) or a positive loss")
    if cfg.trainer.grad_clip < 0:
        raise ConfigError(f"trainer.grad_clip={cfg.trainer.grad_clip} is not allowed; use 0 (off) or a positive norm")
    device = cfg.trainer.device
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise ConfigError(f"trainer.device={device!r} is not allowed; choose auto, cpu, cuda or cuda:N")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device!r}: CUDA is not available on this machine; use auto or cpu")

    _validate_optimizer(cfg)
    from .loggers import config_problem
    if problem := config_problem(cfg.get("logger")):
        raise ConfigError(problem)

    world = distributed.from_env()
    if world.distributed:
        if cfg.task != Task.train:
            raise ConfigError(f"task={getattr(cfg.task, 'value', cfg.task)} runs in one process; only task=train runs under torchrun")
        if cfg.data.batch_size % world.size:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} is the global batch and must divide evenly "
                              f"over the {world.size} processes of this torchrun launch")

    h, w = resolution(cfg)
    if cfg.task == Task.min_size:  # it searches the sizes itself
        return
    try:
        if not accepts_input(name, (h, w), **knobs):
            smallest = min_input_size(name, **knobs)
            raise ConfigError(
                f"data.resize={cfg.data.resize if cfg.data.resize is not None else h} ({h}x{w}) is too small for "
                f"model {name}: the smallest input it accepts is {smallest}x{smallest}"
            )
    except ModelError as err:
        raise ConfigError(str(err)) from None


def _validate_optimizer(cfg: DictConfig) -> None:
    cls = optimizer_class(cfg)
    params = inspect.signature(cls.__init__).parameters
    for key, value in cfg.optimizer.items():
        if key == "_target_":
            continue
        if key not in params or key in ("self", "params"):
            allowed = [k for k in params if k not in ("self", "params")]
            raise ConfigError(f"optimizer.{key} is not an argument of {cls.__name__}; allowed: {', '.join(allowed)}")
        default = params[key].default
        number = isinstance(default, (int, float)) and not isinstance(default, bool)
        if number and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ConfigError(f"optimizer.{key}={value!r} is not allowed; {cls.__name__} takes a finite number")
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"optimizer.{key}={value!r} is not allowed; {cls.__name__} takes true or false")
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ConfigError(f"optimizer.lr={lr!r} is not allowed; the learning rate must be a positive number")
    try:  # the optimizer's own checks (momentum >= 0, betas in [0, 1), ...) on a stand-in parameter
        instantiate(cfg.optimizer, params=[torch.nn.Parameter(torch.zeros(1))])
    except Exception as err:
        cause = err.__cause__ or err
        raise ConfigError(f"optimizer: {cls.__name__} rejects its arguments: {cause}") from None
