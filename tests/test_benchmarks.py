"""The benchmark scripts run end to end at small scale (their numbers are for BENCHMARKS.md, not tests)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).parents[1]


def test_chapter_speed_benchmark_runs_on_the_cpu(tiny_data, tmp_path):
    out = tmp_path / "speed.csv"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "chapter_speed.py"), "--models", "bn_lenet,regnetx32",
         "--limit-batches", "2", "--epochs", "1", "--workers", "0", "--out", str(out),
         f"data.root={tiny_data}", "data.batch_size=16"],
        capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    rows = pd.read_csv(out)
    assert sorted(rows.pipeline.unique()) == ["book", "cnnbench", "synthetic"]
    assert (rows.groupby("model").size() == 3).all() and (rows.images_per_s > 0).all()
    assert (rows.batch_size == 16).all() and set(rows.resolution) == {28, 96}
    summary = pd.read_csv(tmp_path / "speed_summary.csv", index_col="model")
    assert list(summary.index) == ["bn_lenet", "regnetx32"]
    assert {"speedup", "pipeline_share", "first_epoch_s", "mfu"} <= set(summary.columns)
    assert summary.mfu.isna().all()  # no GPU peak to compare against on a CPU


def test_chapter_speed_rejects_unknown_models():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "chapter_speed.py"), "--models", "lenet5"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--models: ['lenet5'] are not book runs" in proc.stderr
