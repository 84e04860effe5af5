"""Reports a person can read: distinct lines, legends outside, sweep titles, categorical keys in
the sweep's order, every run at any depth, integers as integers."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pandas as pd
import pytest

from cnnbench import report
from cnnbench.metrics import whole_numbers, write_csv, write_results


def fake_run(folder: Path, overrides: list[str], status="completed", acc=0.5, params=61706, epochs=2, config=None) -> None:
    folder.mkdir(parents=True)
    summary = {"task": "train", "model": "lenet", "status": status, "overrides": overrides, "final_test_acc": acc,
               "steady_epoch_time_s": 1.5, "wall_time_s": 9.0, "config": config or {}}
    if status == "completed":
        summary["params"] = params
        rows = [{"epoch": e, "train_loss": 2.0 / e, "train_acc": acc * e / epochs, "test_loss": 2.1 / e,
                 "test_acc": acc * e / epochs} for e in range(1, epochs + 1)]
        pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def figures(monkeypatch):
    """The figures the report draws, kept open to inspect (and still saved)."""
    kept = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: kept.__setitem__(path.name, fig) or path)
    return kept


def test_sixteen_jobs_get_sixteen_looks_and_the_legend_sits_outside(tmp_path, figures):
    places = ["none", "conv", "dense", "all"]
    for i in range(16):
        fake_run(tmp_path / str(i), [f"model.norm_at={places[i // 4]}", f"optimizer.lr={[0.01, 0.03, 0.1, 0.3][i % 4]}"], acc=i / 20)
    report.report(tmp_path)
    fig = figures["report_curves.png"]
    lines = [line for line in fig.axes[0].get_lines()]
    looks = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(lines) == 16 and len(looks) == 16
    legend = fig.legends[0]
    assert len(legend.get_texts()) == 16 and legend.get_title().get_text() == "model.norm_at x optimizer.lr"
    assert fig._suptitle.get_text() == "learning curves: lenet, 16 runs (model.norm_at x optimizer.lr)"
    assert len({(s["color"], s["linestyle"], s["marker"]) for s in map(report.style, range(40))}) == 40
    assert fig.axes[0].get_yscale() == "linear"  # losses from 2 to 1


def test_a_run_that_blew_up_puts_the_losses_on_a_log_axis(tmp_path, figures):
    for i, lr in enumerate([0.1, 30.0]):
        fake_run(tmp_path / str(i), [f"optimizer.lr={lr}"])
    metrics = tmp_path / "1" / "metrics.csv"
    blown = pd.read_csv(metrics).assign(train_loss=[250.0, float("nan")])  # the high rate's loss, then a diverged epoch
    blown.to_csv(metrics, index=False)
    summary = json.loads((tmp_path / "1" / "summary.json").read_text()) | {"status": "diverged"}
    (tmp_path / "1" / "summary.json").write_text(json.dumps(summary))
    report.report(tmp_path)
    assert figures["report_curves.png"].axes[0].get_yscale() == "log"
    legend = [t.get_text() for t in figures["report_curves.png"].legends[0].get_texts()]
    assert legend == ["optimizer.lr=0.1", "optimizer.lr=30.0 (diverged)"]  # its curve stops early: it says why
    assert report.spans_decades([2.0, 250.0, float("nan"), float("inf")], 1.5) and not report.spans_decades([2.0, 50.0], 1.5)
    # ex_bn_lr's plain LeNet stopped at a loss of 23.5 while the others train at 0.9-2: a log axis from 10x on
    blown.assign(train_loss=[23.5, float("nan")]).to_csv(metrics, index=False)
    report.report(tmp_path)
    assert figures["report_curves.png"].axes[0].get_yscale() == "log"


def test_a_categorical_key_keeps_the_sweeps_order_and_a_numeric_one_gets_a_log_axis(tmp_path, figures):
    places = ["none", "conv", "dense", "all"]  # the recipe's order, not the alphabet's
    for i, place in enumerate(places * 2):
        fake_run(tmp_path / str(i), [f"model.norm_at={place}", f"optimizer.lr={0.01 if i < 4 else 1.0}"], acc=0.1 * i)
    report.report(tmp_path)
    by_place = figures["report_vs_model.norm_at.png"].axes[0]
    assert [t.get_text() for t in by_place.get_xticklabels()] == places
    assert all(line.get_linestyle() == "None" for line in by_place.get_lines())  # points, not a line across categories
    by_lr = figures["report_vs_optimizer.lr.png"].axes[0]
    assert by_lr.get_xscale() == "log"
    assert sorted(t.get_text() for t in figures["report_vs_optimizer.lr.png"].legends[0].get_texts()) == \
        sorted(f"model.norm_at={p}" for p in places)


def test_the_report_finds_runs_and_sweeps_at_any_depth(tmp_path, figures):
    fake_run(tmp_path / "runs" / "2026-11-23" / "10-00-00_lenet", ["model=lenet"])
    for i in range(3):
        fake_run(tmp_path / "sweeps" / "2026-11-23" / "11-00-00" / str(i), [f"optimizer.lr={i}"])
    results, _ = report.report(tmp_path)
    assert sorted(results["job"]) == ["runs/2026-11-23/10-00-00_lenet", "sweeps/2026-11-23/11-00-00/0",
                                      "sweeps/2026-11-23/11-00-00/1", "sweeps/2026-11-23/11-00-00/2"]


def test_tables_show_integers_as_integers(tmp_path, capsys, figures):
    fake_run(tmp_path / "0", ["optimizer.lr=0.1"], params=61706)
    fake_run(tmp_path / "1", ["optimizer.lr=1e9"], status="failed")  # no params: a gap in the column
    report.report(tmp_path)
    printed = capsys.readouterr().out
    assert "61,706" in printed and "61706.0" not in printed and "61,706.0" not in printed  # counts with separators
    assert "steady_epoch_time_s" in printed.splitlines()[0]  # runs compare by their steady-state epochs, warm-up apart
    write_results(tmp_path)
    assert "61706.0" not in (tmp_path / "results.csv").read_text() and "61706" in (tmp_path / "results.csv").read_text()


def test_a_runs_tables_read_as_pandas_would_write_them(tmp_path):
    """write_csv (the csv module) and a DataFrame through whole_numbers give the same file: gaps
    empty, whole floats as integers, numpy floats as numbers, quoting, columns in order of first use."""
    import numpy as np

    rows = [{"a": 1.0, "b": 0.1, "c": None, "d": "x,y", "e": True},
            {"a": None, "b": np.float64(2.5), "c": 3, "d": "z", "f": float("nan"), "e": False},
            {"a": 61706.0, "b": 1e-05, "g": [1, 2]},
            {"h": 1}, {"h": 2.5, "i": np.float64(3.0), "j": np.float64("nan")}]  # ints beside a fraction read 1.0
    write_csv(tmp_path / "ours.csv", rows)
    whole_numbers(pd.DataFrame(rows)).to_csv(tmp_path / "pandas.csv", index=False)
    assert (tmp_path / "ours.csv").read_text() == (tmp_path / "pandas.csv").read_text()
    assert (tmp_path / "ours.csv").read_text().splitlines()[3:] == ['61706,1e-05,,,,,"[1, 2]",,,', ',,,,,,,1.0,,', ',,,,,,,2.5,3,']
    # a float32 is written as the shortest text that reads back to it, not as its float64 expansion
    write_csv(tmp_path / "f32.csv", [{"x": np.float32(0.1), "y": 1}, {"x": np.float32(2.0), "y": np.float32(0.5)}])
    assert (tmp_path / "f32.csv").read_text() == "x,y\n0.1,1.0\n2.0,0.5\n"


def test_epoch_axes_tick_whole_epochs_even_for_one_epoch(tmp_path, figures, monkeypatch):
    from cnnbench import metrics

    for i, lr in enumerate([0.1, 1.0]):
        fake_run(tmp_path / str(i), [f"optimizer.lr={lr}"], epochs=1)
    report.report(tmp_path)
    for ax in figures["report_curves.png"].axes:
        assert list(ax.get_xticks()) == [1] and ax.get_xlim() == (0.5, 1.5)
    # a resumed run's curves: its own epochs only, no fractional ticks
    kept = {}
    monkeypatch.setattr(metrics, "save_figure", lambda fig, path: kept.setdefault("fig", fig))
    rows = [{"epoch": e, "train_loss": 1.0, "test_loss": 1.1, "train_acc": 0.5, "test_acc": 0.5} for e in (11, 12)]
    metrics.plot_curves(rows, tmp_path / "curves.png", "resumed")
    assert all(list(ax.get_xticks()) == [11, 12] for ax in kept["fig"].axes)


def test_a_folder_of_unrelated_runs_plots_what_they_tried(tmp_path, figures):
    """outputs/ mixes sweeps, plain runs (at the config's values) and other tasks: the plain run's
    learning rate comes from its config, and no plot is drawn against the task or the resume."""
    for i, lr in enumerate([0.01, 1.0]):
        fake_run(tmp_path / "sweep" / str(i), [f"optimizer.lr={lr}"], acc=0.3 + i / 10)
    fake_run(tmp_path / "plain", [], acc=0.8, config={"optimizer": {"lr": 0.1}})
    fake_run(tmp_path / "twice", [], acc=0.8, config={"optimizer": {"lr": 0.1}})
    summary = tmp_path / "layers"
    summary.mkdir()
    (summary / "summary.json").write_text(json.dumps({"task": "summary", "model": "alexnet", "status": "completed",
                                                      "overrides": ["task=summary", "model=alexnet"], "params": 46764746}))
    results, written = report.report(tmp_path)
    assert sorted(p.name for p in written) == ["report_curves.png", "report_vs_optimizer.lr.png"]
    by_lr = figures["report_vs_optimizer.lr.png"].axes[0]
    assert by_lr.get_xscale() == "log" and sorted(by_lr.get_lines()[0].get_xdata()) == [0.01, 0.1, 0.1, 1.0]
    labels = [t.get_text() for t in figures["report_curves.png"].legends[0].get_texts()]
    assert sorted(labels) == ["optimizer.lr=0.01", "optimizer.lr=0.1 [plain]", "optimizer.lr=0.1 [twice]", "optimizer.lr=1.0"]


def test_a_default_and_an_override_of_the_same_value_are_one_value(tmp_path, figures):
    fake_run(tmp_path / "a", ["data.normalize=false"], config={"data": {"normalize": False}})
    fake_run(tmp_path / "b", ["data.normalize=True"], config={"data": {"normalize": True}})
    fake_run(tmp_path / "c", [], config={"data": {"normalize": False}})
    results, _ = report.report(tmp_path)
    assert sorted(results["data.normalize"]) == ["false", "false", "true"]


def test_two_swept_keys_give_colour_to_one_and_dashes_to_the_other():
    rows = pd.DataFrame({"model.norm": ["none"] * 8 + ["batch"] * 8, "optimizer.lr": [0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30] * 2})
    looks = report.looks(rows, ["model.norm", "optimizer.lr"])
    assert [look["color"] for look in looks[:8]] == [look["color"] for look in looks[8:]]  # a rate keeps its colour
    assert len({look["color"] for look in looks}) == 8
    assert {look["linestyle"] for look in looks[:8]} == {"-"} and {look["linestyle"] for look in looks[8:]} == {"--"}
    # one key, or too many values to tell apart this way: each run a look of its own
    assert len({(look["color"], look["linestyle"]) for look in report.looks(rows, ["optimizer.lr"])}) == 16


def test_batch_sizes_lie_on_a_doubling_axis_and_one_series_has_no_legend(tmp_path, figures):
    for i, batch in enumerate([32, 64, 128, 256]):
        fake_run(tmp_path / str(i), [f"data.batch_size={batch}"], acc=0.5 + i / 100)
    report.report(tmp_path)
    fig = figures["report_vs_data.batch_size.png"]
    assert fig.axes[0].get_xscale() == "log" and [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["32", "64", "128", "256"]
    assert not fig.legends


def test_a_trackers_copies_of_a_runs_files_are_not_runs(tmp_path):
    """MLflow keeps each run's files, summary.json included, in mlartifacts/ in the sweep dir."""
    from cnnbench.metrics import collect_results

    fake_run(tmp_path / "0", ["optimizer.lr=0.1"])
    copy = tmp_path / "mlartifacts" / "1" / "abc" / "artifacts"
    copy.mkdir(parents=True)
    (copy / "summary.json").write_text((tmp_path / "0" / "summary.json").read_text())
    assert [row["job"] for row in collect_results(tmp_path, recursive=True)] == ["0"]


def test_a_seed_is_points_and_a_searchs_draws_are_an_axis_not_a_legend(tmp_path, figures):
    """Seeds name draws: no line joins seed 0 to seed 1. A search's continuous draws (ten learning
    rates) are no series of their own, and a legend shows a drawn value to 4 digits."""
    for i in range(10):
        fake_run(tmp_path / "search" / str(i), [f"optimizer.lr={0.01 + i / 7}", f"optimizer.momentum={0.5 + i / 23}"])
    for seed in range(3):
        for norm in ("true", "false"):
            fake_run(tmp_path / "seeds" / f"{seed}{norm}", [f"seed={seed}", f"model.norm={norm}"], acc=0.5 + seed / 10)
    report.report(tmp_path / "search")
    by_lr = figures["report_vs_optimizer.lr.png"]
    assert by_lr.legends == []  # momentum's ten values: no ten-entry legend, but each point's colour
    assert by_lr.axes[1].get_ylabel() == "optimizer.momentum"  # the colour bar
    assert by_lr.axes[0].collections[0].get_array().tolist() == pytest.approx([0.5 + i / 23 for i in range(10)])
    report.report(tmp_path / "seeds")
    ax = figures["report_vs_seed.png"].axes[0]
    assert [line.get_linestyle() for line in ax.get_lines()] == ["None", "None"]
    assert [t.get_text() for t in figures["report_vs_seed.png"].legends[0].get_texts()] == ["model.norm=false", "model.norm=true"]
    assert report._short("0.13397250122983567") == "0.134" and report._short("64") == "64" and report._short(None) == "default"


def test_a_key_with_too_many_settings_for_a_legend_is_each_points_colour(tmp_path, figures):
    """ex_bn_lr: eight learning rates against model.norm. Sixteen same-coloured dots would not say
    which rate is which; each dot is coloured by its rate, on a log colour bar."""
    rates = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
    for i, (norm, lr) in enumerate((n, r) for n in ("none", "batch") for r in rates):
        fake_run(tmp_path / str(i), [f"model.norm={norm}", f"optimizer.lr={lr}"], acc=0.1 + i / 40)
    report.report(tmp_path)
    fig = figures["report_vs_model.norm.png"]
    ax, bar = fig.axes
    assert bar.get_ylabel() == "optimizer.lr" and bar.get_yscale() == "log"
    points = ax.collections[0]
    assert points.get_array().tolist() == rates * 2 and len(points.get_offsets()) == 16
    x = points.get_offsets()[:, 0].tolist()  # each norm's eight rates side by side, in order, within its slot
    assert x[:8] == sorted(x[:8]) and len(set(x[:8])) == 8 and -0.3 <= x[0] < x[7] <= 0.3
    assert [b - 1 for b in x[8:]] == pytest.approx(x[:8])
    assert "(model.norm x optimizer.lr)" in fig._suptitle.get_text()
    # against the rates, the two norms are a legend of two lines, as before
    assert sorted(t.get_text() for t in figures["report_vs_optimizer.lr.png"].legends[0].get_texts()) == \
        ["model.norm=batch", "model.norm=none"]


def test_a_run_that_left_a_swept_key_at_its_default_is_a_setting_of_its_own(tmp_path, figures):
    """With pandas' string columns a missing value stayed NaN where each run's look looked up
    'nan': the report of such a sweep failed (ValueError: 'nan' is not in list)."""
    for i, lr in enumerate([0.01, 0.1, 1.0]):
        fake_run(tmp_path / str(i), ["model.norm=batch", f"optimizer.lr={lr}"], acc=0.5 + i / 20)
    fake_run(tmp_path / "3", ["model.norm=none"], acc=0.3)  # at the default rate
    fake_run(tmp_path / "4", ["model.norm=none", "optimizer.lr=0.1"], acc=0.2)
    report.report(tmp_path)
    lines = figures["report_curves.png"].axes[0].get_lines()
    assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 5
    legend = [t.get_text() for t in figures["report_curves.png"].legends[0].get_texts()]
    assert legend[3:] == ["model.norm=none", "model.norm=none, optimizer.lr=0.1"]  # the default: the key left out


def test_a_search_is_plotted_against_its_own_objective(tmp_path, figures):
    """Optuna maximised best_test_acc: the plots against its draws show that, not final_test_acc."""
    for i in range(3):
        fake_run(tmp_path / str(i), [f"optimizer.lr={0.05 * (i + 1)}"], acc=0.5 + i / 10)
        summary = json.loads((tmp_path / str(i) / "summary.json").read_text()) | {"best_test_acc": 0.9 - i / 10}
        (tmp_path / str(i) / "summary.json").write_text(json.dumps(summary))
    def sweeper(target: str) -> None:  # each job's .hydra files, as Hydra writes them (Optuna writes no multirun.yaml)
        for i in range(3):
            (tmp_path / str(i) / ".hydra").mkdir(exist_ok=True)
            (tmp_path / str(i) / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  sweeper:\n    _target_: {target}\n")
            (tmp_path / str(i) / ".hydra" / "config.yaml").write_text("objective: best_test_acc\n")

    sweeper("hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper")
    report.report(tmp_path)
    assert figures["report_vs_optimizer.lr.png"].axes[0].get_ylabel() == "best test acc"
    sweeper("hydra._internal.core_plugins.basic_sweeper.BasicSweeper")
    report.report(tmp_path)  # a grid sweep: the final accuracy, as before
    assert figures["report_vs_optimizer.lr.png"].axes[0].get_ylabel() == "final test acc"


def test_a_folder_of_many_unrelated_runs_gets_readable_plots(tmp_path, figures):
    """`cnnbench-report outputs`: dozens of runs differing in many keys. No legend of thirty
    paragraphs (the table tells them apart), no title of every key, labels on several lines."""
    keys = ["optimizer.lr", "data.batch_size", "model.norm", "trainer.max_epochs", "data.subset", "model.width"]
    for i in range(30):
        fake_run(tmp_path / "sweeps" / str(i), [f"{k}={i % (j + 2)}" for j, k in enumerate(keys)], acc=i / 40)
    report.report(tmp_path)
    fig = figures["report_curves.png"]
    assert fig.legends == [] and "30 runs, too many for a legend" in fig._suptitle.get_text()
    assert "and 2 more keys" in fig._suptitle.get_text()
    assert all(len(line) <= report.LABEL_WIDTH for line in report.label(pd.Series(
        {"job": "0", **{k: 0.001 for k in keys}}), keys).splitlines())
    for name, fig in figures.items():  # laid out, no plot collapses to nothing (matplotlib warns when one does)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fig.draw_without_rendering()
        assert fig.axes[0].get_position().width > 0.2, name


def test_against_a_whole_numbered_key_the_ticks_are_whole_and_an_accuracy_stays_in_0_1(tmp_path, monkeypatch):
    """Epochs 2, 5, 10 had ticks at 2.5 and 7.5; accuracies all 0 had an axis down to -0.04."""
    import pandas as pd

    from cnnbench import report

    figures = []
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.append(fig) or path)
    results = pd.DataFrame({"job": range(6), "trainer.max_epochs": [2, 5, 10] * 2, "model.norm": ["none"] * 3 + ["batch"] * 3,
                            "final_test_acc": [0.0] * 6, "status": ["completed"] * 6})
    report.plot_against(tmp_path, results, "trainer.max_epochs", ["model.norm"], "final_test_acc", None)
    ax = figures[0].axes[0]
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    assert ax.get_ylim()[0] == 0


def test_titles_keep_the_run_count_with_its_keys_and_say_nothing_twice():
    one = report.title(Path("d"), pd.DataFrame({"model": ["resnet18"]}), [], "throughput and memory against batch size")
    assert one == "throughput and memory against batch size: resnet18, 1 run"  # was "1 run (one run)"
    four = pd.DataFrame({"model": ["alexnet", "vgg11_quarter", "nin", "googlenet"]})
    long = report.title(Path("d"), four, ["model"], "what each network costs (task=summary)")
    assert long.splitlines() == ["what each network costs (task=summary): alexnet, vgg11_quarter, nin, googlenet",
                                 "4 runs (model)"]
    assert report.title(Path("d"), four, ["model", "seed"], "sweep") == "sweep: alexnet, vgg11_quarter, nin, googlenet, 4 runs (model x seed)"
    for what in ("x" * 50, "x" * 51):  # 80 characters on one line at most
        assert max(map(len, report.title(Path("d"), four[:1], ["model"], what).splitlines())) <= 80
    assert report.title(Path("d"), four[:0], [], "sweep") == "sweep: d, 0 runs"


def test_a_folder_of_a_few_unlike_runs_gets_readable_plots_and_no_study(tmp_path, figures, capsys):
    """`cnnbench-report outputs/runs/DAY`: runs of other models, sizes and trackers, one with a
    stage table for model.arch, two design-space samples trained differently."""
    arch = "[[1,16,4,1.0],[2,32,4,1.0],[3,56,4,1.0],[5,112,4,1.0]]"
    fake_run(tmp_path / "a", ["model=bn_lenet", "trainer.max_epochs=15"], acc=0.9)
    fake_run(tmp_path / "b", ["model=regnetx32", f"model.arch={arch}", "trainer=smoke", "logger=mlflow",
                              "logger.mlflow.tracking_uri=foo://x"], acc=0.0)
    fake_run(tmp_path / "c", ["model=anynet_sample", "model.space=regnetx", "data.resize=28", "trainer=smoke"], acc=0.0)
    fake_run(tmp_path / "d", ["model=anynet_sample", "model.space=anynetx_a", "data.resize=4", "trainer=smoke"], acc=0.125)
    fake_run(tmp_path / "e", ["model=bn_lenet", "optimizer.lr=30"], status="diverged", acc=None)
    report.report(tmp_path)
    assert "design study: not drawn, its 2 networks were not trained alike (they differ in data.resize)" in capsys.readouterr().out
    assert "report_edf.png" not in figures and "report_vs_logger.mlflow.tracking_uri.png" not in figures  # where it logged
    for name, fig in figures.items():  # laid out: no legend wider than the figure, no axes collapsed (matplotlib warns)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fig.draw_without_rendering()
        assert fig.axes[0].get_position().width > 0.2, name
    against_arch = figures["report_vs_model.arch.png"]
    ticks = [t.get_text() for t in against_arch.axes[0].get_xticklabels()]
    assert arch not in ticks and all(len(line) <= report.MOST_TICK_CHARS for t in ticks for line in t.splitlines())
    assert against_arch._suptitle.get_text().startswith("final test acc against model.arch: bn_lenet, regnetx32")
    assert against_arch._suptitle.get_text().endswith("\nnot shown, no final test acc: 1 diverged")  # the curves show it


def test_a_grid_of_batch_sizes_is_labelled_with_its_values(tmp_path, figures):
    """Batch sizes 64 and 128 had a linear axis ticked 72, 80, 88, ..."""
    results = pd.DataFrame({"job": range(4), "data.batch_size": [64, 128] * 2, "optimizer.lr": ["0.01"] * 2 + ["0.1"] * 2,
                            "final_test_acc": [0.8, 0.82, 0.85, 0.84], "status": ["completed"] * 4})
    report.plot_against(tmp_path, results, "data.batch_size", ["optimizer.lr"], "final_test_acc", None)
    ax = figures["report_vs_data.batch_size.png"].axes[0]
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_xticklabels()] == ["64", "128"]
    results["data.batch_size"] = [1024, 2048] * 2  # not 1.02e+03
    report.plot_against(tmp_path, results, "data.batch_size", ["optimizer.lr"], "final_test_acc", None)
    assert [t.get_text() for t in figures["report_vs_data.batch_size.png"].axes[0].get_xticklabels()] == ["1024", "2048"]


def test_a_long_category_stays_within_three_short_lines():
    assert report.tick_label("[[1,16,4,1.0],[2,32,4,1.0]]") == "[[1,16,4,1.0],[2,32,4,1.\n0]]"
    cut = report.tick_label("x" * 100).splitlines()
    assert len(cut) == 3 and cut[-1].endswith("...") and max(map(len, cut)) == report.MOST_TICK_CHARS


def test_a_searchs_twenty_trials_fit_their_legend_and_read_to_four_digits(tmp_path, figures):
    """Optuna's draws (optimizer.lr=0.5293958749576695) made two-line entries that ran off the figure."""
    for i in range(20):
        fake_run(tmp_path / str(i), [f"optimizer.lr={0.01 * 1.3 ** i + 1e-9 * i}", f"optimizer.momentum={[0.0, 0.9][i % 2]}",
                                     f"data.batch_size={[64, 128, 256][i % 3]}"], acc=i / 40)
    report.report(tmp_path)
    fig = figures["report_curves.png"]
    fig.draw_without_rendering()
    legend, frame = fig.legends[0].get_window_extent(), fig.bbox
    assert frame.y0 <= legend.y0 and legend.y1 <= frame.y1  # every entry on the figure
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    assert texts[1].startswith("optimizer.lr=0.013, optimizer.momentum=0.9,")  # not 0.013000001


def test_batch_size_panels_start_at_zero_and_tick_the_sizes_run():
    """Memory of 40-45 MB drawn from 0, not from 40 (where 45 would look like twice 42)."""
    from cnnbench.metrics import batch_size_axes, figure

    fig = figure()
    ax = fig.subplots()
    ax.plot([32, 64, 128], [40, 42, 45])
    batch_size_axes([ax], [32, 64, 128])
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 45
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "64", "128"] and ax.get_xscale() == "log"


def test_runs_that_diverged_are_marked_where_they_were_on_a_numeric_axis(tmp_path, figures):
    """How large can the learning rate get? The rates that blew up have no accuracy to plot: each
    is a red x on the axis's foot, and the axis reaches and ticks them."""
    for i, lr in enumerate([0.01, 0.1, 1.0]):
        fake_run(tmp_path / str(i), [f"optimizer.lr={lr}"], acc=0.3 + 0.1 * i)
    fake_run(tmp_path / "3", ["optimizer.lr=30.0"], status="diverged", acc=None)
    report.report(tmp_path)
    fig = figures["report_vs_optimizer.lr.png"]
    crosses = [line for line in fig.axes[0].get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [30.0] and crosses[0].get_color() == "tab:red"
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.01", "0.1", "1", "30"]
    assert fig._suptitle.get_text().endswith("not shown, no final test acc: 1 diverged (red x on the axis)")


def test_with_and_without_batch_norm_each_diverged_rate_takes_its_series_colour(tmp_path, figures):
    """ex_bn_lr's question, how large the rate can get without and with batch norm: an x in red
    would not say which of the two lines lost the run."""
    for i, (norm, lr) in enumerate([(n, lr) for n in ("none", "batch") for lr in (0.1, 1.0, 30.0)]):
        blew_up = norm == "none" and lr == 30.0
        fake_run(tmp_path / str(i), [f"model.norm={norm}", f"optimizer.lr={lr}"], status="diverged" if blew_up else "completed",
                 acc=None if blew_up else 0.5)
    report.report(tmp_path)
    ax = figures["report_vs_optimizer.lr.png"].axes[0]
    colour = {line.get_label(): line.get_color() for line in ax.get_lines() if line.get_label().startswith("model.norm=")}
    crosses = [line for line in ax.get_lines() if line.get_marker() == "x"]
    assert len(crosses) == 1 and list(crosses[0].get_xdata()) == [30.0]
    assert crosses[0].get_color() == colour["model.norm=none"] != colour["model.norm=batch"]
    assert "(x on the axis, in its series' colour)" in figures["report_vs_optimizer.lr.png"]._suptitle.get_text()
    # a setting whose every run diverged has no line, hence no colour: its x is black, and the title says so
    fake_run(tmp_path / "6", ["model.norm=scratch", "optimizer.lr=30.0"], status="diverged", acc=None)
    report.report(tmp_path)
    ax = figures["report_vs_optimizer.lr.png"].axes[0]
    assert sorted(str(line.get_color()) for line in ax.get_lines() if line.get_marker() == "x") == sorted([colour["model.norm=none"], "black"])
    assert "; black: a setting with no run shown)" in figures["report_vs_optimizer.lr.png"]._suptitle.get_text()


def test_the_summary_plots_legend_stands_under_the_panels_not_over_a_bar(tmp_path, figures):
    """Inside a panel (lower right) it covered the longest bar (vgg11_quarter's 43 M parameters)."""
    rows = [{"model": name, "resolution": res, "params_conv": conv, "params_linear": linear, "flops_conv": 1e9, "flops_linear": 1e8,
             "params_norm": 0, "flops_norm": 0, "params_other": 0, "flops_other": 0,
             "train_memory_mb": 900.0, "infer_memory_mb": 400.0, "batch_size": 128}
            for name, res, conv, linear in (("alexnet", "224x224", 3.7e6, 43e6), ("resnet18", "96x96", 11.2e6, 5e3),
                                            ("vgg11_quarter", "224x224", 0.6e6, 42.5e6))]
    report.plot_sweep_summary(tmp_path, pd.DataFrame(rows), ["model"])
    fig = figures["report_summary.png"]
    assert all(ax.get_legend() is None for ax in fig.axes)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["conv", "linear", "memory to train", "memory to predict"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "model=alexnet at 224x224", "model=resnet18 at 96x96", "model=vgg11_quarter at 224x224"]
    assert " at " not in fig._suptitle.get_text()  # each bar names its own resolution
    report.plot_sweep_summary(tmp_path, pd.DataFrame(rows).assign(resolution="96x96"), ["model"])
    fig = figures["report_summary.png"]  # one resolution for all: the title names it (FLOPs and memory depend on it)
    assert "what each network costs (task=summary) at 96x96 px" in fig._suptitle.get_text()
    assert fig.axes[1].get_xlim()[1] > 1.0e9 * 1.1 / 1e9  # the longest bar clear of the frame


def test_bench_settings_are_no_axis_for_training_runs(tmp_path, figures):
    """A folder of mixed runs (cnnbench-report outputs): bench.steps differs between training runs
    only because trainer=smoke sets it, and training never reads it."""
    for i, steps in enumerate([2, 10, 2]):
        fake_run(tmp_path / str(i), [f"bench.steps={steps}", f"optimizer.lr={[0.1, 0.1, 0.3][i]}"], acc=0.5 + 0.1 * i)
    report.report(tmp_path)
    assert "report_vs_optimizer.lr.png" in figures and "report_vs_bench.steps.png" not in figures


def test_the_tables_memory_reads_to_one_decimal(tmp_path, capsys):
    """Four significant digits printed 1832 beside 844.9 in one column."""
    for i, (model, mib) in enumerate([("alexnet", 844.94), ("vgg11_quarter", 1832.21)]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "summary.json").write_text(json.dumps(
            {"task": "summary", "model": model, "status": "completed", "overrides": [f"model={model}"], "params": 1,
             "train_memory_mb": mib, "config": {}}))
    report.report(tmp_path, plots=False)
    table = capsys.readouterr().out
    assert " 844.9" in table and " 1832.2" in table
