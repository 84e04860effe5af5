"""The benchmark scripts run end to end at small scale (their numbers are for BENCHMARKS.md, not tests)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow  # compiles a model (a minute with a cold compile cache)
def test_chapter_speed_benchmark_runs_on_the_cpu(tiny_data, tmp_path):
    """Every pipeline of the chapter benchmark, eager and graphed (compiled: on the CPU inductor's
    C++ kernels, the same BN-LeNet graph the compile tests warm in the on-disk cache)."""
    out = tmp_path / "speed.csv"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "chapter_speed.py"), "--models", "bn_lenet",
         "--limit-batches", "3", "--epochs", "1", "--workers", "0", "--out", str(out),
         f"data.root={tiny_data}", "data.batch_size=20"],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out)
    assert sorted(rows.pipeline) == ["book", "eager", "graphed", "synthetic"]
    assert (rows.images_per_s > 0).all() and (rows.batch_size == 20).all() and set(rows.resolution) == {28}
    by = rows.set_index("pipeline")
    assert by.loc["graphed", "compiled"] and not by.loc["eager", "compiled"] and by.loc["graphed", "compile_s"] > 0
    # the profiler's count of operators per step: the compiled step fuses many into few kernels
    assert by.loc["eager", "launches_per_step"] > by.loc["graphed", "launches_per_step"] > 0
    summary = pd.read_csv(tmp_path / "speed_summary.csv", index_col="model")
    assert list(summary.index) == ["bn_lenet"]
    assert {"speedup", "graphed_vs_eager", "pipeline_share", "eager_launches", "graphed_launches", "mfu"} <= set(summary.columns)
    assert summary.mfu.isna().all()  # no GPU peak to compare against on a CPU


@pytest.mark.slow  # the book-style script evaluates 10,000 images through PIL and DataLoader workers
@pytest.mark.parametrize("which", ["--book", "--floor"])
def test_whole_run_benchmark_runs_the_book_style_script_and_the_floor(real_data, which):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "whole_run.py"), which, "--limit", "5"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("test accuracy ")


def test_chapter_speed_rejects_unknown_models():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "chapter_speed.py"), "--models", "lenet5"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--models: ['lenet5'] are not book runs" in proc.stderr
