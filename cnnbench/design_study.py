"""The analysis of a design-space study (d2l 8.8; Radosavovic et al. 2020; pycls's sweep analysis).

Reads a sweep's results (one row per job, with a ``model.space`` column and the drawn ``ds_*``
columns that ``anynet_sample`` runs record) and writes, into the sweep dir:

- ``report_edf.png``: the empirical distribution function of final test error per space (the
  paper's figure): F(e) is the fraction of the space's networks with error at most e. A space
  whose curve lies to the left and above is the better one.
- ``report_ds_scatter.png``: error against each drawn quantity (total depth, widest stage, group
  width, bottleneck ratio, FLOPs, parameters), one colour and one least-squares trend line per space.
- ``design_study.csv``: per space, n, the errors' minimum, median and mean, and the area between
  its EDF and each other space's (in percentage points of error: the mean difference in error
  when one curve lies wholly left of the other).
- ``design_study_good_region.csv``: per space and quantity, the bootstrap range of the quantity
  among the best networks (the paper's Figure 5: draw a quarter of the networks with replacement,
  keep the best one's value, repeat, quote the 2.5/50/97.5 percentiles).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import collect_results, figure, save_figure

SPACE = "model.space"
# Drawn quantity -> axis label. Group width and bottleneck ratio are means over the four stages
# (one value in every space but AnyNetX_A and _B).
QUANTITIES = {
    "ds_depth": "total depth (blocks)",
    "ds_max_width": "widest stage (channels)",
    "ds_group_width": "group width (mean over stages)",
    "ds_bottleneck_ratio": "bottleneck ratio (inner / width, mean)",
    "flops": "forward FLOPs per image",
    "params": "parameters",
}
LOG_SCALE = {"flops", "params"}


def load_results(sweep_dir: str | Path) -> pd.DataFrame:
    """A sweep's results: its results.csv, else its jobs' summaries as the end of a sweep reads them."""
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / "results.csv"
    return pd.read_csv(path) if path.is_file() else pd.DataFrame(collect_results(sweep_dir))


def study_errors(results: pd.DataFrame) -> pd.DataFrame:
    """The completed jobs with their space and final test error in percent (column ``error``)."""
    done = results[(results.get("status") == "completed") & results[SPACE].notna()].copy()
    done["error"] = 100 * (1 - pd.to_numeric(done["final_test_acc"], errors="coerce"))
    done[SPACE] = done[SPACE].astype(str)
    return done[done["error"].notna()]


def edf(errors, at) -> np.ndarray:
    """The empirical distribution function of ``errors`` at the points ``at``: the fraction of
    errors at most each point."""
    errors = np.sort(np.asarray(errors, dtype=float))
    return np.searchsorted(errors, np.asarray(at, dtype=float), side="right") / len(errors)


def area_between(a, b) -> float:
    """The area between the EDFs of ``a`` and ``b``: the integral of |F_a - F_b| over the error
    axis (both are step functions, so the sum over the steps is exact). In the units of the errors;
    equal to mean(b) - mean(a) when a's curve lies wholly left of b's."""
    points = np.unique(np.concatenate([np.asarray(a, dtype=float), np.asarray(b, dtype=float)]))
    if len(points) < 2:
        return 0.0
    gap = np.abs(edf(a, points[:-1]) - edf(b, points[:-1]))
    return float(np.sum(gap * np.diff(points)))


def good_region(values, errors, top: float = 0.25, reps: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Bootstrap range of ``values`` among the best networks: ``reps`` times draw ``top`` of the
    networks with replacement and keep the value of the one with the least error; return the
    2.5th, 50th and 97.5th percentiles of the kept values."""
    values, errors = np.asarray(values, dtype=float), np.asarray(errors, dtype=float)
    k = max(1, int(round(top * len(values))))
    idx = np.random.default_rng(seed).integers(0, len(values), size=(reps, k))
    best = idx[np.arange(reps), np.argmin(errors[idx], axis=1)]
    lo, mid, hi = np.percentile(values[best], [2.5, 50, 97.5])
    return float(lo), float(mid), float(hi)


def study_table(done: pd.DataFrame) -> pd.DataFrame:
    """Per space: n, error min / median / mean (%), and the area between its EDF and each other's."""
    spaces = list(dict.fromkeys(done[SPACE]))
    rows = []
    for space in spaces:
        e = done.loc[done[SPACE] == space, "error"]
        row = {"space": space, "n": len(e), "error_min": e.min(), "error_median": e.median(), "error_mean": e.mean()}
        for other in spaces:
            if other != space:
                row[f"area_vs_{other}"] = area_between(e, done.loc[done[SPACE] == other, "error"])
        rows.append(row)
    columns = ["space", "n", "error_min", "error_median", "error_mean", *(f"area_vs_{space}" for space in spaces)]
    return pd.DataFrame(rows, columns=columns)  # the areas in the spaces' order (a space's own is blank)


def good_region_table(done: pd.DataFrame, top: float = 0.25) -> pd.DataFrame:
    rows = []
    for space, group in done.groupby(SPACE, sort=False):
        for q in QUANTITIES:
            if q in group and pd.to_numeric(group[q], errors="coerce").notna().all():
                lo, mid, hi = good_region(pd.to_numeric(group[q]), group["error"], top)
                rows.append({"space": space, "quantity": q, "n": len(group), "top": top,
                             "low": lo, "median": mid, "high": hi, "all_min": group[q].min(), "all_max": group[q].max()})
    return pd.DataFrame(rows)


def plot_edf(done: pd.DataFrame, path: Path) -> Path:
    fig = figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    spaces = list(dict.fromkeys(done[SPACE]))
    first = spaces[0]
    for i, space in enumerate(spaces):
        e = np.sort(done.loc[done[SPACE] == space, "error"].to_numpy())
        area = "" if space == first else \
            f", area vs {first} {area_between(e, done.loc[done[SPACE] == first, 'error']):.2f}"
        ax.step(np.concatenate([[e[0]], e]), np.arange(len(e) + 1) / len(e), where="post",
                linestyle=("-", "--", ":", "-.")[i % 4],  # equal EDFs (a smoke study's) stay visible over each other
                label=f"{space} (n={len(e)}, min {e[0]:.1f}%, mean {e.mean():.1f}%{area})")
    ax.set(xlabel="final test error (%)", ylabel="cumulative probability",
           title="EDF of test error per design space")
    ax.set_ylim(0, 1)
    lo, hi = done["error"].min(), done["error"].max()
    pad = 0.04 * (hi - lo) or 0.5
    ax.set_xlim(lo - pad, hi + pad)  # the last step is not drawn on the frame
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    return save_figure(fig, path)


def plot_scatter(done: pd.DataFrame, path: Path) -> Path | None:
    quantities = [q for q in QUANTITIES if q in done and pd.to_numeric(done[q], errors="coerce").notna().any()]
    if not quantities:
        return None
    cols = 3
    rows = -(-len(quantities) // cols)
    fig = figure(figsize=(4.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, q in zip(axes.flat, quantities):
        for i, (space, group) in enumerate(done.groupby(SPACE, sort=False)):
            x, y = pd.to_numeric(group[q], errors="coerce").to_numpy(dtype=float), group["error"].to_numpy(dtype=float)
            ok = np.isfinite(x) & np.isfinite(y)
            x, y = x[ok], y[ok]
            color = f"C{i}"
            ax.scatter(x, y, s=14, alpha=0.7, color=color, label=space)
            if len(np.unique(x)) >= 2:  # least-squares line (on log x for FLOPs and parameters)
                fx = np.log10(x) if q in LOG_SCALE else x
                slope, intercept = np.polyfit(fx, y, 1)
                grid = np.linspace(fx.min(), fx.max(), 50)
                ax.plot(10**grid if q in LOG_SCALE else grid, slope * grid + intercept, color=color, linewidth=1.5)
        if q in LOG_SCALE:  # labels as 30k, 2M: a narrow span is labelled at its minor ticks, a wide one at its decades
            from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

            ax.set_xscale("log")
            values = pd.to_numeric(done[q], errors="coerce")
            values = values[values > 0]
            narrow = len(values) > 0 and values.max() < 10 * values.min()
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
            if narrow:  # 20k, 50k, 100k, 200k: labelled minor ticks at 2 and 5 of each decade
                ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
            ax.xaxis.set_minor_formatter(EngFormatter(sep="") if narrow else NullFormatter())
        ax.set(xlabel=QUANTITIES[q], ylabel="final test error (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(quantities):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle("test error against each drawn quantity (lines: least-squares trend per space)")
    return save_figure(fig, path)


def study_report(path: str | Path, results: pd.DataFrame | None = None, keys: list[str] = ()) -> list[Path]:
    """Print the study's tables and write its plots and CSVs into the sweep dir ``path``. ``keys``:
    the settings that differ between the runs (a folder may hold more than one study): the
    networks compared must have been trained alike, or the study says which settings differ and
    compares nothing."""
    path = Path(path)
    results = load_results(path) if results is None else results
    if SPACE not in results:
        return []
    done = study_errors(results)
    if done.empty:
        print("design study: no completed job with a test accuracy yet")
        return []
    from .report import _short  # a setting as the report's table tells them apart: 5e-2 is 0.05

    unlike = [k for k in keys if k not in (SPACE, "model.sample", "seed") and k in done and done[k].map(_short).nunique() > 1]
    if unlike:
        print(f"design study: not drawn, its {len(done)} networks were not trained alike (they differ in "
              f"{', '.join(unlike)}); report a study's own sweep dir")
        return []
    table = study_table(done)
    region = good_region_table(done)
    written = [plot_edf(done, path / "report_edf.png"), plot_scatter(done, path / "report_ds_scatter.png")]
    for name, frame in (("design_study.csv", table), ("design_study_good_region.csv", region)):
        tmp = path / f".{name}.tmp"
        frame.to_csv(tmp, index=False)
        tmp.replace(path / name)
        written.append(path / name)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        print("design study: final test error (%) per space, area between EDFs (percentage points)")
        print(table.to_string(index=False, na_rep="-"))  # a space against itself: no area
        if not region.empty:
            print("good region: bootstrap range of each quantity among the best quarter of each space")
            print(region[["space", "quantity", "low", "median", "high", "all_min", "all_max"]].to_string(index=False))
    return [w for w in written if w]
