"""The ``cnnbench`` command: compose the config, check it, run the task, write the run's files.

``main`` is the Hydra entry point (it returns the metric a sweeper optimises); ``run``
does the work and can be called from Python with a composed config.
"""
from __future__ import annotations

import atexit
import gc
import json
import logging
import math
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from . import confusion, data, distributed, loggers
from .analysis import TASKS, describe
from .config import ConfigError, register_configs, validate
from .data import build_loaders
from .engine import (
    Diverged,
    StopFlag,
    build_trainer,
    fit,
    load_checkpoint,
    restore,
    save_checkpoint,
    save_weights,
)
from .metrics import MetricsWriter, plot_curves, write_json

log = logging.getLogger("cnnbench")


def _conf_dir() -> Path:
    """conf/ sits beside the package in a checkout (and editable installs); a wheel carries
    it inside the package as cnnbench/conf."""
    here = Path(__file__).resolve().parent
    packaged = here / "conf"
    return packaged if packaged.is_dir() else here.parent / "conf"


CONF_DIR = _conf_dir()
EXIT_CODES = {"completed": 0, "failed": 1, "diverged": 3, "oom": 4, "interrupted": 130}
BAD_INPUT_EXIT = 2


def run(cfg: DictConfig, out_dir: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Run ``cfg.task`` for one configuration, writing its files and summary.json into
    ``out_dir``. Never raises for a failed run (bar Ctrl-C): the returned summary's
    ``status`` and ``error`` say what happened."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "task": _value(cfg.task),
        "model": cfg.model.get("name"),
        "status": "running",
        "seed": cfg.seed,
        "overrides": list(overrides),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    try:
        validate(cfg)
        task = train if summary["task"] == "train" else TASKS[summary["task"]]
        task(cfg, out_dir, summary)
        summary["status"] = "completed"
    except (ConfigError, data.DataError) as err:
        summary |= {"status": "failed", "error": str(err), "bad_input": True}
    except Diverged as err:
        summary |= {"status": "diverged", "error": str(err)}
    except (torch.OutOfMemoryError, MemoryError) as err:
        summary |= {"status": "oom", "error": _first_line(err)}
    except KeyboardInterrupt as err:  # Ctrl-C, or engine.Interrupted after SIGINT/SIGTERM
        how = str(err) or "stopped by SIGINT"
        resumable = (out_dir / "last.pt").exists() and summary["task"] == "train"
        summary |= {"status": "interrupted", "error": how + (f"; resume with the same overrides and hydra.run.dir={out_dir} trainer.resume={out_dir}" if resumable else "")}
        raise
    except Exception as err:
        log.exception("run failed")
        summary |= {"status": "failed", "error": f"{type(err).__name__}: {_first_line(err)}"}
    finally:
        summary["wall_time_s"] = time.perf_counter() - started
        write_json(out_dir / "summary.json", summary)
        loggers.finish(out_dir, summary["status"])  # the trackers get the final summary.json and status
        if summary["status"] != "completed":
            log.error("run %s: %s", summary["status"], summary.get("error", ""))
        # Free the device before the next job of a sweep (after an OOM above all).
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return summary


def train(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> None:
    """task=train: fit, evaluating every epoch; metrics.csv, curves.png, checkpoints."""
    distributed.init(cfg.trainer.device)  # under torchrun: join the other ranks
    device, size, knobs = describe(cfg, summary)
    meta = {"model": cfg.model.name, "knobs": knobs, "resolution": list(size), "batch_size": cfg.data.batch_size}
    resume, state = find_checkpoint(cfg.trainer.resume, meta) if cfg.trainer.resume else (None, None)
    write_json(out_dir / "summary.json", summary)
    train_split, test_split = data.load(cfg.data.root, cfg.data.download)
    train_loader, test_loader = build_loaders(cfg, train_split, test_split, size, device)
    trainer = build_trainer(cfg, device, size, knobs, len(train_loader))
    start_epoch, partial = 1, None
    if resume:
        restore(state, trainer, train_loader)
        start_epoch, partial = state["epoch"] + 1, state["partial"]
        summary["resumed_from"] = {"checkpoint": str(resume), "epochs_done": state["epoch"],
                                   "steps_into_next_epoch": partial["batches_done"] if partial else 0}
        log.info("resuming from %s: %d epochs done%s", resume, state["epoch"],
                 f", {partial['batches_done']} steps into the next" if partial else "")
    log.info(
        "%s: %s params, %.3g GFLOPs/image at %dx%d, %d training images, batch %d, on %s",
        cfg.model.name, f"{summary['params']:,}", summary["flops"] / 1e9, *size,
        train_loader.num_samples, cfg.data.batch_size, device,
    )
    # A resumed run continues its metrics.csv from the checkpoint's epoch (later rows dropped).
    writer = MetricsWriter(out_dir / "metrics.csv", keep_epochs=start_epoch - 1 if resume else None)
    trackers = loggers.start(cfg, out_dir, resumed=resume is not None)  # logger=...: finished by run()
    stop = StopFlag()

    def on_epoch(row: dict[str, float]) -> None:
        best_before = summary.get("best_test_acc")
        writer.write(row)
        trackers.log_epoch(row)
        summary.update(_results(writer.rows))
        log.info(
            "epoch %d/%d  train_loss %.4f  train_acc %.4f  test_loss %.4f  test_acc %.4f  lr %.3g  %.1fs  %.0f img/s",
            row["epoch"], cfg.trainer.max_epochs, row["train_loss"], row["train_acc"], row["test_loss"],
            row["test_acc"], row["lr"], row["epoch_time_s"], row["train_images_per_s"],
        )
        if cfg.trainer.save_best and summary["best_test_acc"] != best_before:
            save_weights(out_dir / "best.pt", trainer, meta | {"epoch": row["epoch"], "test_acc": row["test_acc"]})

    def checkpoint(epochs_done: int, cut: dict | None) -> None:
        # every epoch when asked to; always when a signal stops the run, so it can resume
        if cfg.trainer.checkpoint or cut is not None or stop:
            save_checkpoint(out_dir / "last.pt", trainer, train_loader, epochs_done, cut, meta)

    summary.update(_results(writer.rows))
    try:
        with stop.installed():
            fit(trainer, train_loader, test_loader, cfg.trainer.max_epochs, on_epoch, checkpoint,
                start_epoch=start_epoch, partial=partial, stop=stop, diverge_loss=cfg.trainer.diverge_loss)
        confusion.after_training(trainer, test_loader, out_dir, summary, cfg.model.name)  # per_class.csv, confusion.png, ...
    finally:
        writer.close()
        if writer.rows and cfg.trainer.plot:
            try:
                h, w = size
                title = (f"{cfg.model.name}, {h}x{w} px, batch {cfg.data.batch_size}, "
                         f"{cfg.optimizer._target_.rsplit('.', 1)[-1]} lr {cfg.optimizer.lr:g}, seed {cfg.seed}")
                plot_curves(writer.rows, out_dir / "curves.png", title)
            except Exception as err:  # a plot must never cost the run its status
                log.warning("could not plot the learning curves: %s", err)


def find_checkpoint(resume: str, meta: dict) -> tuple[Path, dict]:
    """The checkpoint ``trainer.resume`` names (a run dir or a .pt file) and its state, checked
    against this run's model before anything is trained."""
    path = Path(resume).expanduser()
    path = path / "last.pt" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(f"trainer.resume={resume!r}: no checkpoint at {path} (a run dir with last.pt, or a .pt file)")
    try:
        state = load_checkpoint(path)
        theirs = state["meta"]
    except Exception as err:
        raise ConfigError(f"trainer.resume={resume!r}: {path} is not a readable cnnbench checkpoint ({_first_line(err)})") from None
    for key in ("model", "knobs", "resolution", "batch_size"):
        if theirs.get(key) != meta[key]:
            raise ConfigError(
                f"trainer.resume={resume!r}: the checkpoint is of {key}={theirs.get(key)!r}, this run has "
                f"{key}={meta[key]!r}; resume with the overrides of the run that wrote it"
            )
    return path, state


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _value(option: Any) -> Any:
    return getattr(option, "value", option)


def _results(rows: list[dict[str, float]]) -> dict[str, Any]:
    accs = [r["test_acc"] for r in rows if not math.isnan(r["test_acc"])]
    return {
        "epochs_completed": len(rows),
        "final_test_acc": rows[-1]["test_acc"] if rows else None,
        "best_test_acc": max(accs) if accs else None,
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
        "peak_mem_mb": max(r["peak_mem_mb"] for r in rows) if rows else None,
    }


register_configs()


def main() -> None:
    """The ``cnnbench`` command. Under torchrun, ranks other than 0 run in a temporary dir with
    Hydra's logging off: rank 0 alone writes the run dir and logs."""
    world = distributed.from_env()
    if not world.main:
        scratch = tempfile.mkdtemp(prefix=f"cnnbench-rank{world.rank}-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null",
                     "hydra.job_logging.root.level=WARNING", "hydra/hydra_logging=disabled"]
    try:
        hydra_main()
    finally:
        distributed.shutdown()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    out_dir = Path(hydra_cfg.runtime.output_dir)
    if multirun and "LocalLauncher" in str(hydra_cfg.launcher.get("_target_", "")):
        _one_gpu_per_job(cfg, hydra_cfg.job.num)  # first: an earlier run's summary records the device
    before = previous_run(cfg, out_dir) if multirun else None
    if before and before["status"] == "completed":  # re-running a sweep into its dir: kept, not run again
        log.info("job %s already completed in %s: skipped", hydra_cfg.job.num, out_dir)
        return _metric(before, cfg.objective)
    if before and before["status"] == "interrupted" and (out_dir / "last.pt").is_file():
        # a requeued (preempted, timed-out) or re-run job continues from its checkpoint
        log.info("job %s was interrupted in %s: resuming from its last.pt", hydra_cfg.job.num, out_dir)
        with open_dict(cfg):
            cfg.trainer.resume = str(out_dir)
    try:
        summary = run(cfg, out_dir, hydra_cfg.overrides.task)
    except KeyboardInterrupt as err:  # stops a sweep too: the user or the cluster asked
        signum = getattr(err, "signum", signal.SIGINT)
        handler = signal.getsignal(signal.SIGUSR2)
        if signum == signal.SIGUSR2 and callable(handler):
            handler(signum, None)  # submitit's: requeue this job (it resumes from last.pt) and exit
        sys.exit(128 + signum)  # 130 for SIGINT, 143 for SIGTERM
    status = summary["status"]
    if status != "completed":  # run() has logged why
        # A sweep goes on with its other jobs; a single run exits non-zero.
        if not multirun:
            sys.exit(BAD_INPUT_EXIT if summary.get("bad_input") else EXIT_CODES[status])
    return _metric(summary, cfg.objective)


def _one_gpu_per_job(cfg: DictConfig, job_num: int) -> None:
    """Jobs running side by side on one machine (hydra/launcher=local_parallel): with
    trainer.device=auto, job N takes GPU N mod the number of GPUs."""
    count = torch.cuda.device_count()
    if cfg.trainer.device == "auto" and count > 1:
        with open_dict(cfg):
            cfg.trainer.device = f"cuda:{job_num % count}"


def previous_run(cfg: DictConfig, out_dir: Path) -> dict | None:
    """The summary of an earlier run of this very config in ``out_dir``, if there is one
    (``trainer.resume``, which a resumed run sets, does not count as a difference)."""
    try:
        summary = json.loads((out_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    ours = OmegaConf.to_container(cfg, resolve=True)
    theirs = summary.get("config") or {}
    for config in (ours, theirs):
        config.get("trainer", {}).pop("resume", None)
    return summary if ours == theirs else None


def _metric(summary: dict, objective: str) -> float:
    """What a sweeper optimises: the summary's ``objective`` field (NaN when it has none)."""
    value = summary.get(objective)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


if __name__ == "__main__":
    main()
