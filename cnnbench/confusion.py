"""What the network gets wrong: per-class accuracy, the confusion matrix and its most
confident mistakes on the test set.

One pass over the test set on the device, in batches like training: the confusion matrix is
counted there (``bincount(true * C + pred)``) and the most confidently misclassified images
are kept as a running top-k (``Tally``); both are read back once, at the end. A training run
writes these files when it ends, from its last epoch's evaluation (no pass of their own; under
torchrun, where each rank evaluates a share, rank 0 makes one); ``task=evaluate
trainer.resume=RUN_OR_PT`` writes them for any checkpoint:

- ``per_class.csv``: count, correct, accuracy and the class most often predicted instead;
- ``confusion.csv``: counts, rows the true class, columns the predicted one;
- ``confusion.png``: the matrix with rows normalised (colour) and counts (numbers);
- ``mistakes.png``: the most confidently misclassified test images, true and predicted labels.

summary.json gains ``per_class_acc``, ``worst_class`` and ``worst_class_acc``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from . import distributed
from .data import CLASSES, DeviceLoader, build_loaders, load
from .engine import autocast_dtype, load_weights, read_checkpoint, resolve_device, unwrap
from .metrics import environment, figure, save_figure, show, write_csv

log = logging.getLogger(__name__)

MISTAKES_SHOWN = 24  # images in mistakes.png (4 rows of 6)
FILES = ("per_class.csv", "confusion.csv", "confusion.png", "mistakes.png")


def class_names() -> list[str]:
    """Fashion-MNIST's class names (a constant: importing torchvision for them cost every run 0.3 s)."""
    return list(CLASSES)


@dataclass
class Errors:
    """The outcome of one pass: ``confusion[t, p]`` counts test images of class t predicted
    as p; ``mistakes`` are the most confident wrong predictions, most confident first."""

    confusion: torch.Tensor  # int64 [C, C], on the CPU
    mistake_images: torch.Tensor  # uint8 [K, H, W]: as the test split holds them (28 px, or the run's size when resized once)
    mistake_true: list[int]
    mistake_pred: list[int]
    mistake_confidence: list[float]  # the softmax probability of the wrong prediction

    @property
    def counts(self) -> torch.Tensor:
        return self.confusion.sum(dim=1)

    @property
    def per_class_acc(self) -> torch.Tensor:
        return self.confusion.diag().double() / self.counts.clamp(min=1).double()

    @property
    def accuracy(self) -> float:
        return self.confusion.diag().sum().item() / max(self.confusion.sum().item(), 1)


class Tally:
    """The confusion matrix and the running top-k of the most confident mistakes, counted on
    the device batch by batch (``add``), read back once (``errors``). Fed by ``analyse``, or by
    the last epoch's evaluation of a training run, which then needs no pass of its own."""

    def __init__(self, split, num_classes: int = 10, top: int = MISTAKES_SHOWN):
        self.split, self.num_classes, self.top = split, num_classes, top
        device = split.images.device
        self.confusion = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
        self.best_conf = torch.empty(0, device=device)  # the running top-k of wrong predictions
        self.best_idx = torch.empty(0, dtype=torch.long, device=device)
        self.best_pred = torch.empty(0, dtype=torch.long, device=device)
        self.seen = 0  # images counted, in the split's order

    @torch.no_grad()
    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        """The next batch of the split, in order (an unshuffled loader). No host sync and no
        shape that depends on the values: right answers enter the top-k with confidence -1, below
        any mistake, and ``errors`` drops them."""
        confidence, pred = logits.float().softmax(dim=1).max(dim=1)
        cells = y * self.num_classes + pred
        self.confusion.scatter_add_(0, cells, torch.ones_like(cells))  # bincount sizes its output from the values: a sync
        idx = torch.arange(self.seen, self.seen + len(y), device=y.device)
        conf = torch.cat([self.best_conf, torch.where(pred != y, confidence, -1.0)])
        best, preds = torch.cat([self.best_idx, idx]), torch.cat([self.best_pred, pred])
        keep = conf.topk(min(self.top, len(conf))).indices
        self.best_conf, self.best_idx, self.best_pred = conf[keep], best[keep], preds[keep]
        self.seen += len(y)

    def errors(self) -> Errors:
        """What was counted, on the CPU (the one host sync)."""
        confusion, best_conf, best_idx, best_pred = (t.cpu() for t in (self.confusion, self.best_conf, self.best_idx, self.best_pred))
        mistakes = best_conf >= 0
        best_conf, best_idx, best_pred = best_conf[mistakes], best_idx[mistakes], best_pred[mistakes]
        on_device = best_idx.to(self.split.images.device)
        return Errors(
            confusion=confusion.view(self.num_classes, self.num_classes),
            mistake_images=self.split.images[on_device].cpu(),
            mistake_true=self.split.labels[on_device].cpu().tolist(),
            mistake_pred=best_pred.tolist(),
            mistake_confidence=best_conf.tolist(),
        )


@torch.no_grad()
def analyse(model: torch.nn.Module, loader: DeviceLoader, amp_dtype: torch.dtype | None = None,
            channels_last: bool = False, num_classes: int = 10, top: int = MISTAKES_SHOWN) -> Errors:
    """Count the confusion matrix and keep the ``top`` most confident mistakes of ``model`` on
    ``loader`` (unshuffled, one process), all on the device; one host sync at the end."""
    model.eval()
    tally = Tally(loader.split, num_classes, top)
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            tally.add(model(x), y)
    return tally.errors()


def per_class_rows(errors: Errors, names: list[str]) -> list[dict[str, Any]]:
    rows = []
    for k, name in enumerate(names):
        off_diagonal = errors.confusion[k].clone()
        off_diagonal[k] = -1
        other = int(off_diagonal.argmax())
        rows.append({
            "class_index": k, "class": name, "count": int(errors.counts[k]), "correct": int(errors.confusion[k, k]),
            "accuracy": float(errors.per_class_acc[k]) if errors.counts[k] else None,  # no image: no accuracy (empty)
            "most_confused_with": names[other] if off_diagonal[other] > 0 else "",
            "confused_count": max(int(off_diagonal[other]), 0),
        })
    return rows


def write_outputs(errors: Errors, out_dir: Path, summary: dict[str, Any], title: str = "", plot: bool = True) -> list[Path]:
    """per_class.csv, confusion.csv, and unless ``plot`` is off confusion.png and mistakes.png;
    the per-class accuracies in ``summary``. A plot that fails is logged and skipped (the tables
    are written first)."""
    names = class_names()
    rows = per_class_rows(errors, names)
    write_csv(out_dir / "per_class.csv", rows)
    write_csv(out_dir / "confusion.csv", [{"true \\ predicted": name, **dict(zip(names, counts))}
                                          for name, counts in zip(names, errors.confusion.tolist())])
    present = [r for r in rows if r["count"]]
    worst = min(present, key=lambda r: r["accuracy"]) if present else None
    summary |= {
        "eval_images": int(errors.confusion.sum()),
        "eval_test_acc": errors.accuracy,
        "per_class_acc": {r["class"]: r["accuracy"] for r in present},
        "worst_class": worst["class"] if worst else None,
        "worst_class_acc": worst["accuracy"] if worst else None,
    }
    written = [out_dir / "per_class.csv", out_dir / "confusion.csv"]
    for draw, name in ((plot_confusion, "confusion.png"), (plot_mistakes, "mistakes.png")) if plot else ():
        try:
            written.append(draw(errors, names, out_dir / name, title))
        except Exception as err:  # a plot must never cost the run its status
            log.warning("could not plot %s: %s", name, err)
    return written


def plot_confusion(errors: Errors, names: list[str], path: Path, title: str = "") -> Path:
    """Rows normalised to the share of each true class (colour), with the counts written in."""
    counts = errors.confusion.numpy()
    shares = counts / counts.sum(axis=1, keepdims=True).clip(min=1)
    n = len(names)
    fig = figure(figsize=(9, 8))
    ax = fig.add_axes((0.2, 0.16, 0.68, 0.74))  # fixed margins for the class names: a layout engine costs a draw
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for t in range(n):
        for p in range(n):
            if counts[t, p]:
                ax.text(p, t, f"{counts[t, p]}", ha="center", va="center", fontsize=9,
                        color="white" if shares[t, p] > 0.6 else "black")
    ax.set_xticks(range(n), names, rotation=40, ha="right")
    ax.set_yticks(range(n), [f"{name} ({c})" for name, c in zip(names, counts.sum(axis=1))])
    ax.set(xlabel="predicted class", ylabel="true class (test images)")
    fig.colorbar(image, cax=fig.add_axes((0.9, 0.16, 0.02, 0.74)), label="share of the true class's images")
    total = counts.sum()
    ax.set_title(f"{title + ': ' if title else ''}confusion matrix, {errors.accuracy:.1%} of {total} test images correct\n"
                 "colour: share of each row; numbers: image counts")
    return save_figure(fig, path)


def plot_mistakes(errors: Errors, names: list[str], path: Path, title: str = "") -> Path:
    """The most confidently misclassified test images, at the size the test split holds them (28 px,
    or the run's size when resized once), with their labels: one sheet of tiles in a single axes
    (a grid of subplots costs a second to draw)."""
    import numpy as np
    from matplotlib import colormaps

    shown = len(errors.mistake_true)
    h, w = errors.mistake_images.shape[-2:] if shown else (28, 28)
    cols, gap, label = 6, max(3, w // 9), max(8, h * 2 // 7)  # tiles per row; pixels between tiles, above one for its label
    rows = max(1, -(-shown // cols))
    cell_w, cell_h = w + gap, label + h + gap
    sheet = np.full((rows * cell_h, cols * cell_w - gap), np.nan)  # NaN: the white background
    width = cols * 1.9
    fig = figure(figsize=(width, width * sheet.shape[0] / sheet.shape[1] + 0.5))
    ax = fig.add_axes((0.005, 0.0, 0.99, 1 - 0.5 / fig.get_figheight()))
    for i in range(shown):
        top, left = (i // cols) * cell_h + label, (i % cols) * cell_w
        sheet[top:top + h, left:left + w] = errors.mistake_images[i].numpy()
        ax.text(left + w / 2, top - 1, f"true: {names[errors.mistake_true[i]]}\npred: "
                f"{names[errors.mistake_pred[i]]} ({errors.mistake_confidence[i]:.0%})", ha="center", va="bottom", fontsize=8.5)
    ax.imshow(sheet, cmap=colormaps["gray_r"].with_extremes(bad="white"), vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if not shown:
        ax.text(0, cell_h / 2, "no test image was misclassified", fontsize=11)
    fig.suptitle(f"{title + ': ' if title else ''}the {shown} most confidently misclassified test images", y=0.995, va="top")
    return save_figure(fig, path)


def full_test_loader(loader: DeviceLoader) -> DeviceLoader:
    """The same test images and transform in one process: under torchrun a rank's loader
    holds only its share of each batch."""
    if loader.world_size == 1:
        return loader
    return DeviceLoader(loader.split, loader.batch_size, loader.size, mean=loader.mean, std=loader.std,
                        limit_batches=loader.limit_batches)


def final_tally(test_loader: DeviceLoader) -> Tally | None:
    """A Tally for the last epoch's evaluation to fill, where that evaluation sees the whole test
    loader (one process); None under torchrun, where each rank evaluates its share."""
    return Tally(test_loader.split) if test_loader.world_size == 1 else None


def after_training(trainer, test_loader: DeviceLoader, out_dir: Path, summary: dict[str, Any], title: str = "",
                   plot: bool = True, tally: Tally | None = None) -> None:
    """The end of a training run (rank 0): the per-class files of the final model, from the
    last evaluation's ``tally`` when it counted the whole test loader, else from a pass of their own."""
    if not distributed.from_env().main:
        return
    if tally is not None and tally.seen == test_loader.num_samples:
        errors = tally.errors()
    else:
        errors = analyse(unwrap(trainer.model), full_test_loader(test_loader), trainer.amp_dtype, trainer.channels_last)
    write_outputs(errors, out_dir, summary, title, plot)
    absent = [name for name in CLASSES if name not in summary["per_class_acc"]]  # a small data.test_subset
    log.info("per-class test accuracy: %s%s", ", ".join(f"{k} {v:.3f}" for k, v in summary["per_class_acc"].items()),
             f" (no test images of {', '.join(absent)})" if absent else "")


# --- task=evaluate ------------------------------------------------------------------------

def evaluate_task(cfg: DictConfig, out_dir: Path, summary: dict[str, Any]) -> None:
    """task=evaluate trainer.resume=RUN_OR_PT: the per-class files of a checkpoint's model on
    the test set. The model and its knobs come from the checkpoint, and so does the resolution
    unless data.resize sets another (a test of how the model copes), and the inputs' normalisation
    (checkpoints record it); data.* (root, test_subset, test_batch_size) and
    trainer.device/precision come from the config."""
    from . import loggers
    from .config import ConfigError, resolution
    from .models import create_model

    path, state = read_checkpoint(cfg.trainer.resume, evaluate=True)  # validate has refused a run without one
    meta = state["meta"]
    device = resolve_device(cfg.trainer.device)
    # data.resize's default follows the configured model (an interpolation): only a size the user
    # set overrides the checkpoint's own
    asked = cfg.data.resize is not None and not OmegaConf.is_interpolation(cfg.data, "resize")
    size = resolution(cfg) if asked else tuple(meta["resolution"])
    if asked_model := [o for o in summary.get("overrides", []) if o.lstrip("+~").startswith(("model=", "model."))]:
        log.warning("task=evaluate takes the model from the checkpoint (%s): %s is ignored", meta["model"], " ".join(asked_model))
    model = create_model(meta["model"], image_size=size, **meta["knobs"])
    if size == tuple(meta["resolution"]):
        load_weights(model, state, cfg.trainer.resume)  # weights that do not fit their own record are refused
    else:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError:  # layer shapes follow the input size (e.g. a dense head after flattening)
            raise ConfigError(f"data.resize={cfg.data.resize}: {meta['model']} from {path} was trained at "
                              f"{meta['resolution'][0]}x{meta['resolution'][1]} and its layers do not fit {size[0]}x{size[1]}; "
                              "leave data.resize unset to evaluate at its own size") from None
    model.to(device)
    partial = state.get("partial") or {}  # a checkpoint written mid-epoch (a stop signal): the steps into the next
    if "config" in meta:  # the run that trained the weights: its settings describe this evaluation in a report
        summary["trained_config"] = meta["config"]
    summary |= {"model": meta["model"], "checkpoint": str(path), "checkpoint_epoch": state.get("epoch", meta.get("epoch")),
                **({"checkpoint_steps_into_next_epoch": partial["batches_done"]} if partial.get("batches_done") else {}),
                "resolution": list(size), **environment(device)}
    when = f"after epoch {summary['checkpoint_epoch']}" + (f" and {partial['batches_done']} steps of the next"
                                                           if partial.get("batches_done") else "")
    train_split, test_split = load(cfg.data.root, cfg.data.download)
    _, loader = build_loaders(cfg, train_split, test_split, size, device, passes=(0, 1))  # the test images, once
    if "inputs" in meta:  # the normalisation the weights were trained with, whatever data.normalize says here
        loader.mean, loader.std = meta["inputs"]["mean"], meta["inputs"]["std"]
    loggers.start(cfg, out_dir)  # logger=...: the tracker run gets the files below (run() finishes it)
    errors = analyse(model, full_test_loader(loader), autocast_dtype(cfg.trainer.precision, device))
    write_outputs(errors, out_dir, summary, f"{meta['model']} ({path.name})", cfg.trainer.plot)
    summary["test_acc"] = summary["eval_test_acc"]
    show("\n".join([
        f"{meta['model']} from {path} ({when}): test accuracy {errors.accuracy:.4f} on {summary['eval_images']} images; "
        f"worst class {summary['worst_class']} ({summary['worst_class_acc']:.3f})",
        *(f"  {row['class']:12} {'  -  ' if row['accuracy'] is None else format(row['accuracy'], '.3f')}  ({row['correct']}/{row['count']})"
          + (f"  most often taken for {row['most_confused_with']} ({row['confused_count']})" if row["confused_count"] else "")
          for row in per_class_rows(errors, class_names())),
    ]))
