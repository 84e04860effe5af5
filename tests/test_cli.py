"""The installed command, run as a user would: real subprocesses, real files."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import zipfile

import pandas as pd
import pytest

from cnnbench.metrics import COLUMNS
from cnnbench.models import list_models


def cnnbench(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "cnnbench", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_one_run_writes_its_files(real_data, tmp_path):
    out = tmp_path / "run"
    # started from another directory: the command finds its configs and writes only into the run dir
    proc = cnnbench("trainer=smoke", "trainer.limit_train_batches=20", "data.batch_size=32", "trainer.checkpoint=true",
                    f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    metrics = pd.read_csv(out / "metrics.csv")
    # its last line gives the accuracy and names the run dir and the files in it
    assert proc.stderr.strip().splitlines()[-1] == (
        f"cnnbench: run completed (test accuracy {metrics['test_acc'].iloc[-1]:.4f} on 16 test images, best "
        f"{metrics['test_acc'].max():.4f}) "
        f"in {out}: cnnbench.log, confusion.csv, confusion.png, curves.png, last.pt, metrics.csv, mistakes.png, per_class.csv, "
        "summary.json")
    assert list(metrics.columns) == COLUMNS
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics.notna().all().all()
    summary = json.loads((out / "summary.json").read_text())
    for key in ("model", "status", "params", "flops", "final_test_acc", "best_test_acc", "wall_time_s", "device", "seed", "overrides"):
        assert key in summary, key
    assert summary["status"] == "completed" and summary["model"] == "bn_lenet"
    assert summary["overrides"][0] == "trainer=smoke"
    assert (out / "curves.png").is_file() and (out / ".hydra" / "config.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written to the working directory


def test_multirun_writes_one_dir_per_job(real_data, tmp_path):
    proc = cnnbench("-m", "trainer=smoke", "trainer.plot=false", "optimizer.lr=0.01,0.1", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    for job, lr in (("0", 0.01), ("1", 0.1)):
        summary = json.loads((tmp_path / job / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["config"]["optimizer"]["lr"] == lr
        assert len(pd.read_csv(tmp_path / job / "metrics.csv")) == 2


def test_a_sweep_whose_jobs_diverged_says_that_is_a_result(tiny_data, tmp_path):
    proc = cnnbench("-m", "model=lenet", "trainer=smoke", "trainer.plot=false", f"data.root={tiny_data}", "optimizer.lr=0.01,1e38",
                    f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 1  # a script notices
    assert "1 job(s) did not complete: 1 (diverged); divergence is what these settings did" in proc.stderr


def test_a_failing_job_does_not_stop_the_sweep(tiny_data, tmp_path):
    # a data root that turns out empty only when the job loads its data: checks before the sweep pass
    (tmp_path / "empty").mkdir()
    proc = cnnbench("-m", "trainer=smoke", "trainer.plot=false", f"data.root={tiny_data},{tmp_path / 'empty'}", "data.download=false",
                    f"hydra.sweep.dir={tmp_path / 'sweep'}")
    tmp_path = tmp_path / "sweep"
    assert proc.returncode == 1  # every job ran, one did not complete
    assert "1 job(s) did not complete: 1 (failed)" in proc.stderr
    assert "<NA>" not in proc.stdout and "NaN" not in proc.stdout and " failed " in proc.stdout  # its gaps read "-"
    assert json.loads((tmp_path / "0" / "summary.json").read_text())["status"] == "completed"
    failed = json.loads((tmp_path / "1" / "summary.json").read_text())
    assert failed["status"] == "failed" and failed["error"]
    results = pd.read_csv(tmp_path / "results.csv")  # one row per job, the failed one included
    assert results["job"].tolist() == [0, 1] and results["data.root"].tolist()[0] == str(tiny_data)
    assert results["status"].tolist() == ["completed", "failed"]


def test_summary_sweep_compares_models_in_results_csv(tmp_path):
    proc = cnnbench("-m", "task=summary", "trainer.plot=false", "model=alexnet,vgg11_quarter,nin,googlenet", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    results = pd.read_csv(tmp_path / "results.csv").set_index("model")
    assert results.index.tolist() == ["alexnet", "vgg11_quarter", "nin", "googlenet"]
    assert (results["status"] == "completed").all()
    assert results.loc["alexnet", "params"] == 46_764_746
    # NiN and GoogLeNet replace the dense layers with global pooling: far fewer parameters
    assert results.loc["nin", "params"] < results.loc["alexnet", "params"] / 20
    assert results.loc["googlenet", "params_linear"] < 20_000
    for column in ("flops", "params_conv", "flops_linear", "train_memory_mb", "infer_memory_mb"):
        assert results[column].notna().all(), column
    # what a task prints stays in its log file too, once (the console has it on stdout, not twice)
    log = (tmp_path / "0" / "cnnbench.log").read_text()
    assert log.count("total:   46,764,746 params") == 1 and "memory at batch 128" in log
    assert "46,764,746" not in proc.stderr
    assert "features.0" in log and "features.0" not in proc.stdout  # the console gets each job's totals, not its layers
    assert "alexnet at 224x224:\n   total:   46,764,746 params" in proc.stdout
    assert " 1,876,292,352 " in proc.stdout  # the results table's FLOPs, readable
    assert " 3,723,968    43,040,778 " in proc.stdout  # and where AlexNet's parameters are: conv, dense
    from cnnbench.report import report

    _, written = report(tmp_path)  # the pictures: each network's parameters, FLOPs and memory side by side
    assert [w.name for w in written] == ["report_summary.png"] and written[0].stat().st_size > 10_000


def test_a_diverged_run_exits_3_and_keeps_its_files(tiny_data, tmp_path):
    proc = cnnbench("model=lenet", f"data.root={tiny_data}", "optimizer.lr=1e38", "data.batch_size=16", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 3
    assert "run diverged: the training loss became nan in epoch 1" in proc.stderr
    def no_nan(constant):
        raise AssertionError(f"summary.json holds {constant}, which is not JSON")

    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=no_nan)  # standard JSON, as a browser reads it
    assert summary["status"] == "diverged" and summary["final_test_acc"] is None and summary["best_test_acc"] is None
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 1


def test_a_reader_that_stops_early_costs_the_run_nothing(tmp_path):
    # `cnnbench task=min_size ... | head -1`: the pipe closes before the table is written
    proc = subprocess.Popen([sys.executable, "-m", "cnnbench", "task=min_size", "model=googlenet", f"hydra.run.dir={tmp_path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    assert "BrokenPipeError" not in err and (tmp_path / "stages.csv").is_file()


def test_the_command_skips_the_collectors_last_scan_at_exit(monkeypatch):
    """Python's exit scans every object torch and Hydra left (most of a run's 1 s exit): the
    command freezes them once main() is done, whatever its exit status."""
    import gc
    import tomllib
    from pathlib import Path

    from cnnbench import train

    project = tomllib.loads((Path(train.__file__).parents[1] / "pyproject.toml").read_text())["project"]
    # the command's entry imports train (torch) inside it, then runs train.cli; python -m cnnbench too
    assert project["scripts"]["cnnbench"] == "cnnbench.command:main"
    assert "from .command import main" in (Path(train.__file__).parent / "__main__.py").read_text()
    assert "from .train import cli" in (Path(train.__file__).parent / "command.py").read_text()
    monkeypatch.setattr(train, "main", lambda: sys.exit(3))
    frozen = gc.get_freeze_count()
    try:
        with pytest.raises(SystemExit) as stop:
            train.cli()
        assert stop.value.code == 3
        assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()


def test_help_lists_groups_and_models():
    proc = cnnbench("--help")
    assert proc.returncode == 0
    for group in ("model:", "data:", "optimizer:", "scheduler:", "trainer:"):
        assert group in proc.stdout
    models_line = next(line for line in proc.stdout.splitlines() if line.startswith("model:"))
    options = models_line.removeprefix("model:").strip().split(", ")
    assert set(list_models()) <= set(options), sorted(set(list_models()) - set(options))


# The command's exit status and output for bad values found once the config is composed (the
# messages of every check are tested in-process: tests/test_train.py, BAD_INPUTS).
@pytest.mark.parametrize(
    "args, message",
    [
        (["model=alexnet", "data.resize=32"], "is too small for model alexnet: the smallest input it accepts is 65x65"),
        (["optimizer.lr=0"], "optimizer.lr=0 is not allowed"),
        (["data.root=/etc/hostname"], "data.root='/etc/hostname' is not a directory"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(tmp_path, args, message):
    proc = cnnbench(*args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (tmp_path / "metrics.csv").exists()


def test_what_the_schema_check_lets_through():
    from cnnbench.train import checked_args

    checked_args(["data.batch_size=64", "data.batch_size=64", "task=summary"])  # the same value twice says one thing
    checked_args(["hydra.job.env_set.OMP_NUM_THREADS=1", "hydra.job_logging.root.level=WARNING", "task=summary"])
    checked_args(["--config-dir", "/tmp", "-cn", "mine", "hydra.mine.key=1"])  # another primary config: its own keys
    checked_args(["experiment=d2l_alexnet", "model.name=alexnet", "task=summary"])  # the recipe chose alexnet


@pytest.mark.parametrize("args", [["data.batch_size=many"], ["hydra.run.dri=/tmp/x"]])
def test_a_schema_error_exits_2_with_one_line_before_the_run_dir(tmp_path, args):
    proc = cnnbench(*args, f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.startswith("cnnbench: ") and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr
    assert not (tmp_path / "run").exists()  # refused before Hydra made the run dir


@pytest.mark.slow  # builds a wheel with pip (10 s)
def test_wheel_carries_the_configs(tmp_path):
    """Installed from a wheel, the command finds conf/ inside the package, from any directory."""
    pytest.importorskip("setuptools", reason="builds the wheel offline with the environment's setuptools")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pip = [sys.executable, "-m", "pip", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"), root], check=True, timeout=600)
    wheel = next((tmp_path / "whl").glob("cnnbench-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        packed = {n.removeprefix("cnnbench/conf/") for n in zf.namelist() if n.startswith("cnnbench/conf/") and n.endswith(".yaml")}
    conf = os.path.join(root, "conf")
    assert packed == {os.path.relpath(p, conf) for p in glob.glob(os.path.join(conf, "**", "*.yaml"), recursive=True)}
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True, timeout=600)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    code = "import cnnbench.train as t; print(t.CONF_DIR)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, check=True)
    assert out.stdout.strip() == str(tmp_path / "site" / "cnnbench" / "conf")
    proc = subprocess.run([sys.executable, "-m", "cnnbench", "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 0 and "model: alexnet" in proc.stdout


def test_a_pasted_command_calls_cnnbench_as_it_was_started(tmp_path, monkeypatch):
    """After `make run` the environment is not activated: advice must say .venv/bin/cnnbench."""
    from cnnbench.config import program, resume_command

    script = tmp_path / ".venv" / "bin" / "cnnbench"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [".venv/bin/cnnbench", "model=lenet"])
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert program() == ".venv/bin/cnnbench"
    assert resume_command(["model=lenet"], "outputs/r") == ".venv/bin/cnnbench model=lenet hydra.run.dir=outputs/r trainer.resume=outputs/r"
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")  # activated: the name finds this one
    assert program() == "cnnbench"
    monkeypatch.setattr(sys, "argv", ["/x/cnnbench/__main__.py"])  # python -m cnnbench
    assert program() == "cnnbench"
