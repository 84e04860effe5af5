"""Config schemas (registered in Hydra's ConfigStore) and the checks that run before training.

Hydra rejects a mistyped key or a value of the wrong type for the typed groups (data,
trainer, scheduler) while composing. The model and optimizer groups differ per choice, so
their keys are checked against the model builder's and the optimizer's signatures here.
Every error names the key, the bad value and what is allowed.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import math
import os
import re
import shlex
import shutil
import sys
import textwrap
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from hydra.utils import get_class, instantiate
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf, ValidationError, open_dict

from . import data, distributed
from .loggers import config_problem
from .models import ModelError, get_spec, min_input_size
from .models.registry import Range, accepts_input, check_knobs
from .models.registry import did_you_mean as _nearest  # the one suggester of every message
from .rundir import safe_name


class ConfigError(ValueError):
    """A bad setting, caught before training starts."""


class ResumeMismatch(ConfigError):
    """A resume in settings its checkpoint does not fit (another model, batch size or recipe;
    nothing left to train): the checkpoint is sound, and the run can still be resumed in its own."""


def enum_value(option: Any) -> Any:
    """A config value as plain Python: the value of an Enum (``Task.train`` -> "train"), else itself."""
    return getattr(option, "value", option)


def first_line(err: BaseException) -> str:
    """An exception's message, first line (its type's name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class Precision(str, Enum):
    auto = "auto"  # bf16 autocast on CUDA (fp16 with loss scaling on GPUs before Ampere), fp32 on the CPU
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # autocast with a gradient scaler (CUDA)


class MatmulPrecision(str, Enum):
    highest = "highest"  # full fp32 matmuls and convolutions
    high = "high"  # fp32 matmuls and convolutions may use TF32 on tensor-core GPUs (the default)
    medium = "medium"  # fp32 matmuls may use bf16 internally


class SchedulerName(str, Enum):
    none = "none"
    step = "step"  # multiply the rate by gamma every step_size epochs
    cosine = "cosine"  # cosine decay to min_lr over the run, per step
    onecycle = "onecycle"  # warm up to optimizer.lr then anneal (Smith's one-cycle), per step


class Task(str, Enum):
    train = "train"
    summary = "summary"
    bench = "bench"
    min_size = "min_size"
    evaluate = "evaluate"


TASK_HELP = {
    "train": "train and evaluate every epoch: metrics.csv, summary.json, curves.png",
    "summary": "layers, parameter and FLOP split, memory at the batch size (no training): layers.csv, layers.png",
    "bench": "training and prediction throughput and memory per batch size: bench.csv, bench.png",
    "min_size": "the smallest input the model accepts, and each stage's shape there: stages.csv",
    "evaluate": "a checkpoint (trainer.resume=RUN_OR_PT) on the test set: per_class.csv, confusion.png, mistakes.png",
}


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
    test_batch_size: int = 1000  # images per evaluation step (divides the 10,000 test images); not the training batch
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
    channels_last: Optional[bool] = None  # NHWC memory format (faster convolutions on tensor-core GPUs); null: on for CUDA
    # torch.compile the training step; on CUDA its forward and backward replay as CUDA graphs (no
    # per-kernel launch cost). null: on for CUDA, off on the CPU. The first step pays the
    # compilation (summary.json: compile_s; cached on disk, so later runs of the model start fast).
    compile: Optional[bool] = None
    matmul_precision: MatmulPrecision = MatmulPrecision.high
    # CPU threads for torch's operators (torch.set_num_threads). null: torch's default, one per
    # core (under hydra/launcher=local_parallel, each job's share of the cores). Where other work
    # shares the cores, fewer can be several times faster (docs/speed.md).
    threads: Optional[int] = None
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
    plot: bool = True  # write the run's plots (curves.png, confusion.png, mistakes.png; task=bench: bench.png; task=summary: layers.png; a sweep's report); false: the tables only


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


# The range of every numeric key of the schema (ends included unless marked open), checked
# before anything runs; a test checks that no numeric key is missing here. Model knobs carry
# their ranges in their builders' signatures (models/registry.py, Range).
BIG = 2**31
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**63 - 2),  # torch's generators take 64-bit seeds; augmentation uses seed + 1
    "data.batch_size": Range(1, 2**16),
    "data.test_batch_size": Range(1, 2**16),
    "data.subset": Range(1, BIG),
    "data.test_subset": Range(1, BIG),
    "data.crop_padding": Range(0, 28),  # beyond 28 px a crop can miss the image entirely
    "scheduler.step_size": Range(1, BIG),
    "scheduler.gamma": Range(0, 1, open_lo=True),
    "scheduler.min_lr": Range(0, math.inf, open_hi=True),
    "scheduler.pct_start": Range(0, 1, open_lo=True, open_hi=True),
    "trainer.max_epochs": Range(1, 10**6),
    "trainer.threads": Range(1, 1024),
    "trainer.label_smoothing": Range(0, 1, open_hi=True),
    "trainer.grad_clip": Range(0, math.inf, open_hi=True),
    "trainer.diverge_loss": Range(0, math.inf, open_hi=True),
    "trainer.limit_train_batches": Range(1, BIG),
    "trainer.limit_test_batches": Range(1, BIG),
    "bench.batch_sizes": Range(1, 2**16),
    "bench.warmup_steps": Range(0, 10**6),
    "bench.steps": Range(1, 10**6),
}
RANGE_NOTES = {
    "data.crop_padding": " (0: off)",
    "trainer.grad_clip": " (0: off)",
    "trainer.diverge_loss": " (0: only NaN/inf)",
}
MAX_SIDE = 4096  # data.resize: the largest side in pixels

# What ``objective`` may name: the numbers each task writes to summary.json (a test runs every
# task and checks that each is there). A sweeper maximises or minimises it as it is configured.
_MODEL = ("params", "flops", "wall_time_s")
OBJECTIVES = {
    "train": ("best_test_acc", "final_test_acc", "worst_class_acc", "final_train_loss", "final_train_acc", "steady_epoch_time_s",
              "training_s", "peak_mem_mb", *_MODEL),
    "evaluate": ("test_acc", "worst_class_acc", "wall_time_s"),
    "bench": ("best_train_images_per_s", "largest_train_batch_mb", *_MODEL),
    "summary": ("train_memory_mb", "infer_memory_mb", *_MODEL),
    "min_size": ("min_size", "no_collapse_size", "wall_time_s"),
}


def register_configs() -> None:
    """The schema; the ``${safe:...}`` resolver that keeps a value out of a path's structure and
    ``${run_label:...}``, the default run dir's name; ``${catalog:tasks|recipes}`` for --help;
    ``${model_px:NAME}``, data.resize's default."""
    ConfigStore.instance().store(name="base_config", node=Config)
    OmegaConf.register_new_resolver("safe", safe_name, replace=True)
    OmegaConf.register_new_resolver("run_label", run_label, replace=True)
    OmegaConf.register_new_resolver("catalog", catalog, replace=True)
    OmegaConf.register_new_resolver("model_px", model_px, replace=True)


def run_label(task: Any, model: str, resume: Any) -> str:
    """The default run dir's name after its time: the model's; for ``task=evaluate``,
    ``evaluate_`` and the name of the checkpoint's run dir, which holds the checkpoint's model
    (the configured model may be any). Safe: no value leaves outputs/."""
    if enum_value(task) == "evaluate" and resume:
        source = Path(str(resume))
        source = source.parent if source.suffix == ".pt" else source
        name = f"{source.parent.name}_{source.name}" if source.name.isdigit() else source.name  # a sweep's job
        return safe_name(f"evaluate_{name}")
    return safe_name(model)


def model_px(name: str) -> int | None:
    """The side a model trains at by default (its chapter resolution): data.resize's default,
    so the composed config (and --cfg job) shows the resolution a run will use."""
    try:
        return get_spec(name).resolution
    except ModelError:
        return None  # validate() says what is wrong with the name


def catalog(what: str) -> str:
    """One line per task or per recipe (its file's first comment sentence), for --help."""
    if what == "tasks":
        return "\n".join(f"  {name:10} {text}" for name, text in TASK_HELP.items())
    lines = []
    for name in group_options("experiment"):
        comment = " ".join(line.lstrip("# ").strip() for line in (CONF_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()[1:4]
                           if line.startswith("#"))
        # up to the book's citation, without asides but the section: "(d2l 8.8; Radosavovic et al. 2020)" goes
        plain = re.sub(r"\((d2l \d+\.\d+)[;,][^()]*\)", r"(\1)", comment.split("(Dive into")[0])
        plain = re.sub(r"\s*\((?!d2l \d+\.\d+\))[^()]*\)", "", plain)
        first = re.split(r"(?<=[.?])\s", plain)[0].rstrip(" .:")
        wrapped = textwrap.wrap(first, 86) or [""]  # whole, on as many lines as it takes
        lines += [f"  {name if i == 0 else '':30} {text}" for i, text in enumerate(wrapped)]
    return "\n".join(lines)


def _conf_dir() -> Path:
    """conf/ sits beside the package in a checkout (and editable installs); a wheel carries
    it inside the package as cnnbench/conf."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if packaged.is_dir() else here.parent / "conf"


CONF_DIR = _conf_dir()


def compose(*overrides: str, hydra: bool = False) -> DictConfig:
    """The config the command line composes from ``overrides`` (for tests, benchmarks, a sweep's
    check of its jobs and notebooks); ``hydra=True`` keeps the ``hydra`` node (sweeper params,
    run dir, ...)."""
    register_configs()
    if not hydra and (cfg := _compose_from_choices(overrides)) is not None:
        return cfg
    return _compose(overrides, hydra)


def _compose(overrides, hydra: bool = False) -> DictConfig:
    """Hydra's own composition, from the files."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    if GlobalHydra.instance().is_initialized():  # inside the running command (a sweep checking its jobs)
        cfg = GlobalHydra.instance().hydra.compose_config("config", list(overrides), run_mode=RunMode.RUN)
        if not hydra:
            with open_dict(cfg):
                del cfg["hydra"]
        return cfg
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=hydra)


_BY_CHOICES: dict[tuple, DictConfig] = {}


def _compose_from_choices(overrides) -> DictConfig | None:
    """Hydra composes in two steps: the defaults list (which files: the choices of the groups,
    such as ``model=resnet18`` or ``experiment=ex_bn_lr``), then the other overrides
    (``data.resize=32``) applied to the result. The first is nearly all of a composition's
    0.13 s and depends on the choices alone, so it is made once per process for each set of
    choices; the second is Hydra's own function, applied to a copy (6 ms). None (compose in full)
    for what this does not cover: a sweep, a ``hydra`` key, a package, or a Hydra without that
    function; a test holds the two ways equal, errors included."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        apply = ConfigLoaderImpl._apply_overrides_to_config
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # a malformed override: Hydra's full composition says what is wrong
        return None
    fields = {f.name for f in dataclasses.fields(Config)}
    choices, values = [], []
    for override in parsed:
        key = override.key_or_group
        if override.is_sweep_override() or override.package is not None or key.split(".")[0].split("/")[0] == "hydra":
            return None
        if key in GROUPS:
            if isinstance(override.value(), dict):  # data={...}: a value, applied in its place among the others
                return None
            choices.append(override.input_line)
        elif "." in key or key in fields:
            values.append(override)
        else:  # neither a group nor a key: let Hydra name it
            return None
    from hydra.core.global_hydra import GlobalHydra

    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    key = (str(CONF_DIR), running, tuple(choices))  # the running command's search path may differ
    if key not in _BY_CHOICES:
        if len(_BY_CHOICES) > 256:
            _BY_CHOICES.clear()
        _BY_CHOICES[key] = _compose(choices)
    cfg = copy.deepcopy(_BY_CHOICES[key])
    apply(values, cfg)
    return cfg


# --- checks run before training ---------------------------------------------------------


def resolution(cfg: DictConfig) -> tuple[int, int]:
    """The input (h, w) of this run: data.resize, else the model's chapter resolution."""
    size = cfg.data.resize
    if size is None:
        side = get_spec(cfg.model.name).resolution
        return side, side
    def side(s) -> bool:
        return isinstance(s, int) and not isinstance(s, bool) and 0 < s <= MAX_SIDE

    if side(size):
        return size, size
    if isinstance(size, (list, tuple, ListConfig)) and len(size) == 2 and all(side(s) for s in size):
        return int(size[0]), int(size[1])
    shown = list(size) if isinstance(size, ListConfig) else size
    raise ConfigError(f"data.resize={shown!r} is not allowed; give a side in pixels from 1 to {MAX_SIDE} (e.g. 96) "
                      "or [height, width]")


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


# The schema's sections: a key the schema does not know is refused, with or without `+`.
SECTIONS = {"data": DataConfig, "trainer": TrainerConfig, "scheduler": SchedulerConfig, "bench": BenchConfig}
# Config groups whose options are files in conf/GROUP/ (checked before Hydra composes).
GROUPS = ("model", "data", "optimizer", "scheduler", "trainer", "experiment", "logger", "hparams_search")


def own_overrides(overrides: list[str], *also: str) -> list[str]:
    """A run's overrides that set what it does: not where it wrote (hydra.run.dir), not what it
    resumed (trainer.resume), nor any key in ``also``."""
    drop = {"hydra.run.dir", "trainer.resume", *also}
    return [o for o in overrides if o.lstrip("+~").partition("=")[0] not in drop]


def program() -> str:
    """``cnnbench`` as a pasted command must call it: its name where the shell finds this one by
    it, else the path it was started by (``.venv/bin/cnnbench`` after ``make run``, with the
    environment not activated). ``python -m cnnbench`` is shown as ``cnnbench``."""
    started = sys.argv[0] if sys.argv else ""
    if Path(started).name != "cnnbench":
        return "cnnbench"
    found = shutil.which("cnnbench")
    return "cnnbench" if found and Path(found).resolve() == Path(started).resolve() else started


def resume_command(overrides: list[str], run_dir, *also: str) -> str:
    """The command that continues the run in ``run_dir`` in its own settings, to paste."""
    command = [*own_overrides(overrides, *also), f"hydra.run.dir={run_dir}", f"trainer.resume={run_dir}"]
    return " ".join([program(), *(shlex.quote(c) for c in command)])


def sweep_command(overrides: list[str], hydra_overrides: list[str], sweep_dir) -> str:
    """The command that runs the sweep in ``sweep_dir`` again, there (its completed jobs are
    skipped, interrupted ones resume): its overrides, with its dir named, since the default dir
    is a new one every second."""
    own = [o for o in hydra_overrides if o.lstrip("+~").partition("=")[0] not in ("hydra.sweep.dir", "hydra.mode", "hydra.run.dir")]
    command = ["-m", *overrides, *own, f"hydra.sweep.dir={sweep_dir}"]
    return " ".join([program(), *(shlex.quote(c) for c in command)])


def compose_checked(*overrides: str) -> DictConfig:
    """``compose``, with a typed key's bad value (``task=sumary``, ``trainer.max_epochs=two``) as
    cnnbench's ConfigError: the value as typed and what is allowed, where Hydra prints the
    error's object types and a stack-trace hint. Other composition errors pass through."""
    try:
        return compose(*overrides)
    except ConfigCompositionException as err:
        cause = err.__cause__
        if isinstance(cause, ValidationError) and cause.full_key:
            typed = next((o.lstrip("+~") for o in overrides if o.lstrip("+~").partition("=")[0] == cause.full_key), None)
            raise ConfigError(_typed_value_error(cause, typed)) from None
        raise


def _typed_value_error(err, typed: str | None) -> str:
    key, value = err.full_key, getattr(err, "value", None)
    shown = typed or (f"{key}={value}" if value is not None else key)
    reason = str(err).splitlines()[0]
    allowed = re.search(r"expected one of \[(.*)\]", reason)
    if allowed:
        options = [o.strip() for o in allowed.group(1).split(",")]
        return f"{shown} is not allowed{_nearest(str(value), options)}; choose one of: {', '.join(options)}"
    kind = re.search(r"could not be converted to (Integer|Float)|is not a valid (bool)", reason)
    if kind:
        takes = {"Integer": "a whole number", "Float": "a number", "bool": "true or false"}[kind.group(1) or kind.group(2)]
        bounds = f" in {RANGES[key]}{RANGE_NOTES.get(key, '')}" if key in RANGES else ""
        return f"{shown} is not allowed; {key} takes {takes}{bounds}"
    if "is not a ListConfig" in reason:
        return f"{shown} is not allowed; {key} takes a list, e.g. {key}=[32,64]"
    return f"{shown}: {reason}"


@functools.lru_cache(maxsize=None)
def default_choice(group: str) -> str | None:
    """The option conf/config.yaml's defaults list picks for ``group`` (model: bn_lenet)."""
    for entry in OmegaConf.load(CONF_DIR / "config.yaml").get("defaults", []):
        if isinstance(entry, DictConfig) and group in entry:
            return entry[group]
    return None


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@functools.lru_cache(maxsize=None)
def hydra_group_options(group: str) -> list[str]:
    """The options of one of Hydra's own groups (``hydra/launcher``): Hydra's, its plugins' and
    this project's (conf/hydra/), as Hydra's config loader finds them."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return sorted(GlobalHydra.instance().config_loader().get_group_options(group))


def sweep_values(override) -> list[str]:
    """An override's values as the text a job gets: its one value, or each of a sweep's. A glob
    over a group's options (``model=glob(resnet*)``) is matched here against the options
    cnnbench and Hydra know, as Hydra's config loader will match it; one that matches none, or
    that is given to a key that is no group, is refused by name."""
    from hydra.core.override_parser.types import Glob

    if not override.is_sweep_override():
        return [override.get_value_element_as_str()]
    if not isinstance(override.value(), Glob):
        return list(override.sweep_string_iterator())
    key = override.key_or_group
    if key not in GROUPS and not key.startswith("hydra/"):
        raise ConfigError(f"{override.input_line}: glob() chooses among a group's options and {key} is not a group "
                          f"(the groups: {', '.join(GROUPS)}); give the values as a sweep, {key}=A,B")
    options = hydra_group_options(key) if key.startswith("hydra/") else group_options(key)
    chosen = override.value().filter(options)
    if not chosen:
        raise ConfigError(f"{override.input_line} matches none of {key}'s options; choose from: {', '.join(options)}")
    return chosen


def check_overrides(overrides: list[str], sweep_advice: str | None = None) -> None:
    """The command line's overrides, checked before Hydra composes anything: every group option
    must exist (``model=resnet``, ``experiment=nosuch``) and every key of the schema's sections
    must be one (``trainer.max_epoch=3``, with or without ``+``). Raises ConfigError naming the
    nearest real option or key. ``sweep_advice``: a command that runs one job, where several values
    (``optimizer.lr=0.01,0.1``) are refused with this advice (Hydra would say only that the value
    is ambiguous and suggest a list, which the key refuses); None: a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Glob

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except Exception:  # one of them is not Hydra's syntax: say which, and what the syntax is
        for text in overrides:
            try:
                parser.parse_overrides([text])
            except Exception as err:
                raise ConfigError(f"{text} is not an override Hydra can read{_where_unread(err, text)}: KEY=VALUE, a list "
                                  f"KEY=[A,B], a sweep KEY=A,B (with -m); a value with other characters goes in Hydra's "
                                  f"quotes inside the shell's: \"KEY='A;B'\"") from None
        return
    for override in parsed if sweep_advice else []:
        if override.is_sweep_override():
            several = f"; several trackers in one run: '{override.key_or_group}=[{','.join(sweep_values(override))}]'" \
                if override.key_or_group == "logger" else ""
            raise ConfigError(f"{override.input_line} lists several values, a sweep: "
                              f"{sweep_advice.format(override=override.input_line)}{several} (a value that holds a comma goes in "
                              f"Hydra's quotes inside the shell's: \"KEY='A,B'\")")
    fields = {f.name for f in dataclasses.fields(Config)}
    groups_given = {o.key_or_group for o in parsed}
    seen: dict[str, str] = {}
    for override in parsed:  # Hydra keeps the last of two values silently (hydra.* aside: torchrun's ranks add their own)
        key = override.key_or_group
        if key.startswith("hydra") or override.is_delete():
            continue
        text = override.input_line.partition("=")[2] if override.input_line else ""
        if key in seen and seen[key] != text:
            raise ConfigError(f"{key} is given twice ({key}={seen[key]}, then {key}={text}); give it once")
        seen[key] = text
    for override in parsed:
        key = override.key_or_group
        if key == "model.name" and not {"model", "experiment"} & groups_given and not override.is_sweep_override() \
                and str(override.value()) in group_options("model") and str(override.value()) != default_choice("model"):
            # the name alone keeps the default model's knobs (bn_lenet's norm_at, say), which the named model lacks
            raise ConfigError(f"model.name={override.value()} sets the name alone, keeping the default model's knobs; "
                              f"choose the model with model={override.value()}")
        if key.startswith("hydra.sweeper.params.") and "." in key.removeprefix("hydra.sweeper.params."):
            axis = key.removeprefix("hydra.sweeper.params.")  # Hydra would read it as a nested dict and fail on its type
            raise ConfigError(f"{key}: a sweep's axis is set by its key itself, {axis}={override.input_line.partition('=')[2]} "
                              f"(the command line's values replace a recipe's)")
        if key.startswith("hydra") and not key.startswith("hydra/") or override.is_delete():  # Hydra's own keys
            continue
        if key in GROUPS or key.startswith("hydra/"):  # cnnbench's groups and Hydra's (hydra/launcher, hydra/sweeper)
            values = sweep_values(override) if override.is_sweep_override() else [override.value()]
            options = hydra_group_options(key) if key.startswith("hydra/") else group_options(key)
            for value in values:
                for option in (value if isinstance(value, list) else [value]):
                    if option is not None and str(option) not in options:
                        raise ConfigError(f"{key}={option} is not an option of {key}{_nearest(str(option), options)}; "
                                          f"choose one of: {', '.join(options)}")
            continue
        if override.is_sweep_override() and isinstance(override.value(), Glob):
            sweep_values(override)  # a glob of a key that is no group: refused, by name
        section, _, name = key.partition(".")
        if section == "logger" and name:
            _check_tracker_key(key, parsed)
            continue
        if section in SECTIONS and name:
            known = [f.name for f in dataclasses.fields(SECTIONS[section])]
            if name.split(".")[0] not in known:
                raise ConfigError(f"{key} is not a key of {section}{_nearest(name, known, section) or _elsewhere(name)}; "
                                  f"its keys are: {', '.join(known)}")
            if name in _bool_keys(SECTIONS[section]):
                _check_bool(key, override, _bool_keys(SECTIONS[section])[name])
        elif not name and key not in fields and key not in GROUPS:
            raise ConfigError(f"{key} is not a top-level key{_nearest(key, fields) or _elsewhere(key)}; "
                              f"the keys are: {', '.join(sorted(fields))}")
        elif name and section not in fields and section not in GROUPS:
            raise ConfigError(f"{key}: {section} is not a section of the config{_nearest(section, fields)}; the top-level "
                              f"keys are: {', '.join(sorted(fields))}")


def _elsewhere(name: str) -> str:
    """" (did you mean optimizer.lr?)" for a key given in the wrong section (trainer.lr, lr): the
    sections' keys and the default optimizer's arguments."""
    places = [f"{section}.{name}" for section, schema in SECTIONS.items() if name in {f.name for f in dataclasses.fields(schema)}]
    optimizer = OmegaConf.load(CONF_DIR / "optimizer" / f"{default_choice('optimizer')}.yaml") or {}
    places += [f"optimizer.{name}"] if name in optimizer and name != "_target_" else []
    return f" (did you mean {' or '.join(places)}?)" if places else ""


def _where_unread(err: Exception, text: str) -> str:
    """Where Hydra's parser stopped reading ``text`` (its message points a caret there): " (at '~')"."""
    lines = str(err).splitlines()
    if len(lines) > 1 and lines[1].strip() == "^" and text in lines[0]:
        column = lines[1].index("^") - lines[0].index(text)
        if 0 <= column < len(text):
            return f" (at {text[column]!r})"
    return ""


@functools.lru_cache(maxsize=None)
def _bool_keys(section: type) -> dict[str, bool]:
    """The switches of a schema section (its fields typed bool or Optional[bool]): whether each may be null."""
    hints = typing.get_type_hints(section)
    return {name: hint != bool for name, hint in hints.items() if hint is bool or hint == Optional[bool]}


def _check_bool(key: str, override, nullable: bool) -> None:
    """A switch takes true or false (any case, quoted or not, or an interpolation ``${...}``), as a
    model's and an optimizer's switches do. OmegaConf would also read yes/Y/on/1 and any other
    number as true (``trainer.deterministic=2``): refused, so that what a command means is what it says."""
    try:
        values = list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]
    except Exception:  # an interval or another sweep of numbers: none of them a switch's
        values = [override.input_line.partition("=")[2]]
    takes = "true, false or null (the device's default)" if nullable else "true or false"
    for value in values:
        text = "null" if value is None else str(value)
        if isinstance(value, bool) or "${" in text or text.lower() in ("true", "false") or (value is None and nullable):
            continue
        typed = override.input_line.partition("=")[2] if not override.is_sweep_override() else text
        raise ConfigError(f"{key}={typed} is not allowed; {key} takes {takes}")


def _check_tracker_key(key: str, parsed) -> None:
    """``logger.TRACKER.KEY=V`` names a tracker's option (conf/logger/TRACKER.yaml), and only a
    tracker the command chooses has options to set (Hydra says "not in struct")."""
    trackers = group_options("logger")
    tracker, _, option = key.partition(".")[2].partition(".")
    if tracker not in trackers:
        raise ConfigError(f"{key}: {tracker} is not a tracker{_nearest(tracker, trackers)}; choose from: {', '.join(trackers)}")
    options = list(OmegaConf.load(CONF_DIR / "logger" / f"{tracker}.yaml") or {})
    if option.split(".")[0] not in options:
        raise ConfigError(f"{key} is not an option of the {tracker} tracker{_nearest(option, options, f'logger.{tracker}')}; "
                          f"its options are: {', '.join(options) or 'none'}")
    chosen = " ".join(o.input_line or "" for o in parsed if o.key_or_group == "logger")
    if not re.search(rf"\b{tracker}\b", chosen or default_choice("logger") or "csv"):
        raise ConfigError(f"{key} sets an option of the {tracker} tracker, which this command does not choose: "
                          f"add logger={tracker} (several: 'logger=[tensorboard,mlflow]')")


def check_hydra_keys(overrides: list[str]) -> None:
    """``hydra.KEY=V`` overrides must name a key of Hydra's config: ``hydra.run.dri=D`` gets
    cnnbench's message and the nearest key, where Hydra prints its object types. Hydra's own keys
    are checked against its schema (no composition: most commands set hydra.run.dir); the
    launcher's and sweeper's, against the plugins the command and its recipes chose (composed
    once, a sweep's first job). ``+hydra...`` adds a key and is left alone."""
    given = [o.partition("=")[0] for o in overrides if o.startswith("hydra.") and "=" in o]
    chosen = None
    for key in given:
        if key.split(".")[1] in ("launcher", "sweeper"):
            if chosen is None:
                chosen = _first_job_with_hydra(overrides)
            if chosen is not False:
                _check_hydra_key(chosen, key)
        else:
            _check_hydra_key(_hydra_schema(), key)


@functools.lru_cache(maxsize=1)
def _hydra_schema() -> DictConfig:
    from hydra.conf import HydraConf

    schema = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    OmegaConf.set_struct(schema, True)
    return schema


def _first_job_with_hydra(overrides: list[str]) -> DictConfig | bool:
    """The config with its ``hydra`` node of a command's first job: a sweep's swept groups at
    their first value, its swept keys left out. False where it does not compose (Hydra says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        first = []
        for override in OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("hydra.")]):
            if not override.is_sweep_override():
                first.append(override.input_line)
            elif override.key_or_group in GROUPS or "/" in override.key_or_group:
                first.append(f"{override.key_or_group}={sweep_values(override)[0]}")
        return compose(*first, hydra=True)
    except Exception:  # noqa: BLE001
        return False


def _check_hydra_key(root: DictConfig, key: str) -> None:
    node, path = root, []
    for part in key.split("."):
        if not isinstance(node, DictConfig) or node._is_none() or node._is_missing() or not OmegaConf.is_struct(node):
            return  # a value, an empty or unset node, an open dict: any key may go there
        if path == ["hydra", "sweeper", "params"] or (path and node._metadata.object_type is dict):
            return  # a mapping (env_set; params, whose keys hold dots): Hydra judges its keys
        options = [str(k) for k in node.keys()]  # `in` would miss a key whose value is unset (???)
        if part not in options:
            where = ".".join(path)
            raise ConfigError(f"{key} is not a key of Hydra's config{_nearest(part, options, where)}; "
                              f"the keys of {where} are: {', '.join(options)}")
        node, path = node._get_node(part), path + [part]


# Keys that depend on the choice of model or optimizer: Hydra knows them only once it has composed.
CHOICE_KEY = re.compile(r"(model|optimizer)\.\w[\w.]*=")


def set_or_add(overrides: list[str]) -> list[str]:
    """``model.KNOB=V`` and ``optimizer.ARG=V`` as ``++`` (set, or add where the chosen model or
    optimizer has no such key), to check a composition: cnnbench's checks then name an unknown
    knob or argument and what is allowed, where Hydra says only that the key is not in struct."""
    return [f"++{o}" if CHOICE_KEY.match(o) else o for o in overrides]


def check_choice_keys(overrides: list[str]) -> None:
    """A single run's ``model.KNOB`` and ``optimizer.ARG`` overrides, checked against the chosen
    model's knobs and optimizer's arguments before Hydra composes (``model=vgg11
    model.widht=0.5``). Whatever else is wrong is left to Hydra's composition and ``validate``."""
    if not any(CHOICE_KEY.match(o) for o in overrides):
        return
    try:
        cfg = compose(*set_or_add([o for o in overrides if not o.lstrip("+~").startswith("hydra")]))
        check_knobs(cfg.model.name, model_knobs(cfg))
        _validate_optimizer(cfg)
    except (ConfigError, ModelError) as err:
        raise ConfigError(str(err)) from None
    except Exception:  # a value that resolves only in a run (${hydra:...}), or worse: Hydra and the run say
        return


def multirun_requested(args: list[str]) -> bool:
    """Whether the command is a multirun: ``-m``, ``hydra.mode=MULTIRUN``, or a recipe that sets
    that mode (read from its file: Hydra has not composed yet)."""
    if "-m" in args or "--multirun" in args:
        return True
    if any(a.lstrip("+~").partition("=")[0] == "hydra.mode" and a.partition("=")[2].endswith("MULTIRUN") for a in args):
        return True  # hydra.mode=MULTIRUN, ++hydra.mode=RunMode.MULTIRUN
    for arg in args:
        key, _, name = arg.lstrip("+").partition("=")
        if key == "experiment" and (CONF_DIR / "experiment" / f"{name}.yaml").is_file():
            recipe = OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml")
            if OmegaConf.select(recipe, "hydra.mode") == "MULTIRUN":
                return True
    return False


def one_value_sweeps(overrides: list[str]) -> list[str]:
    """A multirun's ``model.KNOB=V`` and ``optimizer.ARG=V`` as one-value sweeps,
    ``model.KNOB=choice(V)``. Hydra composes a multirun's first config without its sweeps, so with
    the default model: ``-m model=vgg11,vgg13 model.width=0.25`` failed there, bn_lenet having no
    width. A sweep is set in each job's composition instead, and a recipe's own sweep of the same
    key gives way to it, as to any command-line value (``++`` would make them two axes: it is the
    fallback only for a value a sweep cannot carry as typed, such as null or a quoted '0.25')."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, out = OverridesParser.create(), []
    for arg in overrides:
        if CHOICE_KEY.match(arg):
            try:
                override = parser.parse_override(arg)
            except Exception:  # malformed as typed: Hydra's error quotes it so
                out.append(arg)
                continue
            try:
                if not override.is_sweep_override():
                    single = f"{override.get_key_element()}=choice({override.get_value_element_as_str()})"
                    # the job gets the value back as text: keep the rewrite only where that text means the same
                    # (null cannot be a choice; a quoted '0.25' or 'true' would come back a number or a bool)
                    job_text = next(parser.parse_override(single).sweep_string_iterator())
                    same = parser.parse_override(f"{override.get_key_element()}={job_text}").value() == override.value()
                    arg = single if same else f"++{arg}"
            except Exception:  # null cannot be a choice: set or add (results.csv and reports drop the ++)
                arg = f"++{arg}"
        out.append(arg)
    return out


def _axes(overrides: list[str], params: dict | None, ends: bool = False) -> dict[str, list[str]]:
    """Each key of a multirun's command-line overrides and ``hydra.sweeper.params`` with its
    values as overrides, in the order Hydra's basic sweeper numbers them: its params first, then
    the command line's, a key given again keeping its first place with its last values (the
    command line wins). A search's interval is no list of values (an error), or with ``ends``
    its two ends."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    axes: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)):
        element = o.get_key_element()
        swept = o.value() if o.is_sweep_override() else None
        if isinstance(swept, IntervalSweep) and ends:  # a search's (Optuna's) continuous range: its ends stand for it
            values = [str(swept.start), str(swept.end)]
        else:
            values = sweep_values(o)
        axes[element] = [f"{element}={v}" for v in values]
    return axes


def sweep_jobs(overrides: list[str], params: dict | None) -> list[list[str]]:
    """The jobs (override lists) Hydra's basic sweeper makes of a multirun's command-line
    overrides and ``hydra.sweeper.params``, numbered as it numbers them, the first axis varying
    slowest."""
    import itertools

    return [list(job) for job in itertools.product(*_axes(overrides, params).values())]


def search_probes(overrides: list[str], params: dict | None) -> list[list[str]]:
    """Configs that stand for a search's trials before any runs (Optuna draws them one by one):
    every searched key at each of its choices and at both ends of its interval, one key at a
    time, the others at their first value. A setting no trial could run with is found up front."""
    axes = list(_axes(overrides, params, ends=True).values())
    first = [values[0] for values in axes]
    return [first] + [first[:i] + [value] + first[i + 1:] for i, values in enumerate(axes) for value in values[1:]]


def _reasons(jobs: list[list[str]]) -> dict[str, list[int]]:
    """What is wrong with each job that composes or validates badly: each reason once, with the
    jobs it refuses."""
    reasons: dict[str, list[int]] = {}
    for number, job in enumerate(jobs):
        try:
            validate(compose_checked(*set_or_add(job)))
        except ConfigError as err:
            reasons.setdefault(str(err), []).append(number)
        except Exception as err:  # Hydra's composition errors name the key
            reasons.setdefault(str(err).splitlines()[0], []).append(number)
    return reasons


def validate_sweep(overrides: list[str], params: dict | None) -> None:
    """Compose and check every job of a sweep before any is launched; one ConfigError lists
    every bad job, each reason once (a typo shared by 96 jobs is one line naming their numbers)."""
    check_recipes_swept_together(overrides)
    jobs = sweep_jobs(overrides, params)
    if reasons := _reasons(jobs):
        bad = sum(len(numbers) for numbers in reasons.values())
        lines = [f"job {numbers[0]} ({' '.join(jobs[numbers[0]])}): {reason}" if len(numbers) == 1
                 else f"{'all jobs' if len(numbers) == len(jobs) else 'jobs ' + number_ranges(numbers)}: {reason}"
                 for reason, numbers in reasons.items()]
        raise ConfigError(f"{bad} of the sweep's {len(jobs)} jobs {'is' if bad == 1 else 'are'} not valid, so none was started:\n  "
                          + "\n  ".join(lines))


def validate_search(overrides: list[str], params: dict | None, trials) -> None:
    """A search's settings checked before its first trial: the number of trials, and the
    command's overrides with each searched key at its choices and interval ends (``search_probes``).
    One ConfigError says every reason once."""
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={trials} is not allowed; a search runs a whole number of trials, 1 or more")
    if reasons := _reasons(search_probes(overrides, params)):
        raise ConfigError("the search's settings are not valid, so no trial was started:\n  " + "\n  ".join(reasons))


def number_ranges(numbers: list[int]) -> str:
    """Ascending job numbers, runs of them as ranges: [0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def check_recipes_swept_together(overrides: list[str]) -> None:
    """``-m experiment=A,B`` runs one job per recipe, composed with Hydra's sweeper settings of
    the command, not the recipes': a recipe that is a sweep itself (``ex_bn_lr``: rates with and
    without batch norm) would run once, its own axes silently dropped. Refused, naming them."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - a malformed override: the jobs' own check says what is wrong
        return
    for override in parsed:
        if override.key_or_group != "experiment" or not override.is_sweep_override():
            continue
        recipes = list(dict.fromkeys(sweep_values(override)))
        if len(recipes) < 2:
            return
        axes = {r: dict(OmegaConf.select(compose(f"experiment={r}", hydra=True), "hydra.sweeper.params") or {}) for r in recipes}
        sweeps = {r: a for r, a in axes.items() if a}
        if sweeps:
            named = "; ".join(f"{r} sweeps {', '.join(f'{k}={v}' for k, v in a.items())}" for r, a in sweeps.items())
            raise ConfigError(f"experiment={','.join(recipes)}: {named}. A sweep over recipes runs each recipe once and "
                              f"would drop those axes: run {'it' if len(sweeps) == 1 else 'each'} on its own "
                              f"(cnnbench experiment={next(iter(sweeps))})")


def check_known_keys(cfg: DictConfig) -> None:
    """No key outside the schema in its sections or at the top level (an experiment or a `+`
    override could add one)."""
    fields = {f.name for f in dataclasses.fields(Config)}
    for key in cfg:
        if key not in fields:
            raise ConfigError(f"{key} is not a top-level key{_nearest(str(key), fields)}; the keys are: {', '.join(sorted(fields))}")
    for section, schema in SECTIONS.items():
        known = [f.name for f in dataclasses.fields(schema)]
        for key in cfg.get(section, {}):
            if key not in known:
                raise ConfigError(f"{section}.{key} is not a key of {section}{_nearest(str(key), known, section)}; "
                                  f"its keys are: {', '.join(known)}")


def validate(cfg: DictConfig) -> None:
    """Everything that can be checked without data: raises ConfigError naming key and value.
    The settings first, then the paths the run will read (the checkpoint to resume, data.root)."""
    _validate_settings(cfg)
    if cfg.trainer.resume:
        from .engine import checkpoint_path  # engine imports this module

        checkpoint_path(cfg.trainer.resume, evaluate=enum_value(cfg.task) == "evaluate")
    if cfg.data.root is not None and enum_value(cfg.task) in ("train", "evaluate", "bench"):  # summary and min_size read none
        try:
            data.check_root(cfg.data.root)
        except data.DataError as err:
            raise ConfigError(str(err)) from None


def _validate_settings(cfg: DictConfig) -> None:
    check_known_keys(cfg)
    for key, what in (("trainer.resume", "a run dir or a .pt file"), ("data.root", "the dataset's folder")):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, str) and not value.strip():  # `key=` reads as ''
            raise ConfigError(f"{key}= is empty; give {what}, or leave {key} out (null)")
    if enum_value(cfg.task) == "evaluate" and not cfg.trainer.resume:
        raise ConfigError("task=evaluate needs a checkpoint: trainer.resume=RUN_DIR (its last.pt, else best.pt) or a .pt file")
    if "name" not in cfg.model:
        raise ConfigError("model.name is missing; choose a model with model=NAME")
    name = cfg.model.name
    try:
        knobs = check_knobs(name, model_knobs(cfg))
    except ModelError as err:
        raise ConfigError(str(err)) from None

    for key, bounds in RANGES.items():
        value = OmegaConf.select(cfg, key)
        for item in (value if isinstance(value, (list, ListConfig)) else [value]):
            if item is not None and item not in bounds:
                many = isinstance(value, (list, ListConfig))
                shown = list(value) if many else value
                raise ConfigError(f"{key}={shown!r} is not allowed; {'every item' if many else 'it'} must be in "
                                  f"{bounds}{RANGE_NOTES.get(key, '')}")
    if not cfg.bench.batch_sizes:
        raise ConfigError("bench.batch_sizes=[] is not allowed; give a list of positive integers")
    device = cfg.trainer.device
    if device not in ("auto", "cpu") and not str(device).startswith("cuda"):
        raise ConfigError(f"trainer.device={device!r} is not allowed; choose auto, cpu, cuda or cuda:N")

    _validate_optimizer(cfg)
    lr, min_lr = cfg.optimizer.get("lr"), cfg.scheduler.min_lr
    if enum_value(cfg.scheduler.name) == "cosine" and min_lr > lr:
        raise ConfigError(f"scheduler.min_lr={min_lr!r} is not allowed with optimizer.lr={lr!r}: the cosine schedule "
                          "decays from optimizer.lr to scheduler.min_lr, so it must be at most the learning rate")
    if problem := config_problem(cfg.get("logger")):
        raise ConfigError(problem)
    task = enum_value(cfg.task)
    objectives = OBJECTIVES[task]
    default = cfg.objective == Config.objective and task != "train"  # the default is training's; other tasks ignore it
    if cfg.objective not in objectives and not default:
        raise ConfigError(f"objective={cfg.objective} is not a number a task={task} run reports{_nearest(cfg.objective, objectives)}; "
                          f"choose one of: {', '.join(objectives)}")

    world = distributed.from_env()
    if world.distributed:
        if cfg.task != Task.train:
            raise ConfigError(f"task={enum_value(cfg.task)} runs in one process; only task=train runs under torchrun")
        if str(device).startswith("cuda:"):
            raise ConfigError(f"trainer.device={device!r} is not allowed under torchrun: each rank takes the GPU of its "
                              "local rank; use trainer.device=auto or cuda (and CUDA_VISIBLE_DEVICES to choose the GPUs)")
        if cfg.data.batch_size % world.size:
            raise ConfigError(f"data.batch_size={cfg.data.batch_size} is the global batch and must divide evenly "
                              f"over the {world.size} processes of this torchrun launch")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device!r}: CUDA is not available on this machine; use auto or cpu")

    h, w = resolution(cfg)
    if cfg.task == Task.min_size:  # it searches the sizes itself
        return
    batches = {"data.batch_size": cfg.data.batch_size, "data.test_batch_size": cfg.data.test_batch_size}
    if cfg.task == Task.bench:
        batches["bench.batch_sizes"] = max(cfg.bench.batch_sizes)
    key, batch = max(batches.items(), key=lambda kv: kv[1])
    need, have = batch * h * w * 4, total_memory(device)
    if have and need > have:  # absurd sizes are refused here, before anything is allocated
        raise ConfigError(f"data.resize={cfg.data.resize} ({h}x{w}) with {key}={batch} needs {need / 2**30:.1f} GiB "
                          f"for one fp32 input batch alone; this device has {have / 2**30:.1f} GiB: choose a smaller "
                          f"data.resize or {key}")
    try:
        if not accepts_input(name, (h, w), **knobs):
            smallest = min_input_size(name, **knobs)
            raise ConfigError(
                f"data.resize={cfg.data.resize if cfg.data.resize is not None else h} ({h}x{w}) is too small for "
                f"model {name}: the smallest input it accepts is {smallest}x{smallest}"
            )
    except ModelError as err:
        raise ConfigError(str(err)) from None


def total_memory(device: str) -> int:
    """Bytes of memory the run's device has (0 when unknown)."""
    if str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        index = int(str(device).partition(":")[2] or 0)
        return torch.cuda.get_device_properties(index).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def _validate_optimizer(cfg: DictConfig) -> None:
    cls = optimizer_class(cfg)
    params = inspect.signature(cls.__init__).parameters
    for key, value in cfg.optimizer.items():
        if key == "_target_":
            continue
        if key not in params or key in ("self", "params"):
            allowed = [k for k in params if k not in ("self", "params")]
            raise ConfigError(f"optimizer.{key} is not an argument of {cls.__name__}{_nearest(key, allowed, 'optimizer')}; "
                              f"allowed: {', '.join(allowed)}")
        default = params[key].default
        number = isinstance(default, (int, float)) and not isinstance(default, bool)
        if number and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise ConfigError(f"optimizer.{key}={value!r} is not allowed; {cls.__name__} takes a finite number")
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"optimizer.{key}={value!r} is not allowed; {cls.__name__} takes true or false")
    lr = cfg.optimizer.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ConfigError(f"optimizer.lr={lr!r} is not allowed; the learning rate must be a positive number")
    momentum = cfg.optimizer.get("momentum")
    if isinstance(momentum, (int, float)) and not isinstance(momentum, bool) and momentum >= 1:
        # torch checks only momentum >= 0; at 1 or more the velocity never decays and the steps grow without bound
        raise ConfigError(f"optimizer.momentum={momentum!r} is not allowed; momentum must be in [0, 1) (0.9 is usual)")
    try:  # the optimizer's own checks (momentum >= 0, betas in [0, 1), ...) on a stand-in parameter
        instantiate(cfg.optimizer, params=[torch.nn.Parameter(torch.zeros(1))])
    except Exception as err:
        cause = err.__cause__ or err
        raise ConfigError(f"optimizer: {cls.__name__} rejects its arguments: {cause}") from None
