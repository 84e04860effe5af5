"""Sweeps through Hydra's submitit launcher: local_parallel runs jobs side by side; the SLURM
config composes; a preempted job (SIGUSR2, as SLURM sends it) is requeued and resumes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the [slurm] extra")


def cnnbench(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnbench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kw)


def test_slurm_launcher_config_composes():
    from cnnbench.config import compose

    cfg = compose("hydra/launcher=slurm", "hydra.launcher.partition=gpu", hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.max_num_timeout > 0
    assert launcher.signal_delay_s > 0  # the SIGUSR2 warning that lets a job checkpoint before its time limit
    # the command line's check of hydra.* keys knows the chosen launcher's keys, and only those
    from cnnbench.config import ConfigError, check_hydra_keys

    check_hydra_keys(["hydra/launcher=slurm", "hydra.launcher.partition=gpu"])
    with pytest.raises(ConfigError, match=r"hydra.launcher.partiton is not a key .*did you mean hydra.launcher.partition"):
        check_hydra_keys(["hydra/launcher=slurm", "hydra.launcher.partiton=gpu"])


def test_a_slurm_sweep_where_there_is_no_slurm_is_refused_before_it_starts(tmp_path, monkeypatch, capsys):
    import shutil

    from cnnbench.callbacks import OutputCheck
    from cnnbench.config import compose

    cfg = compose("hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}", hydra=True)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as stop:
        OutputCheck().on_multirun_start(cfg)
    assert stop.value.code == 2 and "SLURM's sbatch, which this machine does not have" in capsys.readouterr().err
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow  # several processes
def test_local_parallel_sweep_writes_results(tiny_data, tmp_path):
    proc = cnnbench("-m", "hydra/launcher=local_parallel", "trainer=smoke", f"data.root={tiny_data}",
                    "optimizer.lr=0.01,0.1", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    results = pd.read_csv(tmp_path / "results.csv")
    assert results["optimizer.lr"].tolist() == [0.01, 0.1] and (results["status"] == "completed").all()
    # the two jobs ran at once: each had half the cores, not all of them
    threads = {json.loads((tmp_path / job / "summary.json").read_text())["cpu_threads"] for job in ("0", "1")}
    assert threads == {max(1, len(os.sched_getaffinity(0)) // 2)}


@pytest.mark.slow  # several processes
def test_a_preempted_job_is_requeued_and_resumes(tiny_data, tmp_path):
    epochs = 300
    proc = cnnbench("-m", "hydra/launcher=local_parallel", "model=lenet", f"data.root={tiny_data}", "data.batch_size=96",
                    f"trainer.max_epochs={epochs}", "trainer.plot=false", f"hydra.sweep.dir={tmp_path}", cwd=tmp_path)
    metrics = tmp_path / "0" / "metrics.csv"
    deadline = time.time() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) > 10):
        assert time.time() < deadline, "the job wrote no 10 epochs in 120 s: it could not be preempted mid-run"
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.2)
    # The job is the child of submitit's controller process; SLURM would signal it the same way.
    controller = subprocess.run(["pgrep", "-f", f"submitit.local._local {tmp_path}"], capture_output=True, text=True, check=True)
    job = subprocess.run(["pgrep", "-P", controller.stdout.split()[0]], capture_output=True, text=True, check=True)
    subprocess.run(["kill", f"-{signal.SIGUSR2.value}", job.stdout.split()[0]], check=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    summary = json.loads((tmp_path / "0" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert 10 <= summary["resumed_from"]["epochs_done"] < epochs  # it stopped mid-run and went on from there
    assert pd.read_csv(metrics)["epoch"].tolist() == list(range(1, epochs + 1))
    logs = "".join(p.read_text() for p in (tmp_path / ".submitit").rglob("*_log.err"))
    assert "this job is preempted" in logs and "Requeued job" in logs
