"""``cnnbench-report PATH``: the table and plots of one run dir or a whole sweep dir.

For a sweep it prints results.csv's essentials and writes, into the sweep dir:
``report_curves.png`` (every job's learning curves overlaid), ``report_vs_<key>.png`` (the
final metric against each swept key, one line per setting of the other swept keys) and,
when jobs ran ``task=bench``, ``report_bench.png``. For one run it prints its summary and
writes ``report_curves.png``. The same report is written at the end of every sweep.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from .metrics import collect_results, pyplot, save_figure

META_COLUMNS = {"job", "task", "status", "error", "bad_input"}
TABLE = ["status", "final_test_acc", "best_test_acc", "params", "flops", "train_memory_mb", "infer_memory_mb",
         "min_size", "best_train_images_per_s", "wall_time_s"]


def swept_keys(results: pd.DataFrame, overrides: list[str]) -> list[str]:
    """Override keys whose value differs between jobs."""
    return [k for k in overrides if k in results and results[k].astype(str).nunique() > 1]


def load(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The jobs under ``path`` (a sweep dir, or a single run dir) and their override keys."""
    if (path / "summary.json").is_file():
        summary = json.loads((path / "summary.json").read_text())
        keys = [o.lstrip("+~").partition("=")[0] for o in summary.get("overrides", [])]
        row = {"job": path.name, **{k: v for k, v in summary.items() if not isinstance(v, (dict, list))}}
        row |= {o.lstrip("+~").partition("=")[0]: o.partition("=")[2] for o in summary.get("overrides", [])}
        return pd.DataFrame([row]), keys
    rows = collect_results(path)
    if not rows:
        raise FileNotFoundError(f"{path} holds no run (no summary.json in it or in its subfolders)")
    keys: list[str] = []
    for row in rows:
        summary = path / str(row["job"]) / "summary.json"
        overrides = json.loads(summary.read_text()).get("overrides", []) if summary.is_file() else []
        keys += [k for k in (o.lstrip("+~").partition("=")[0] for o in overrides) if k not in keys]
    return pd.DataFrame(rows), keys


def job_dir(path: Path, job) -> Path:
    return path if (path / "summary.json").is_file() else path / str(job)


def label(row: pd.Series, keys: list[str]) -> str:
    return ", ".join(f"{k}={row[k]}" for k in keys) or str(row["job"])


def job_tables(path: Path, results: pd.DataFrame, name: str) -> list[tuple[pd.Series, pd.DataFrame]]:
    """(job row, its ``name`` table) for every job that wrote one."""
    files = [(row, job_dir(path, row["job"]) / name) for _, row in results.iterrows()]
    return [(row, pd.read_csv(f)) for row, f in files if f.is_file()]


def plot_curves(path: Path, results: pd.DataFrame, keys: list[str], plt) -> Path | None:
    runs = job_tables(path, results, "metrics.csv")
    if not runs:
        return None
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    for row, m in runs:
        line, = ax_loss.plot(m["epoch"], m["train_loss"], marker=".", label=label(row, keys))
        ax_acc.plot(m["epoch"], m["test_acc"], marker=".", color=line.get_color(), label=label(row, keys))
        ax_acc.plot(m["epoch"], m["train_acc"], linestyle="--", alpha=0.5, color=line.get_color())
    ax_loss.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (fraction correct)",
               title="test accuracy (solid) and training accuracy (dashed)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax_acc.legend(fontsize="small", loc="best")
    fig.suptitle(f"learning curves: {path.name}")
    return save_figure(fig, path / "report_curves.png")


def plot_against(path: Path, results: pd.DataFrame, key: str, others: list[str], metric: str, plt) -> Path:
    """``metric`` against ``key``, one line per setting of the ``others``."""
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    x_num = pd.to_numeric(results[key], errors="coerce")
    numeric = x_num.notna().all()
    groups = results.groupby(others, dropna=False) if others else [((), results)]
    for values, group in groups:
        values = values if isinstance(values, tuple) else (values,)
        group = group.assign(_x=x_num[group.index] if numeric else group[key].astype(str)).sort_values("_x")
        name = ", ".join(f"{k}={v}" for k, v in zip(others, values)) or metric
        ax.plot(group["_x"], pd.to_numeric(group[metric], errors="coerce"), marker="o", label=name)
    if numeric and x_num.min() > 0 and x_num.max() / x_num.min() >= 10:
        ax.set_xscale("log")
        ticks = sorted(x_num.unique())
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    ax.set(xlabel=key, ylabel=metric.replace("_", " "), title=f"{metric.replace('_', ' ')} against {key}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_figure(fig, path / f"report_vs_{key.replace('/', '_')}.png")


def plot_bench(path: Path, results: pd.DataFrame, keys: list[str], plt) -> Path | None:
    runs = job_tables(path, results, "bench.csv")
    if not runs:
        return None
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    measured = all(str(row.get("device", "cpu")).startswith("cuda") for row, _ in runs)
    # A CPU's peak resident memory only grows over a process (and a sweep is one process):
    # there the estimate of what each batch needs is the comparable number.
    memory = "peak_mem_mb" if measured else "estimated_mem_mb"
    for row, b in runs:
        for mode, style in (("train", "-"), ("infer", "--")):
            sel = b[(b["mode"] == mode) & (b["status"] == "completed")]
            line, = ax_speed.plot(sel["batch_size"], sel["images_per_s"], style, marker="o", label=f"{label(row, keys)} {mode}")
            ax_mem.plot(sel["batch_size"], sel[memory], style, marker="o", color=line.get_color())
    ax_speed.set(xlabel="batch size", ylabel="throughput (images/s)", title="throughput (solid: training, dashed: prediction)")
    ax_mem.set(xlabel="batch size", ylabel="memory (MB)",
               title="measured peak GPU memory" if measured else "estimated memory (saved activations + weights + state)")
    batch_sizes = sorted({int(v) for _, b in runs for v in b["batch_size"]})
    for ax in (ax_speed, ax_mem):
        ax.set_xscale("log", base=2)
        ax.set_xticks(batch_sizes, [str(v) for v in batch_sizes])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    ax_speed.legend(fontsize="small")
    return save_figure(fig, path / "report_bench.png")


def report(path: str | Path) -> tuple[pd.DataFrame, list[Path]]:
    """Print the table of the run(s) under ``path`` and write the report's PNGs there."""
    plt = pyplot()
    path = Path(path)
    results, keys = load(path)
    swept = swept_keys(results, keys)
    columns = ["job", *swept, *[c for c in TABLE if c in results and results[c].notna().any()]]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
        print(results[columns].to_string(index=False))
    written = [plot_curves(path, results, swept, plt), plot_bench(path, results, swept, plt)]
    metric = next((m for m in ("final_test_acc", "best_train_images_per_s", "params") if m in results and results[m].notna().any()), None)
    if metric and len(results) > 1:
        for key in swept:
            written.append(plot_against(path, results, key, [k for k in swept if k != key], metric, plt))
    if "model.space" in results:  # a design-space study (experiment=ds_anynet): EDFs, trends, good regions
        from .design_study import study_report
        written += study_report(path, results, plt)
    written = [w for w in written if w]
    for w in written:
        print(f"wrote {w}")
    return results, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnbench-report", description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path, help="a run dir (with summary.json) or a sweep dir (with numbered job dirs)")
    args = parser.parse_args(argv)
    try:
        report(args.path)
    except FileNotFoundError as err:
        print(f"cnnbench-report: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
