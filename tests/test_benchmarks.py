"""The benchmark scripts run end to end at small scale (their numbers are for BENCHMARKS.md, not tests)."""
from __future__ import annotations

import shutil
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
    assert by.loc["synthetic", "compiled"] and not by.loc["book", "compiled"]  # pure compute is the graphed step's
    # the profiler's count of operators per step: the compiled step fuses many into few kernels
    assert by.loc["eager", "launches_per_step"] > by.loc["graphed", "launches_per_step"] > 0
    summary = pd.read_csv(tmp_path / "speed_summary.csv", index_col="model")
    assert list(summary.index) == ["bn_lenet"]
    assert {"speedup", "graphed_vs_eager", "pipeline_share", "eager_launches", "graphed_launches", "mfu"} <= set(summary.columns)
    assert summary.mfu.isna().all()  # no GPU peak to compare against on a CPU
    assert "profiler_start" not in proc.stdout + proc.stderr  # Kineto's C++ lines stay out of the table
    assert "bn_lenet" in proc.stdout.split("overrides:")[1] and "e+0" not in proc.stdout


def chapter_speed_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("chapter_speed", ROOT / "benchmarks" / "chapter_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_chapter_speed_table_reads_as_text():
    """Rates in whole images/s with separators (not 1.26e+04), ratios with an x, MFU in percent,
    '-' where a GPU figure was not measured."""
    summary = pd.DataFrame({"book_img_s": [4555.4], "eager_img_s": [12603.2], "speedup": [3.3217], "graphed_vs_eager": [1.296],
                            "pipeline_share": [0.9421], "eager_launches": [200.0], "compile_s": [6.27], "epoch_s": [0.426],
                            "mfu": [None]}, index=pd.Index(["bn_lenet"], name="model"))
    text = chapter_speed_module().readable(summary)
    assert text.loc["bn_lenet"].tolist() == ["4,555", "12,603", "3.32x", "1.30x", "0.94", "200", "6.3", "0.43", "-"]
    summary.loc["bn_lenet", "mfu"] = 0.4123
    assert chapter_speed_module().readable(summary).loc["bn_lenet", "mfu"] == "41.2%"


@pytest.mark.slow  # the book-style script evaluates 10,000 images through PIL and DataLoader workers
@pytest.mark.parametrize("which", ["--book", "--floor"])
def test_whole_run_benchmark_runs_the_book_style_script_and_the_floor(real_data, which):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "whole_run.py"), which, "--limit", "5"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("test accuracy ")


def test_cpu_precision_benchmark_times_each_setting(tiny_data):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_precision.py"), "--models", "bn_lenet,lenet",
                           "--batch", "8", "--steps", "1", "--rounds", "1", f"data.root={tiny_data}"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    table = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("|")]
    header, rows = table[0], table[2:]
    assert [cell.strip() for cell in header] == ["model", "px", "batch", "fp32 ms/step", "bf16 ms/step", "bf16 + cl ms/step",
                                                 "bf16 speed-up", "bf16 + cl speed-up"]
    assert [row[:3] for row in rows] == [[" bn_lenet ", " 28 ", " 8 "], [" lenet ", " 28 ", " 8 "]]  # d2l_bn_lenet, model=lenet
    for row in rows:
        fp32, bf16, cl = (float(ms) for ms in row[3:6])
        assert min(fp32, bf16, cl) > 0 and len(row) == len(header)
        for cell, other in zip(row[6:], (bf16, cl)):  # fp32's time over the setting's, from the unrounded medians
            speedup = float(cell.strip().rstrip("x"))  # the ms are printed to 0.05, the ratio to 0.005
            assert (fp32 - 0.05) / (other + 0.05) - 0.005 <= speedup <= (fp32 + 0.05) / max(other - 0.05, 1e-9) + 0.005


def test_chapter_speed_rejects_unknown_models():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "chapter_speed.py"), "--models", "lenet5"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 2 and "--models: ['lenet5'] are not book runs" in proc.stderr


def gpu_session(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_session.py"), "--out", str(tmp_path / "out"),
                           "--kit", str(tmp_path / "no-kit"), *args], capture_output=True, text=True, timeout=600, check=False)


def test_gpu_session_skips_what_its_budget_cannot_hold_and_says_so(tmp_path):
    proc = gpu_session(tmp_path, "--budget", "20", "--steps", "book,seeds")
    assert proc.returncode == 0, proc.stderr
    assert "[book: skipped" in proc.stdout and "[seeds: skipped" in proc.stdout
    results = (tmp_path / "out" / "results.md").read_text()
    assert "run it again with --steps book" in results and "--steps seeds" in results
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.md", "runs.tar.gz", "session.log"]
    bad = gpu_session(tmp_path, "--steps", "book,bok")
    assert bad.returncode == 2 and "--steps: unknown bok; choose from env, gpu_tests, parallel, book" in bad.stderr


@pytest.mark.slow  # three small sweeps of two recipes each, fast_resnet18's and two runs, in fresh processes (about 90 s)
def test_gpu_session_smoke_runs_the_book_sweeps_and_tabulates_them(tiny_data, tmp_path):
    """The GPU session's plumbing on the CPU at toy scale: the sweeps run, their runs land in the
    tables under the book's names, and the archive holds every run's summary."""
    import tarfile

    proc = gpu_session(tmp_path, "--smoke", "--steps", "env,parallel,book,seeds,fast,deterministic", "--data-root", str(tiny_data),
                       "--budget", "500")
    assert proc.returncode == 0, proc.stderr
    results = (tmp_path / "out" / "results.md").read_text()
    assert "**A smoke run: toy data" in results  # never to be read as a measurement
    assert "## Machine" in results and "torch " in results and "hydra " in results
    for heading in ("## The nine book runs one after another", "## The nine book runs at once"):
        table = results.split(heading)[1].split("##")[0]
        assert "| bn_lenet | completed |" in table and "| bn_lenet_scratch | completed |" in table, heading
    seeds = results.split("## The book runs over seeds 0-2")[1]
    assert "| bn_lenet | 3 |" in seeds and "| bn_lenet_scratch | 3 |" in seeds  # one seed from each sweep
    assert "## fast_resnet18 (passed" in results and "over 2 seeds" in results
    deterministic = results.split("## trainer.deterministic")[1]
    assert "| false | passed |" in deterministic and "| true | passed |" in deterministic
    with tarfile.open(tmp_path / "out" / "runs.tar.gz") as tar:
        names = tar.getnames()
    assert sum(n.endswith("summary.json") for n in names) == 10 and not any(n.endswith(".pt") for n in names)


def test_gpu_session_stops_a_step_at_its_time_limit(tmp_path):
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_session", ROOT / "benchmarks" / "gpu_session.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    session = module.Session(argparse.Namespace(out=tmp_path, budget=60, smoke=True, data_root=None))
    code, seconds = session.run("sleeper", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], 2)
    assert code is None and 2 <= seconds < 30
    assert session.last_lines == ["started"]
    assert "[sleeper: stopped after" in (tmp_path / "session.log").read_text()
    shutil.rmtree(session.work)
