"""What a run leaves behind: metrics.csv (one row per epoch), summary.json, curves.png."""
from __future__ import annotations

import csv
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

COLUMNS = [
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
    "epoch_time_s", "train_images_per_s", "peak_mem_mb",
]


class MetricsWriter:
    """Writes one complete row per epoch to metrics.csv and flushes it to disk at once,
    so a run killed at any moment leaves only whole rows. A new run starts the file
    afresh; ``append=True`` (resuming a run) continues it."""

    def __init__(self, path: Path, append: bool = False):
        self.path = path
        self.rows: list[dict[str, float]] = []
        new = not append or not path.exists() or path.stat().st_size == 0
        self._file = open(path, "w" if new else "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="raise")
        if new:
            self._csv.writeheader()
            self._flush()

    def write(self, row: dict[str, float]) -> None:
        self._csv.writerow({k: _fmt(row[k]) for k in COLUMNS})
        self._flush()
        self.rows.append(row)

    def _flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) and math.isfinite(value) else value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader sees the old file or the complete new one, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }


def plot_curves(rows: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train and test, side by side (like the book's plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], style, marker="o", label=f"{split} loss")
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in rows], style, marker="o", label=f"{split} accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (fraction correct)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
