"""The ``cnnbench`` command: compose the config, check it, train, write the run's files.

``main`` is the Hydra entry point (it returns the metric a sweeper optimises); ``run``
does the work and can be called from Python with a composed config.
"""
from __future__ import annotations

import gc
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import data
from .analysis import count_flops, count_params
from .config import ConfigError, model_knobs, register_configs, resolution, validate
from .engine import Diverged, Trainer, autocast_dtype, build_scheduler, fit, resolve_device
from .metrics import MetricsWriter, environment, plot_curves, write_json
from .models import create_model

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
    """Train one configuration and write metrics.csv, summary.json and curves.png into
    ``out_dir``. Never raises for a failed run (bar Ctrl-C): the returned summary's
    ``status`` and ``error`` say what happened."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    summary: dict[str, Any] = {
        "model": cfg.model.get("name"),
        "status": "running",
        "seed": cfg.seed,
        "overrides": list(overrides),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    summary_path = out_dir / "summary.json"
    writer: MetricsWriter | None = None
    try:
        validate(cfg)
        device = resolve_device(cfg.trainer.device)
        size = resolution(cfg)
        knobs = model_knobs(cfg)
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model.name, image_size=size, **knobs)
        summary |= {
            "resolution": list(size),
            "params": count_params(model),
            "flops": count_flops(cfg.model.name, size, **knobs),
            **environment(device),
        }
        write_json(summary_path, summary)

        train_split, test_split = data.load(cfg.data.root, cfg.data.download)
        train_loader, test_loader = build_loaders(cfg, train_split, test_split, size, device)
        model.to(device)
        if cfg.trainer.channels_last:
            model.to(memory_format=torch.channels_last)
        optimizer = instantiate(cfg.optimizer, params=model.parameters())
        scheduler, per_batch = build_scheduler(cfg.scheduler, optimizer, cfg.trainer.max_epochs, len(train_loader))
        trainer = Trainer(
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
        writer = MetricsWriter(out_dir / "metrics.csv")
        log.info(
            "%s: %s params, %.3g GFLOPs/image at %dx%d, %d training images, batch %d, on %s",
            cfg.model.name, f"{summary['params']:,}", summary["flops"] / 1e9, *size,
            train_loader.num_samples, cfg.data.batch_size, device,
        )

        def on_epoch(row: dict[str, float]) -> None:
            writer.write(row)
            log.info(
                "epoch %d/%d  train_loss %.4f  train_acc %.4f  test_loss %.4f  test_acc %.4f  lr %.3g  %.1fs  %.0f img/s",
                row["epoch"], cfg.trainer.max_epochs, row["train_loss"], row["train_acc"], row["test_loss"],
                row["test_acc"], row["lr"], row["epoch_time_s"], row["train_images_per_s"],
            )

        fit(trainer, train_loader, test_loader, cfg.trainer.max_epochs, on_epoch)
        summary["status"] = "completed"
    except (ConfigError, data.DataError) as err:
        summary |= {"status": "failed", "error": str(err), "bad_input": True}
    except Diverged as err:
        summary |= {"status": "diverged", "error": str(err)}
    except (torch.OutOfMemoryError, MemoryError) as err:
        summary |= {"status": "oom", "error": _first_line(err)}
    except KeyboardInterrupt:
        summary |= {"status": "interrupted", "error": "interrupted by the user (SIGINT)"}
        raise
    except Exception as err:
        log.exception("run failed")
        summary |= {"status": "failed", "error": f"{type(err).__name__}: {_first_line(err)}"}
    finally:
        rows = writer.rows if writer else []
        if writer:
            writer.close()
        summary |= _results(rows, time.perf_counter() - started)
        write_json(summary_path, summary)
        if rows and cfg.trainer.plot:
            try:
                h, w = summary["resolution"]
                title = (f"{cfg.model.name}, {h}x{w} px, batch {cfg.data.batch_size}, "
                         f"{cfg.optimizer._target_.rsplit('.', 1)[-1]} lr {cfg.optimizer.lr:g}, seed {cfg.seed}")
                plot_curves(rows, out_dir / "curves.png", title)
            except Exception as err:  # a plot must never cost the run its status
                log.warning("could not plot the learning curves: %s", err)
        if summary["status"] != "completed":
            log.error("run %s: %s", summary["status"], summary.get("error", ""))
        # Free the device before the next job of a sweep (after an OOM above all).
        model = optimizer = trainer = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return summary


def build_loaders(cfg: DictConfig, train: data.Split, test: data.Split, size, device: torch.device):
    if cfg.data.subset:
        train = data.Split(train.images[: cfg.data.subset], train.labels[: cfg.data.subset])
    if cfg.data.test_subset:
        test = data.Split(test.images[: cfg.data.test_subset], test.labels[: cfg.data.test_subset])
    mean = std = None
    if cfg.data.normalize:
        pixels = train.images.float().div_(255)
        mean, std = pixels.mean().item(), pixels.std().item()
    train, test = train.to(device), test.to(device)
    common = dict(size=size, mean=mean, std=std)
    train_loader = data.DeviceLoader(
        train, cfg.data.batch_size, shuffle=True, drop_last=cfg.data.drop_last, seed=cfg.seed,
        crop_padding=cfg.data.crop_padding, hflip=cfg.data.hflip, limit_batches=cfg.trainer.limit_train_batches,
        **common,
    )
    test_loader = data.DeviceLoader(
        test, cfg.data.test_batch_size or cfg.data.batch_size, limit_batches=cfg.trainer.limit_test_batches, **common
    )
    return train_loader, test_loader


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _results(rows: list[dict[str, float]], wall_time: float) -> dict[str, Any]:
    accs = [r["test_acc"] for r in rows if not math.isnan(r["test_acc"])]
    return {
        "epochs_completed": len(rows),
        "final_test_acc": rows[-1]["test_acc"] if rows else None,
        "best_test_acc": max(accs) if accs else None,
        "final_train_loss": rows[-1]["train_loss"] if rows else None,
        "peak_mem_mb": max(r["peak_mem_mb"] for r in rows) if rows else None,
        "wall_time_s": wall_time,
    }


register_configs()


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    try:
        summary = run(cfg, hydra_cfg.runtime.output_dir, hydra_cfg.overrides.task)
    except KeyboardInterrupt:
        sys.exit(EXIT_CODES["interrupted"])
    status = summary["status"]
    if status != "completed":  # run() has logged why
        # A sweep goes on with its other jobs; a single run exits non-zero.
        if hydra_cfg.mode != RunMode.MULTIRUN:
            sys.exit(BAD_INPUT_EXIT if summary.get("bad_input") else EXIT_CODES[status])
    best = summary.get("best_test_acc")
    return float("nan") if best is None else float(best)


if __name__ == "__main__":
    main()
