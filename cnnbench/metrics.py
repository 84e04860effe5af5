"""What a run leaves behind: metrics.csv (one row per epoch), summary.json, curves.png."""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
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
    afresh; ``keep_epochs=N`` (a resumed run) keeps its first N rows and continues."""

    def __init__(self, path: Path, keep_epochs: int | None = None):
        self.path = path
        self.rows: list[dict[str, float]] = []
        if keep_epochs is not None and path.exists():
            with open(path, newline="") as f:
                self.rows = [
                    {k: float(v) if k != "epoch" else int(v) for k, v in row.items()}
                    for row in csv.DictReader(f)
                    if None not in row.values() and row["epoch"].isdigit() and int(row["epoch"]) <= keep_epochs
                ]
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: _fmt(r[k]) for k in COLUMNS} for r in self.rows)
        os.replace(tmp, path)  # the kept rows, whole, or the old file
        self._file = open(path, "a", newline="")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS, extrasaction="raise")

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
    """Floats in full (the shortest text that reads back to the same number)."""
    return repr(value) if isinstance(value, float) and math.isfinite(value) else value


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


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save atomically (a reader never sees half a PNG) and free the figure."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    pyplot().close(fig)
    os.replace(tmp, path)
    return path


def plot_curves(rows: list[dict[str, float]], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train and test, side by side (like the book's plots)."""
    plt = pyplot()
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
    save_figure(fig, path)


def plot_bench(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Throughput and peak memory against batch size, training and inference."""
    plt = pyplot()
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for mode, style in (("train", "-"), ("infer", "--")):
        sel = [r for r in rows if r["mode"] == mode and r["status"] == "completed"]
        sizes = [r["batch_size"] for r in sel]
        ax_speed.plot(sizes, [r["images_per_s"] for r in sel], style, marker="o", label=mode)
        ax_mem.plot(sizes, [r["peak_mem_mb"] for r in sel], style, marker="o", label=f"{mode}, measured peak")
        ax_mem.plot(sizes, [r["estimated_mem_mb"] for r in sel], style, marker="x", alpha=0.6, label=f"{mode}, estimate")
    ax_speed.set(xlabel="batch size", ylabel="throughput (images/s)", title="throughput")
    ax_mem.set(xlabel="batch size", ylabel="memory (MB)", title="memory")
    batch_sizes = sorted({r["batch_size"] for r in rows})
    for ax in (ax_speed, ax_mem):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def collect_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job of a sweep, failed ones included: the job, its overrides as columns,
    then the scalar fields of its summary.json (status, accuracies, params, FLOPs, ...)."""
    rows = []
    paths = sorted(sweep_dir.glob("*/summary.json"), key=lambda p: (not p.parent.name.isdigit(), int(p.parent.name) if p.parent.name.isdigit() else 0, p.parent.name))
    for path in paths:
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            rows.append({"job": path.parent.name, "status": "failed", "error": f"unreadable summary.json: {err}"})
            continue
        row: dict[str, Any] = {"job": path.parent.name}
        for override in summary.get("overrides", []):
            key, _, value = override.lstrip("+~").partition("=")
            row[key] = value
        # An override keeps its own value (model=vgg11_quarter, not the registry's vgg11).
        row |= {k: v for k, v in summary.items()
                if k not in row and k not in ("config", "overrides") and not isinstance(v, (dict, list))}
        rows.append(row)
    return rows


def write_results(sweep_dir: Path) -> Path | None:
    """Write the sweep's results.csv (atomically); None when no job left a summary."""
    import pandas as pd

    rows = collect_results(sweep_dir)
    if not rows:
        return None
    path = sweep_dir / "results.csv"
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra < 1.1
    Callback = object


def check_writable(folder: Path, key: str) -> None:
    """Exit with a clear message (status 2) when the output folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".cnnbench-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        print(f"cnnbench: {key}={folder} cannot be written ({err.strerror or err}); choose another with {key}=DIR",
              file=sys.stderr)
        sys.exit(2)


class OutputCheck(Callback):
    """Hydra callback: refuse an unwritable run or sweep dir before Hydra creates it."""

    def on_run_start(self, config, **kwargs) -> None:
        check_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


class SweepResults(Callback):
    """Hydra callback (conf/config.yaml, hydra.callbacks): results.csv at the end of a multirun."""

    def on_multirun_start(self, config, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = getattr(self, "sweep_dir", Path(config.hydra.sweep.dir))
        path = write_results(sweep_dir)
        if path:
            print(f"cnnbench: sweep results in {path}", file=sys.stderr)
            try:
                from .report import report

                report(sweep_dir, html=True)  # report.html too
            except Exception as err:  # a report must never cost the sweep its results
                print(f"cnnbench: could not write the sweep report: {err}", file=sys.stderr)
        # Every job ran; the sweep still exits non-zero when any of them did not complete.
        unfinished = [r for r in collect_results(sweep_dir) if r.get("status") != "completed"]
        if unfinished:
            jobs = ", ".join(f"{r['job']} ({r.get('status')})" for r in unfinished)
            print(f"cnnbench: {len(unfinished)} job(s) did not complete: {jobs}", file=sys.stderr)
            sys.exit(1)
