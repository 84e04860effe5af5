"""``cnnbench-report PATH``: the table and plots of one run dir or a whole sweep dir.

For a sweep it prints results.csv's essentials and writes, into the sweep dir:
``report_curves.png`` (every job's learning curves overlaid), ``report_vs_<key>.png`` (the
final metric against each swept key, one line per setting of the other swept keys) and,
when jobs ran ``task=bench``, ``report_bench.png``; ``task=summary``, ``report_summary.png``. For one run it prints its summary and
writes ``report_curves.png``. With ``--html``, ``report.html`` too: the table (sortable),
these plots and every job's curves and confusion matrix in one self-contained page. The
same report, report.html included, is written at the end of every sweep.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from pathlib import Path

import pandas as pd

from .metrics import (
    KIND_COLORS,
    batch_size_axes,
    collect_results,
    epoch_axis,
    figure,
    label_values,
    save_figure,
    show,
    whole_numbers,
)
from .rundir import described_config, is_search

META_COLUMNS = {"job", "task", "status", "error", "bad_input"}
TABLE = ["status", "resolution", "final_train_acc", "final_test_acc", "best_test_acc", "eval_test_acc", "worst_class", "worst_class_acc", "params",
         "params_conv", "params_linear", "flops",  # the layer kinds: task=summary's alone
         "train_memory_mb", "infer_memory_mb", "min_size", "no_collapse_size", "best_train_images_per_s", "largest_train_batch", "largest_train_batch_mb", "steady_epoch_time_s",
         "wall_time_s"]  # steady_epoch_time_s: the median epoch without the first, which pays the warm-up


# Overrides that say where or how a run was done, not what it tried: never an axis of a plot.
# Numbers that name a draw, not a quantity: points against them, never a line between neighbours.
IDENTIFIERS = {"seed", "model.sample"}
INDEX_KEYS = ("model.sample",)  # which network a design space's draw is: not even an axis (the space is)
# A key with more settings than this (a search's continuous draws) is an axis, never a series.
MOST_SERIES = 6
MOST_TICKS = 10  # the values of a swept key labelled on its axis one by one
MOST_TICK_CHARS = 24  # a line of a category's label on its axis
MOST_LEGEND = 24  # entries in a legend; a folder of more runs than this is told apart by the table
LABEL_WIDTH = 48  # characters on a legend's or an axis label's line
BOOKKEEPING = {"task", "trainer.resume", "data.root", "data.download", "trainer.checkpoint", "trainer.save_best",
               "trainer.plot", "trainer.progress", "trainer.device", "logger", "objective"}


def swept_keys(results: pd.DataFrame, overrides: list[str]) -> list[str]:
    """Override keys whose value differs between jobs."""
    return [k for k in overrides if k in results and results[k].map(_short).nunique() > 1]  # a gap: the default, a setting too


def plotted_keys(results: pd.DataFrame, overrides: list[str]) -> list[str]:
    """The swept keys worth an axis: what the runs tried, not where they wrote or which task ran."""
    return [k for k in swept_keys(results, overrides) if k not in BOOKKEEPING and not k.startswith(("hydra.", "logger."))]


def load_runs(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The runs under ``path`` (a run dir, a sweep dir, or any folder holding runs and sweeps at
    any depth) and their override keys, in the order the jobs ran."""
    if (path / "summary.json").is_file():
        summary = json.loads((path / "summary.json").read_text())
        keys = [o.lstrip("+~").partition("=")[0] for o in summary.get("overrides", [])]
        row = {"job": path.name, **{k: v for k, v in summary.items() if not isinstance(v, (dict, list))}}
        row |= {o.lstrip("+~").partition("=")[0]: o.partition("=")[2] for o in summary.get("overrides", [])}
        return pd.DataFrame([row]), keys
    rows = collect_results(path, recursive=True)
    if not rows:
        raise FileNotFoundError(f"{path} holds no run (no summary.json in it or below it)")
    keys: list[str] = []
    for row in rows:
        summary = path / str(row["job"]) / "summary.json"
        overrides = json.loads(summary.read_text()).get("overrides", []) if summary.is_file() else []
        keys += [k for k in (o.lstrip("+~").partition("=")[0] for o in overrides) if k not in keys]
    return pd.DataFrame(rows), keys


_MISSING = object()


def fill_unset(path: Path, results: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """A run that did not set a key ran at the config's value: read it from the run's summary.json
    (a folder of runs mixes ones that swept optimizer.lr with ones that left it at its default)."""
    configs: dict = {}  # each run's config, read once

    def config(job) -> dict:
        if job not in configs:
            try:
                configs[job] = described_config(json.loads((job_dir(path, job) / "summary.json").read_text()))
            except (OSError, ValueError, AttributeError):
                configs[job] = {}
        return configs[job]

    for key in (k for k in keys if k in results and results[k].isna().any()):
        for i in results.index[results[key].isna()]:
            value = config(results.at[i, "job"])
            for part in key.split("."):
                value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            if value is not _MISSING and not isinstance(value, (dict, list)):
                results.at[i, key] = _as_typed(value)  # null too: the config's own value
    for key in (k for k in keys if k in results):  # an override's False and true: spelt as one
        results[key] = results[key].map(_as_typed)
    return results


def _as_typed(value):
    """A value the way an override spells it: true, false and null (Hydra reads booleans in any
    case), anything else as it is."""
    if value is None:
        return "null"
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
        return str(value).lower()
    return value if isinstance(value, str) or pd.isna(value) else str(value)


def job_dir(path: Path, job) -> Path:
    return path if (path / "summary.json").is_file() else path / str(job)


def label(row: pd.Series, keys: list[str]) -> str:
    """What sets the run apart (a key it did not set is left out; a search's draw to 4 digits),
    else its dir's name; a long one (a folder of unrelated runs differs in many keys) on several
    lines."""
    text = ", ".join(f"{k}={_short(row[k])}" for k in keys if pd.notna(row[k])) or str(row["job"])
    return textwrap.fill(text, LABEL_WIDTH)


def labels_of(rows: list[pd.Series], keys: list[str]) -> list[str]:
    """Each run's ``label``; runs that share one (the same settings run twice) add their job."""
    labels = [label(row, keys) for row in rows]
    return [f"{text} [{row['job']}]" if labels.count(text) > 1 else text for text, row in zip(labels, rows)]


def outside_legend(fig, entries: int, keys: list[str], labels: list[str] = ()):
    """The legend right of the plots, for up to MOST_LEGEND entries (None beyond: the table and
    report.html tell that many runs apart, a legend could not). The figure grows to hold its
    ``labels`` (20 search trials of two lines each ran off its top and bottom)."""
    if entries > MOST_LEGEND:
        return None
    lines = sum(text.count("\n") + 1 for text in labels) + 2  # and its title
    width, height = fig.get_size_inches()
    fig.set_size_inches(width, max(height, 0.17 * lines + 0.1 * len(labels) + 0.6))
    # centred: clear of the title
    return fig.legend(loc="outside right center", fontsize="small",
                      title=textwrap.fill(" x ".join(keys), LABEL_WIDTH) if 0 < len(keys) <= 4 else None)


def crowded(what: str, entries: int) -> str:
    """A title's note when a plot has too many runs or series for a legend."""
    return f"{what}\n({entries} {'runs' if 'curves' in what else 'series'}, too many for a legend: the table and report.html tell them apart)" \
        if entries > MOST_LEGEND else what


def style(i: int) -> dict:
    """A look of its own for the i-th line: ten colours, then each again with another dash
    pattern and marker (so 16 or 40 jobs stay apart)."""
    return {"color": f"C{i % 10}", "linestyle": ["-", "--", "-.", ":"][i // 10 % 4], "marker": "os^Dv<>p*h"[i // 10 % 10],
            "markersize": 4}


def looks(rows: pd.DataFrame, keys: list[str]) -> list[dict]:
    """A look per run. With two swept keys the colour follows the one with more values and the
    dash the other (ex_bn_lr: each learning rate its colour, solid without batch norm, dashed
    with it); otherwise each run its own (``style``)."""
    if len(keys) == 2:
        shown = {k: rows[k].map(_short).tolist() for k in keys}  # a run without the key: "default", a setting of its own
        hue, dash = sorted(keys, key=lambda k: len(set(shown[k])), reverse=True)
        hues, dashes = (list(dict.fromkeys(shown[k])) for k in (hue, dash))
        if len(hues) <= 10 and len(dashes) <= 4:
            return [{"color": f"C{hues.index(h)}", "linestyle": ["-", "--", "-.", ":"][dashes.index(d)],
                     "marker": "os^D"[dashes.index(d)], "markersize": 4} for h, d in zip(shown[hue], shown[dash])]
    return [style(i) for i in range(len(rows))]


def spans_decades(values, decades: float = 1.0) -> bool:
    """Whether the positive, finite ``values`` span ``decades`` powers of ten: an axis that does
    is drawn on a log scale (learning rates 0.01..30; losses when one run of a sweep blew up)."""
    v = pd.to_numeric(pd.Series(list(values)), errors="coerce")
    v = v[(v > 0) & (v < float("inf"))]
    return len(v) > 1 and v.max() / v.min() >= 10 ** decades


def title(path: Path, results: pd.DataFrame, keys: list[str], what: str) -> str:
    """``what`` for the sweep: its models and what it sweeps, not the folder's time stamp."""
    models = list(dict.fromkeys(str(m) for m in results.get("model", pd.Series(dtype=str)).dropna()))
    shown = ", ".join(models[:4]) + (f" and {len(models) - 4} more" if len(models) > 4 else "")
    swept = " x ".join(keys[:4]) + (f" and {len(keys) - 4} more keys" if len(keys) > 4 else "")
    head = f"{what}: {shown or path.name}"
    tail = f"{len(results)} run{'s' if len(results) != 1 else ''}" + (f" ({swept})" if swept else "")
    # the run count and its keys stay together, unbroken: on the first line when all fits, else on their own
    return f"{head}, {tail}" if len(head) + 2 + len(tail) <= 80 else f"{textwrap.fill(head, 80)}\n{tail}"


def job_tables(path: Path, results: pd.DataFrame, name: str) -> list[tuple[pd.Series, pd.DataFrame]]:
    """(job row, its ``name`` table) for every job that wrote one."""
    files = [(row, job_dir(path, row["job"]) / name) for _, row in results.iterrows()]
    return [(row, pd.read_csv(f)) for row, f in files if f.is_file()]


def _stopped(row: pd.Series) -> str | None:
    """How a run ended when it did not complete (diverged, failed, interrupted); None for a
    completed run and for one that does not say (an old one)."""
    status = row.get("status")
    return None if pd.isna(status) or status == "completed" else str(status)


def plot_sweep_curves(path: Path, results: pd.DataFrame, keys: list[str]) -> Path | None:
    """Every run's learning curves, told apart by the keys that differ between those runs."""
    runs = job_tables(path, results, "metrics.csv")
    if not runs:
        return None
    rows = pd.DataFrame([row for row, _ in runs])
    keys = plotted_keys(rows, keys)
    labels = labels_of([row for row, _ in runs], keys)
    # a run that stopped early (diverged, failed, interrupted) says so: its curve ends where it stopped
    stopped = [_stopped(row) for row, _ in runs]
    labels = [f"{text} ({why})" if why else text for text, why in zip(labels, stopped)]
    fig = figure(figsize=(13, 4.8), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    run_looks = looks(rows, keys)
    for i, (row, m) in enumerate(runs):
        look = run_looks[i]
        ax_loss.plot(m["epoch"], m["train_loss"], label=labels[i], **look)
        ax_acc.plot(m["epoch"], m["test_acc"], **look)
        ax_acc.plot(m["epoch"], m["train_acc"], color=look["color"], linestyle=look["linestyle"], linewidth=0.8, alpha=0.35,
                    marker=look["marker"], markersize=3)  # a point too: one epoch has no line to draw
    smoothing = pd.to_numeric(rows.get("trainer.label_smoothing", pd.Series(dtype=float)), errors="coerce")
    if (smoothing > 0).any():  # the loss minimised: label smoothing lifts its floor above 0, so it reads as slower training
        ax_loss.set(xlabel="epoch", ylabel="training loss (cross-entropy, smoothed)",
                    title="training loss as minimised\n(label smoothing keeps it above 0: compare accuracy)")
    else:
        ax_loss.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="training loss")
    # a run that blew up would flatten every other curve to a line at 0 (one that diverged: from 10x on)
    if spans_decades(pd.concat([m["train_loss"] for _, m in runs]), decades=1.0 if "diverged" in stopped else 1.5):
        ax_loss.set_yscale("log")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (fraction correct)",
               title="test accuracy (bold), training accuracy (faint)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        epoch_axis(ax, pd.concat([m["epoch"] for _, m in runs]))
    if len(runs) > 1 or stopped[0]:  # one completed run needs no legend (it would read its job number)
        outside_legend(fig, len(runs), keys, labels)
    fig.suptitle(crowded(title(path, rows, keys, "learning curves"), len(runs)))
    return save_figure(fig, path / "report_curves.png")


def _short(value) -> str:
    """A setting for a legend: a search's 0.13397250122983567 as 0.134; a gap as the default."""
    if pd.isna(value):
        return "default"
    number = pd.to_numeric(value, errors="coerce")
    return f"{number:.4g}" if pd.notna(number) and not float(number).is_integer() else str(value)


def tick_label(value: str) -> str:
    """A category on an axis: on lines of MOST_TICK_CHARS, three at most (the table holds it whole)."""
    lines = textwrap.wrap(value, MOST_TICK_CHARS) or [value]
    if len(lines) > 3:
        lines = lines[:2] + [lines[2][:MOST_TICK_CHARS - 3] + "..."]
    return "\n".join(lines)


def plot_against(path: Path, results: pd.DataFrame, key: str, others: list[str], metric: str,
                 shade: str | None = None, without: pd.DataFrame | None = None) -> Path:
    """``metric`` against ``key``, one series per setting of the ``others``. A numeric key is a
    line (on a log axis when its values span a decade or more); a categorical one (norm_at,
    model, block) is points in the order the sweep ran them, not sorted by name. ``shade``: a
    numeric swept key with too many settings for a legend (ex_bn_lr's eight learning rates
    against model.norm), drawn as each point's colour, with a colour bar; against a categorical
    key the points of a setting also stand in the shade's order across its slot, so runs with the
    same score (eight untrained runs at 0.1) are all seen. ``without``: the runs of the folder
    that have no ``metric`` (one that diverged): the title counts them, and against a numeric key
    an x on the axis's foot marks each one's setting (how large a learning rate got), in its
    series' colour (black: a setting none of whose runs is shown), red with one series."""
    fig = figure(figsize=(8, 4.8), layout="constrained")
    ax = fig.subplots()
    if shade:
        from matplotlib.colors import LogNorm, Normalize

        tint = pd.to_numeric(results[shade], errors="coerce")
        scale = (LogNorm if tint.min() > 0 and spans_decades(tint) else Normalize)(tint.min(), tint.max())
    x_num = pd.to_numeric(results[key], errors="coerce")
    numeric = bool(x_num.notna().all())
    draws = numeric and key in IDENTIFIERS  # seeds, samples: points at whole numbers
    shown = results[key].map(_short)  # a run that did not set the key ran at its default
    categories = list(dict.fromkeys(shown))  # first appearance: the sweep's order
    groups = list(results.groupby(others, dropna=False, sort=False)) if others else [((), results)]
    width = 0.6 / max(len(groups), 1)
    for i, (values, group) in enumerate(groups):
        values = values if isinstance(values, tuple) else (values,)
        name = textwrap.fill(", ".join(f"{k}={_short(v)}" for k, v in zip(others, values)), LABEL_WIDTH) or metric.replace("_", " ")
        y = pd.to_numeric(group[metric], errors="coerce")
        look = style(i) | {"clip_on": False}  # a point at accuracy 0 or 1 drawn whole, not cut by the axis
        if shade:  # the points only, coloured by the shade key; the series by marker
            look = {"marker": "os^Dv<>p*h"[i % 10], "s": 36, "c": tint[group.index], "cmap": "viridis", "norm": scale,
                    "edgecolors": "black", "linewidths": 0.4, "clip_on": False}  # a point at accuracy 0 whole
            if numeric:
                x = x_num[group.index]
            else:  # within its slot each point stands at its shade's rank: equal scores stay apart, in order
                rank = tint[group.index].rank(method="dense")
                spread = (rank - 1) / (rank.max() - 1) - 0.5 if rank.max() > 1 else rank * 0
                offset = spread * 0.8 * width  # (every run has a shade value: only a fully numeric key is one)
                x = [categories.index(v) + (i - (len(groups) - 1) / 2) * width + o
                     for v, o in zip(shown[group.index], offset)]
            points = ax.scatter(x, y, label=name if others else None, **look)
        elif draws:
            ax.plot(x_num[group.index], y, label=name, **(look | {"linestyle": "none", "markersize": 7}))
        elif numeric:
            order = x_num[group.index].argsort()
            ax.plot(x_num[group.index].iloc[order], y.iloc[order], label=name, **look)
        else:
            x = [categories.index(v) + (i - (len(groups) - 1) / 2) * width for v in shown[group.index]]
            ax.plot(x, y, label=name, **(look | {"linestyle": "none", "markersize": 8}))
    # the runs without the metric (diverged), against a numeric key: an x on the axis's foot at each one's setting
    lost = pd.to_numeric(without[key], errors="coerce").dropna() if numeric and without is not None and key in without \
        else pd.Series(dtype=float)
    # with several series (lines) each x takes its series' colour: which setting diverged (without or with batch norm)
    series = {tuple(_short(v) for v in (values if isinstance(values, tuple) else (values,))): i
              for i, (values, _) in enumerate(groups)} if others and len(groups) > 1 and not shade else {}
    unplaced = 0  # with series: runs of a setting none of whose runs is shown (black)
    for index, at in lost.items():
        i = series.get(tuple(_short(without.at[index, k]) if k in without else "default" for k in others))
        unplaced += bool(series) and i is None
        colour = style(i)["color"] if i is not None else "black" if series else "tab:red"
        ax.plot([at], [0], "x", color=colour, markersize=9, markeredgewidth=2,
                transform=ax.get_xaxis_transform(), clip_on=False, zorder=5)
    if len(lost):
        x_num = pd.concat([x_num, lost])  # the axis and its ticks reach them too
    doubling = numeric and x_num.min() > 0 and x_num.max() >= 2 * x_num.min() and \
        all(float(v).is_integer() and int(v) & (int(v) - 1) == 0 for v in x_num)  # batch sizes 32, 64, 128, 256
    logarithmic = numeric and x_num.min() > 0 and (spans_decades(x_num) or doubling)
    if logarithmic:
        ax.set_xscale("log", base=2 if doubling else 10)
    ticks = sorted(x_num.unique()) if numeric else []
    at = [math.log10(t) for t in ticks] if logarithmic else ticks
    labelled = 1 < len(ticks) <= MOST_TICKS and all(b - a >= (at[-1] - at[0]) / 15 for a, b in zip(at, at[1:]))
    if labelled:  # a grid's values, each labelled; a search's draws keep the axis's own ticks
        label_values(ax, ticks)
    elif numeric and not logarithmic and all(float(v).is_integer() for v in x_num):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # seeds, epochs, depths: no tick at 2.5
    if metric.endswith("_acc"):  # a fraction: no margin below 0 or above 1
        low, high = ax.get_ylim()
        ax.set_ylim(max(low, 0), min(high, 1))
    if not numeric:  # a long value (an architecture's stage table) on a few short lines, its end cut beyond
        names = [tick_label(c) for c in categories]
        slanted = len(categories) > 4 or sum(max(map(len, n.splitlines())) for n in names) > 36  # would touch
        ax.set_xticks(range(len(categories)), names, rotation=20 if slanted else 0, ha="right" if slanted else "center")
        ax.set_xlim(-0.6, len(categories) - 0.4)
    ax.set(xlabel=key, ylabel=metric.replace("_", " "))
    ax.grid(alpha=0.3)
    if shade:
        fig.colorbar(points, ax=ax, label=shade)
    legend = outside_legend(fig, len(groups), others, ax.get_legend_handles_labels()[1]) if others else None  # one series: none
    for handle in legend.legend_handles if legend and shade else []:  # a marker's shape, not one run's colour
        handle.set_facecolor("white")
    # one title over the figure, legend and colour bar included (an axes' own sat off its centre)
    what = f"{metric.replace('_', ' ')} against {key}"
    text = crowded(title(path, results, [key, *others, *([shade] if shade else [])], what), len(groups))
    if without is not None and len(without):  # the curves count every run: say where the others went
        counts = without["status"].fillna("unfinished").value_counts()
        text += f"\nnot shown, no {metric.replace('_', ' ')}: " + ", ".join(f"{n} {status}" for status, n in counts.items())
        if len(lost):
            text += " (red x on the axis)" if not series else " (x on the axis, in its series' colour" + \
                ("; black: a setting with no run shown)" if unplaced else ")")
    fig.suptitle(text)
    return save_figure(fig, path / f"report_vs_{key.replace('/', '_')}.png")


def plot_sweep_bench(path: Path, results: pd.DataFrame, keys: list[str]) -> Path | None:
    runs = job_tables(path, results, "bench.csv")
    if not runs:
        return None
    keys = plotted_keys(pd.DataFrame([row for row, _ in runs]), keys)  # what sets these runs apart
    fig = figure(figsize=(13, 4.8), layout="constrained")
    ax_speed, ax_mem = fig.subplots(1, 2)
    measured = all(str(row.get("device", "cpu")).startswith("cuda") for row, _ in runs)
    # A CPU's peak resident memory only grows over a process (and a sweep is one process):
    # there the estimate of what each batch needs is the comparable number.
    memory = "peak_mem_mb" if measured else "estimated_mem_mb"
    for i, (row, b) in enumerate(runs):  # a run's colour; training solid, prediction dashed
        for mode, dash in (("train", "-"), ("infer", "--")):
            sel = b[(b["mode"] == mode) & (b["status"] == "completed")]
            ax_speed.plot(sel["batch_size"], sel["images_per_s"], dash, marker="o", color=f"C{i % 10}",
                          label=label(row, keys) if mode == "train" else None)
            ax_mem.plot(sel["batch_size"], sel[memory], dash, marker="o", color=f"C{i % 10}")
    ax_speed.set(xlabel="batch size", ylabel="throughput (images/s)", title="throughput (solid: training, dashed: prediction)")
    ax_mem.set(xlabel="batch size", ylabel="memory (MiB)",
               title=("measured peak GPU memory" if measured else "estimated memory (saved activations + weights + state)")
               + "\n(solid: training, dashed: prediction)")
    batch_size_axes((ax_speed, ax_mem), sorted({int(v) for _, b in runs for v in b["batch_size"]}))
    if len(runs) > 1:  # one run needs no legend
        outside_legend(fig, len(runs), keys)
    fig.suptitle(crowded(title(path, pd.DataFrame([row for row, _ in runs]), keys, "throughput and memory against batch size"),
                         len(runs)))
    return save_figure(fig, path / "report_bench.png")


def plot_sweep_summary(path: Path, results: pd.DataFrame, keys: list[str]) -> Path | None:
    """Runs of task=summary side by side: parameters and FLOPs per image, each split by layer
    kind (stacked), and the memory training and prediction need at the run's batch size."""
    runs = results[results.get("params_conv", pd.Series(dtype=float)).notna()] if "params_conv" in results else None
    if runs is None or len(runs) < 2:
        return None
    kinds = [k for k in ("conv", "linear", "norm", "other") if runs[[f"params_{k}", f"flops_{k}"]].fillna(0).to_numpy().any()]
    keys = plotted_keys(runs, keys)  # what sets these runs apart, not every run of the folder
    names = [text + (f" at {row['resolution']}" if "resolution" in runs and runs["resolution"].nunique() > 1 else "")
             for text, (_, row) in zip(labels_of([row for _, row in runs.iterrows()], keys), runs.iterrows())]
    # (the input size: a FLOP count means little without it)
    y = range(len(runs))
    fig = figure(figsize=(14, 1.9 + 0.35 * len(runs)), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    for ax, measure, unit, scale in ((axes[0], "params", "millions", 1e6), (axes[1], "flops", "GFLOPs per image", 1e9)):
        left = [0.0] * len(runs)
        for kind in kinds:
            values = (runs[f"{measure}_{kind}"].fillna(0) / scale).tolist()
            ax.barh(y, values, left=left, color=KIND_COLORS[kind], label=kind)
            left = [a + b for a, b in zip(left, values)]
        ax.set_xlim(0, max(left) * 1.05 or 1)  # the longest bar clear of the frame
        ax.set(xlabel=unit, title="parameters" if measure == "params" else "FLOPs (forward)")
    if "train_memory_mb" in runs:
        axes[2].barh([i - 0.2 for i in y], runs["train_memory_mb"], height=0.4, color="tab:red", label="memory to train")
        axes[2].barh([i + 0.2 for i in y], runs["infer_memory_mb"], height=0.4, color="tab:purple", label="memory to predict")
        batches = runs["batch_size"].dropna().unique() if "batch_size" in runs else []
        at = f"batch {int(batches[0])}" if len(batches) == 1 else "each run's data.batch_size"
        axes[2].set(xlabel=f"MiB (estimate, at {at})", title="memory")
    for ax in axes:
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(list(y), names)
    axes[0].invert_yaxis()
    # one legend under the panels: inside one it covered the longest bar
    handles, labels = (sum(pair, []) for pair in zip(axes[0].get_legend_handles_labels(), axes[2].get_legend_handles_labels()))
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize="small")
    shared = runs["resolution"].dropna().unique() if "resolution" in runs else []
    at = f" at {shared[0]} px" if len(shared) == 1 else ""  # (several: each bar's label names its own)
    fig.suptitle(crowded(title(path, runs, keys, f"what each network costs (task=summary){at}"), len(runs)))
    return save_figure(fig, path / "report_summary.png")


def _objective(path: Path) -> str | None:
    """A search's objective (``objective``, what each trial returned to Optuna); None for a grid
    sweep or another folder. Optuna's sweeper writes no multirun.yaml (Hydra's grid sweeper
    does): a search is told by the sweeper in its jobs' .hydra/hydra.yaml, the objective read from
    their config."""
    from omegaconf import OmegaConf

    for job in sorted(path.glob("*/.hydra/hydra.yaml")):
        try:
            sweeper = str(OmegaConf.select(OmegaConf.load(job), "hydra.sweeper._target_", default="") or "")
            config = OmegaConf.load(job.parent / "config.yaml")
        except Exception:  # noqa: BLE001 - unreadable: the next job's
            continue
        return OmegaConf.select(config, "objective", default=None) if sweeper and is_search({"_target_": sweeper}) else None
    return None


def report(path: str | Path, html: bool = False, plots: bool = True) -> tuple[pd.DataFrame, list[Path]]:
    """Print the table of the run(s) under ``path`` and write the report's PNGs there (and,
    with ``html``, report.html: everything in one self-contained page). ``plots=False``: the
    table alone (a sweep run with ``trainer.plot=false``)."""
    path = Path(path)
    results, keys = load_runs(path)
    results = fill_unset(path, results, keys)
    if {"eval_test_acc", "task"} <= set(results):  # a training run's is its final_test_acc again: only evaluations show one
        results.loc[results["task"] != "evaluate", "eval_test_acc"] = float("nan")
    swept = swept_keys(results, keys)
    columns = ["job", *swept, *[c for c in TABLE if c in results and results[c].notna().any()]]
    table = whole_numbers(results[columns].copy())
    for key in swept:  # an override's value is text: a search's 0.13397250122983567 reads 0.134
        numbers = pd.to_numeric(table[key], errors="coerce")
        if numbers.notna().all() and not (numbers == numbers.round()).all():
            table[key] = numbers
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 40):
        # whole numbers as integers, even beside a failed job's gap; other numbers to 4 significant digits
        # counts in the millions and billions with separators: 46,764,746 params, 1,876,292,352 FLOPs
        # a gap (a diverged run's accuracy) reads "-" in every column, whole-number ones (pandas' <NA>) included
        for c in table:
            counted = c in ("params", "params_conv", "params_linear", "flops")
            if counted or str(table[c].dtype) == "Int64":
                table[c] = table[c].map(lambda v: "-" if pd.isna(v) else f"{int(v):,}" if counted else str(int(v)))
            elif c.endswith("_mb") and pd.api.types.is_numeric_dtype(table[c]):  # MiB to one decimal: 1832.0 beside 844.9
                table[c] = table[c].map(lambda v: "-" if pd.isna(v) else f"{v:.1f}")
        show(table.to_string(index=False, float_format=lambda v: f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}", na_rep="-"))
    if not plots:
        show(f"no plots (trainer.plot=false): cnnbench-report {path} --html draws them")
        return results, []
    written = [plot_sweep_curves(path, results, keys), plot_sweep_bench(path, results, plotted_keys(results, keys)),
               plot_sweep_summary(path, results, plotted_keys(results, keys))]
    # what a search optimised (its multirun.yaml's objective), else the final accuracy or the best throughput
    metric = next((m for m in (_objective(path), "final_test_acc", "best_train_images_per_s")
                   if m and m in results and pd.to_numeric(results[m], errors="coerce").notna().any()), None)
    if metric:  # against each key the runs that measured it tried (a folder may mix tasks, resumes, ...)
        measured = results[results[metric].notna()]
        # the runs of the same tasks that have no such number (one that diverged): the plots' titles count them
        same_task = results["task"].isin(measured["task"]) if "task" in results else True
        unmeasured = results.loc[results[metric].isna() & same_task] if "status" in results else None
        tasks = set(measured["task"].dropna()) if "task" in measured else set()
        # bench.* says nothing about runs of other tasks (a folder of mixed runs: trainer=smoke sets bench.steps)
        axes = [k for k in plotted_keys(measured, keys) if k not in INDEX_KEYS and not (k.startswith("bench.") and tasks != {"bench"})]
        for key in axes if len(measured) > 1 else []:
            series, groups = [], 1
            for k in (k for k in axes if k != key and measured[k].nunique(dropna=False) <= MOST_SERIES):
                if groups * measured[k].nunique(dropna=False) <= MOST_LEGEND:  # a legend of at most MOST_LEGEND series
                    series, groups = series + [k], groups * measured[k].nunique(dropna=False)
            many = [k for k in axes if k not in series and k != key]  # too many settings for a legend
            shade = next((k for k in many if pd.to_numeric(measured[k], errors="coerce").notna().all()), None)
            written.append(plot_against(path, measured, key, series, metric, shade, unmeasured))
    if "model.space" in results:  # a design-space study (experiment=ds_anynet): EDFs, trends, good regions
        from .design_study import study_report
        written += study_report(path, results, plotted_keys(results, keys))
    written = [w for w in written if w]
    if html:
        from .html_report import write_html

        written.append(write_html(path, results, swept, written))
    if written:
        show("\n".join(f"wrote {w}" for w in written))
    return results, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cnnbench-report", description=__doc__.split("\n")[0])
    parser.add_argument("path", type=Path, help="a run dir, a sweep dir, or any folder holding runs and sweeps (e.g. outputs)")
    parser.add_argument("--html", action="store_true", help="also write report.html: table, plots, every job's curves and "
                        "confusion matrix in one self-contained page")
    args = parser.parse_args(argv)
    path = args.path
    if not path.exists():
        print(f"cnnbench-report: {path} does not exist; give a run dir, a sweep dir, or a folder holding them (e.g. outputs)",
              file=sys.stderr)
        return 2
    if path.is_file():  # summary.json, metrics.csv, results.csv ...: the run or sweep it is of
        print(f"cnnbench-report: {path} is a file; reporting on its folder, {path.parent}", file=sys.stderr)
        path = path.parent
    try:
        report(path, html=args.html)
    except FileNotFoundError as err:
        print(f"cnnbench-report: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
