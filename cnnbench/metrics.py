"""What a run leaves behind: metrics.csv (one row per epoch), summary.json, curves.png."""
from __future__ import annotations

import csv
import errno
import io
import json
import logging
import math
import numbers
import os
import platform
import sys
from pathlib import Path
from typing import IO, Any, Callable

import torch

COLUMNS = [
    "epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr",
    "epoch_time_s", "train_images_per_s", "peak_mem_mb", "eval_time_s",
]


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = False) -> Path:
    """Write ``path`` through ``write(file)`` so that a reader (or a crash, a kill, a full disk)
    sees the old file or the complete new one, never half: a temporary file beside it, flushed to
    disk, then renamed over it. On any failure the temporary file is removed and the error
    raised, with the path named when the disk is full."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(path) from None
        raise
    return path


class NoSpace(OSError):
    """The disk (or quota) filled up while writing a file; what was there before is intact."""

    def __init__(self, path: Path):
        super().__init__(errno.ENOSPC, f"no space left on the device to write {path} (its previous version is intact)")
        self.path = path


class MetricsWriter:
    """Writes one complete row per epoch to metrics.csv and flushes it to disk at once,
    so a run killed at any moment leaves only whole rows. A new run starts the file
    afresh; ``keep_epochs=N`` (a resumed run) keeps its first N rows and continues, taken from
    ``history`` when given (the checkpoint's run's file: a run resumed into another dir carries
    the curve so far)."""

    def __init__(self, path: Path, keep_epochs: int | None = None, history: Path | None = None):
        self.path = path
        self.rows: list[dict[str, float]] = []
        source = history if history is not None and history.is_file() else path
        if keep_epochs is not None and source.exists():
            with open(source, newline="") as f:
                self.rows = [
                    {k: float(v) if k != "epoch" else int(v) for k, v in row.items()}
                    for row in csv.DictReader(f)
                    if None not in row.values() and row["epoch"].isdigit() and int(row["epoch"]) <= keep_epochs
                ]
        def header_and_kept_rows(f):
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows({k: _fmt(r.get(k, math.nan)) for k in COLUMNS} for r in self.rows)

        atomic_write(path, header_and_kept_rows)  # the kept rows, whole, or the old file
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def write(self, row: dict[str, float]) -> None:
        """Append a row and flush it to disk; a row the disk cannot take whole is cut off again,
        so the file keeps only whole rows."""
        line = io.StringIO()
        csv.DictWriter(line, fieldnames=COLUMNS, extrasaction="raise").writerow({k: _fmt(row[k]) for k in COLUMNS})
        end = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            self._append(line.getvalue().encode())
        except OSError as err:
            os.ftruncate(self._fd, end)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpace(self.path) from None
            raise
        self.rows.append(row)

    def _append(self, data: bytes) -> None:
        while data:
            data = data[os.write(self._fd, data):]
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def _fmt(value: Any) -> Any:
    """Floats in full (the shortest text that reads back to the same number)."""
    return repr(value) if isinstance(value, float) and math.isfinite(value) else value


def show(text: str, brief: str | None = None) -> None:
    """Print a task's table on stdout (or its ``brief`` lines: a sweep's jobs), and keep it whole
    in the run's log file (cnnbench.log), as a training run's log keeps its epochs. A reader that
    stops early (``cnnbench ... | head``) costs the run nothing: the rest goes to /dev/null and
    the run carries on (its files are the record)."""
    try:
        print(text if brief is None else brief, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    record = logging.LogRecord("cnnbench", logging.INFO, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:  # the files alone: the console has it on stdout
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as standard JSON, atomically: a number that is not finite (a diverged run's NaN
    accuracy) is written as null, since NaN and Infinity are not JSON (a browser's or jq's
    parser refuses the whole file)."""
    atomic_write(path, lambda f: f.write(json.dumps(finite(data), indent=2, default=str, allow_nan=False) + "\n"))


def finite(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A table, atomically: the columns in order of first appearance, a missing value (None or
    NaN) as an empty cell, and a float column that holds only whole numbers written as integers
    (61706, not 61706.0), as ``whole_numbers`` does for a DataFrame. The standard library's csv
    module, so a run's own files do not wait for pandas' import."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def missing(value: Any) -> bool:
        return value is None or (isinstance(value, numbers.Real) and math.isnan(value))

    def number(value: Any) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)

    kind = {}  # a column of numbers with a fraction anywhere is a float column (1 reads 1.0), as in a DataFrame
    for column in columns:
        values = [row.get(column) for row in rows if not missing(row.get(column))]
        floats = any(number(v) and not isinstance(v, numbers.Integral) for v in values) and all(number(v) for v in values)
        whole = floats and all(float(v).is_integer() and abs(v) < 2**53 for v in values)
        kind[column] = "int" if whole else "float" if floats else None

    def cell(column: str, value: Any) -> Any:
        if missing(value):
            return ""
        if kind[column] == "int":
            return int(value)
        if getattr(value, "dtype", None) is not None and value.dtype.kind == "f":
            return str(value)  # numpy's: shortest in its own precision (float32 0.1 as 0.1), not np.float64(0.5)
        if kind[column] == "float" or isinstance(value, float):
            return repr(float(value))
        return value

    def write(f: IO) -> None:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(columns)
        out.writerows([cell(column, row.get(column)) for column in columns] for row in rows)

    return atomic_write(path, write)


def whole_numbers(table):
    """Float columns that hold only whole numbers (and gaps, e.g. a failed job's) as integers,
    so tables read 61706, not 61706.0."""
    import pandas as pd

    for column in table.columns:
        values = table[column]
        if pd.api.types.is_float_dtype(values) and values.notna().any():
            present = values.dropna()
            if (present == present.round()).all() and present.abs().max() < 2**53:
                table[column] = values.astype("Int64")
    return table


def cpu_name() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what the platform says (often just x86_64)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }


def label_values(ax, values) -> None:
    """Tick a numeric axis at exactly ``values`` (a grid's settings: batch sizes 64 and 128, not
    72, 80, 88; 1024, not 1.02e+03)."""
    ax.set_xticks(values, [str(int(v)) if float(v).is_integer() else f"{v:.3g}" for v in values])
    ax.minorticks_off()


def batch_size_axes(axes, batch_sizes) -> None:
    """Throughput or memory against batch size: batch sizes on a log2 axis, ticked at the sizes
    run, and the values from 0, so that a line's rise reads as its ratio (a memory panel that
    starts at 40 MiB makes 45 look twice 42)."""
    for ax in axes:
        ax.set_xscale("log", base=2)
        label_values(ax, batch_sizes)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)


def figure(**kwargs):
    """A matplotlib Figure that ``save_figure`` renders to a PNG with Agg. No pyplot: nothing is
    shown on a screen, so no backend is chosen and no figure is registered (nor must be closed)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def save_figure(fig, path: Path) -> Path:
    """Save atomically: a reader never sees half a PNG."""
    return atomic_write(path, lambda f: fig.savefig(f, dpi=100, format="png"), binary=True)


def epoch_axis(ax, epochs) -> None:
    """An x axis of whole epochs: each epoch a tick when there are few (one epoch, or a resumed
    run's last few, would otherwise get fractional ticks), else whole-number ticks."""
    from matplotlib.ticker import MaxNLocator

    shown = sorted({int(e) for e in epochs})
    if len(shown) <= 12:
        ax.set_xticks(shown)
        if len(shown) == 1:
            ax.set_xlim(shown[0] - 0.5, shown[0] + 0.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(rows: list[dict[str, float]], path: Path, title: str, smoothed: bool = False) -> None:
    """Loss and accuracy per epoch, train and test, side by side (like the book's plots).
    ``smoothed``: the training loss is label-smoothed (its floor is above 0), the test loss not."""
    epochs = [r["epoch"] for r in rows]
    fig = figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for split, style in (("train", "-"), ("test", "--")):
        name = "train loss (label-smoothed)" if smoothed and split == "train" else f"{split} loss"
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], style, marker="o", label=name)
        ax_acc.plot(epochs, [r[f"{split}_acc"] for r in rows], style, marker="o", label=f"{split} accuracy")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (fraction correct)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
        epoch_axis(ax, epochs)
    fig.suptitle(title)
    save_figure(fig, path)


def plot_bench(rows: list[dict[str, Any]], path: Path, title: str, measured: bool = True) -> None:
    """Throughput and memory against batch size, training and inference. ``measured``: the
    device's peak memory (a GPU's) is drawn beside the estimate; a CPU's peak resident memory is
    the whole process's and only grows, so there the estimate is drawn alone (as in the sweep report)."""
    fig = figure(figsize=(10, 4), layout="constrained")
    ax_speed, ax_mem = fig.subplots(1, 2)
    for mode, style in (("train", "-"), ("infer", "--")):
        sel = [r for r in rows if r["mode"] == mode and r["status"] == "completed"]
        sizes = [r["batch_size"] for r in sel]
        ax_speed.plot(sizes, [r["images_per_s"] for r in sel], style, marker="o", label=mode)
        if measured:
            ax_mem.plot(sizes, [r["peak_mem_mb"] for r in sel], style, marker="o", label=f"{mode}, measured peak")
        ax_mem.plot(sizes, [r["estimated_mem_mb"] for r in sel], style, marker="x", alpha=0.6, label=f"{mode}, estimate")
    ax_speed.set(xlabel="batch size", ylabel="throughput (images/s)", title="throughput")
    ax_mem.set(xlabel="batch size", ylabel="memory (MiB)" if measured else "weights + state + saved activations (MiB)",
               title="memory" if measured else "estimated memory")
    batch_size_axes((ax_speed, ax_mem), sorted({r["batch_size"] for r in rows}))
    for ax in (ax_speed, ax_mem):
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)


LAYERS_SHOWN = 24  # bars in layers.png; a deeper network's smaller layers are summed in one bar
KIND_COLORS = {"conv": "tab:blue", "linear": "tab:orange", "norm": "tab:green", "other": "tab:gray", "summed": "silver"}


def plot_layers(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """task=summary's answer to "which layers dominate?": each layer's share of the parameters and
    of the FLOPs, side by side, in forward order, coloured by kind. Layers with neither are left
    out; beyond LAYERS_SHOWN, the layers with the smallest shares are summed in a last bar."""
    from matplotlib.patches import Rectangle

    weighted = dominant_layers(rows)
    total_p, total_f = max(sum(r["params"] for r in rows), 1), max(sum(r["flops"] for r in rows), 1)
    labels = [f"{r['layer']} ({r['type']})" if r["type"] else r["layer"] for r in weighted]
    fig = figure(figsize=(11, 1.2 + 0.28 * len(weighted)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    y = range(len(weighted))
    for ax, key, total, name in ((axes[0], "params", total_p, "parameters"), (axes[1], "flops", total_f, "FLOPs")):
        values = [100 * r[key] / total for r in weighted]
        ax.barh(y, values, color=[KIND_COLORS.get(r["kind"], "tab:gray") for r in weighted])
        for i, v in zip(y, values):
            if v > 0:  # the smallest shares too: a bar too thin to see still has its number
                ax.annotate(f"{v:.1f}%" if v >= 0.05 else "<0.1%", (v, i), xytext=(3, 0), textcoords="offset points",
                            va="center", fontsize=8)
        ax.set_xlim(0, max(values + [1]) * 1.18)
        ax.set(xlabel=f"share of the {name} (%)", title=f"{name}: {_si(total)}")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(list(y), labels, fontsize=8)
    axes[0].invert_yaxis()  # forward order, top to bottom
    shown = [k for k in KIND_COLORS if any(r["kind"] == k for r in weighted)]
    fig.legend([Rectangle((0, 0), 1, 1, color=KIND_COLORS[k]) for k in shown], shown, loc="outside lower center",
               ncols=len(shown), frameon=False)
    fig.suptitle(title)
    return save_figure(fig, path)


def dominant_layers(rows: list[dict[str, Any]], shown: int = LAYERS_SHOWN) -> list[dict[str, Any]]:
    """The layers with parameters or FLOPs, in forward order; beyond ``shown``, those with the
    largest share of either are kept and the rest summed in one last row (kind ``summed``)."""
    weighted = [r for r in rows if r["params"] or r["flops"]]
    if len(weighted) <= shown:
        return weighted
    total_p, total_f = max(sum(r["params"] for r in rows), 1), max(sum(r["flops"] for r in rows), 1)
    largest = sorted(weighted, key=lambda r: max(r["params"] / total_p, r["flops"] / total_f), reverse=True)
    keep = {id(r) for r in largest[:shown - 1]}
    rest = [r for r in weighted if id(r) not in keep]
    return [r for r in weighted if id(r) in keep] + [{
        "layer": f"the other {len(rest)} layers", "type": "", "kind": "summed",
        "params": sum(r["params"] for r in rest), "flops": sum(r["flops"] for r in rest)}]


def _si(n: float) -> str:
    for factor, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= factor:
            return f"{n / factor:.2f}{unit}"
    return f"{n:.0f}"


# The folders the trackers (loggers.py) keep in a run or sweep dir: MLflow's artifact store holds
# copies of each run's files, summary.json included.
TENSORBOARD_DIR, MLFLOW_ARTIFACTS_DIR = "tensorboard", "mlartifacts"
TRACKER_DIRS = {TENSORBOARD_DIR, MLFLOW_ARTIFACTS_DIR}


def collect_results(folder: Path, recursive: bool = False) -> list[dict[str, Any]]:
    """One row per run, failed ones included: the job (its dir, relative to ``folder``), its
    overrides as columns, then the scalar fields of its summary.json (status, accuracies,
    params, FLOPs, ...). A sweep's jobs are ``folder``'s numbered subdirs, in job order;
    ``recursive`` finds runs at any depth (``cnnbench-report outputs``)."""
    def order(path: Path):
        parts = path.parent.relative_to(folder).parts
        return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts]

    rows = []
    for path in sorted(folder.glob("**/summary.json" if recursive else "*/summary.json"), key=order):
        if TRACKER_DIRS & set(path.relative_to(folder).parts):  # a tracker's copy of a run's files, not a run
            continue
        job = path.parent.relative_to(folder).as_posix()
        try:
            summary = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            rows.append({"job": job, "status": "failed", "error": f"unreadable summary.json: {err}"})
            continue
        row: dict[str, Any] = {"job": job}
        for override in summary.get("overrides", []):
            key, _, value = override.lstrip("+~").partition("=")
            row[key] = value
        # An override keeps its own value (model=vgg11_quarter, not the registry's vgg11).
        row |= {k: v for k, v in summary.items()
                if k not in row and k not in ("config", "overrides") and not isinstance(v, (dict, list))}
        if isinstance(summary.get("resolution"), list):  # models compared at their own sizes say so: 224x224
            row["resolution"] = "x".join(map(str, summary["resolution"]))
        rows.append(row)
    return rows


def write_results(sweep_dir: Path) -> Path | None:
    """Write the sweep's results.csv (atomically); None when no job left a summary."""
    rows = collect_results(sweep_dir)
    return write_csv(sweep_dir / "results.csv", rows) if rows else None
