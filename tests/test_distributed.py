"""Data-parallel training under torchrun (gloo on the CPU): the ranks together train as one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pandas as pd
import pytest
import torch

from cnnbench.config import ConfigError, validate
from cnnbench.data import DeviceLoader, Split

RUN = ["-m", "cnnbench", "model=lenet", "data.batch_size=16", "trainer.max_epochs=3"]


def test_loader_shards_make_up_the_global_batch():
    split = Split(torch.randint(0, 255, (50, 28, 28), dtype=torch.uint8), torch.arange(50) % 10)
    whole = list(DeviceLoader(split, 16, shuffle=True, seed=3))
    shards = [list(DeviceLoader(split, 16, shuffle=True, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == len(whole) == 4
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *shards):
        torch.testing.assert_close(torch.cat([x0, x1]), x)
        assert torch.equal(torch.cat([y0, y1]), y)


def test_global_batch_must_divide_over_the_ranks(make_cfg, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="data.batch_size=16 is the global batch and must divide evenly over the 3 processes"):
        validate(make_cfg("data.batch_size=16"))
    with pytest.raises(ConfigError, match="task=summary runs in one process; only task=train runs under torchrun"):
        validate(make_cfg("task=summary", "data.batch_size=15"))


@pytest.mark.slow  # several processes
def test_two_process_torchrun_matches_one_process(tiny_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, *RUN, f"data.root={tiny_data}", f"hydra.run.dir={one}"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          *RUN, f"data.root={tiny_data}", f"hydra.run.dir={two}"],
                         capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr
    # one run dir, written by rank 0 only; every epoch logged once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "tiny", "two"]  # tiny: the data
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
    assert ddp.stderr.count("epoch 3/3") == 1
    assert "an epoch, batch 16, on cpu, 2 processes (gloo), 8 images each per step in fp32" in ddp.stderr  # the first line says how
    assert "batch 16, on cpu in fp32" in single.stderr
    a, b = pd.read_csv(one / "metrics.csv"), pd.read_csv(two / "metrics.csv")
    for col in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert b[col].tolist() == pytest.approx(a[col].tolist(), rel=1e-5, abs=1e-6), col
    # the final model's confusion matrix, counted by rank 0 over the whole test set
    pd.testing.assert_frame_equal(pd.read_csv(two / "confusion.csv"), pd.read_csv(one / "confusion.csv"))


def test_a_killed_ranks_scratch_dir_is_removed_by_the_next_launch(tmp_path, monkeypatch):
    """A rank's throwaway run dir goes at its exit; one killed by SIGKILL leaves it, and the next
    rank to start removes it. A live rank's dir stays."""
    from cnnbench import train

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f"cnnbench-rank1-{dead.pid}-x1").mkdir()
        (tmp_path / f"cnnbench-rank1-{dead.pid}-x1" / "main.log").write_text("")
        (tmp_path / f"cnnbench-rank2-{alive.pid}-x2").mkdir()
        (tmp_path / "cnnbench-rank-notmine").mkdir()
        train.remove_dead_scratch()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"cnnbench-rank2-{alive.pid}-x2", "cnnbench-rank-notmine"])
    finally:
        alive.kill()


INJECT = '''
import os
if os.environ.get("RANK") == "1":  # rank 1 raises in its third epoch
    import cnnbench.engine as engine
    original, calls = engine.Trainer.train_one_epoch, []
    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure on rank 1")
        return original(self, *args, **kwargs)
    engine.Trainer.train_one_epoch = failing
'''


@pytest.mark.slow  # several processes
def test_a_rank_that_dies_fails_the_run_without_a_hang(tiny_data, tmp_path):
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(INJECT)  # loaded by every rank at start-up
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *RUN[:-1], "trainer.max_epochs=6", f"data.root={tiny_data}", f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "inject")})
    assert proc.returncode != 0
    summary = json.loads((run_dir / "summary.json").read_text())
    # rank 0 sees its peer's connection close (or torchrun's SIGTERM) and records it
    assert summary["status"] in ("failed", "interrupted"), summary
    assert summary["epochs_completed"] == 2


SIGNAL_ONE_RANK = '''
import os, signal
import cnnbench.engine as engine
engine.STOP_CHECK_STEPS = 2  # the ranks agree every 2 steps (6 steps an epoch here)
if os.environ.get("RANK") == "1":  # rank 1 alone is sent SIGTERM, after its SIGNAL_AFTER-th step
    original, calls = engine.Trainer.step, []
    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == int(os.environ["SIGNAL_AFTER"]):
            os.kill(os.getpid(), signal.SIGTERM)
        return out
    engine.Trainer.step = step
'''


@pytest.mark.slow  # several processes
@pytest.mark.parametrize("after, where", [(9, "in epoch 2 after step 4"), (5, "after epoch 1")])
def test_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tiny_data, tmp_path, after, where):
    """A rank stopping alone would meet its peers' gradient all-reduce with a collective of its
    own, and the run would hang: the ranks agree on a stop (every 2 steps here, and at an epoch's
    end), and rank 0, signalled or not, writes the checkpoint."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(SIGNAL_ONE_RANK)
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           *RUN, f"data.root={tiny_data}", f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(tmp_path / "inject"), "SIGNAL_AFTER": str(after)})
    assert proc.returncode != 0
    summary = json.loads((run_dir / "summary.json").read_text())  # rank 0's, which got no signal itself
    assert summary["status"] == "interrupted", summary
    assert summary["error"].startswith(f"stopped by SIGTERM {where}"), summary["error"]
    assert "nothing was trained" not in summary["error"]
    # the resume command launches as many processes again, and the summary says how many there were
    assert "resume with: torchrun --standalone --nproc_per_node=2 -m cnnbench " in summary["error"] and summary["processes"] == 2
    assert (run_dir / "last.pt").is_file() and len(pd.read_csv(run_dir / "metrics.csv")) == 1
    assert "cnnbench-rank1" not in proc.stderr  # the other rank names no dir of its own


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_torchrun_with_nccl_on_one_gpu(tiny_data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           *RUN, f"data.root={tiny_data}", f"hydra.run.dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["device"].startswith("cuda")


@pytest.mark.parametrize("overrides", [[], ["hydra/hydra_logging=disabled", "hydra/job_logging=disabled"]])
def test_the_logging_configs_a_rank_gets_are_ones_python_takes(tmp_path, overrides):
    """What Hydra hands logging.config.dictConfig, for rank 0 and for the quiet ranks (a handler
    without its class failed every torchrun launch at start)."""
    import logging.config

    from cnnbench.config import compose
    from cnnbench.train import QUIET_RANK
    from omegaconf import OmegaConf, open_dict

    for extra in ([], QUIET_RANK):
        hydra = compose(*overrides, *extra, f"hydra.run.dir={tmp_path}", hydra=True).hydra
        with open_dict(hydra):
            hydra.runtime.output_dir = str(tmp_path)  # Hydra sets it as the job starts: the log file's folder
        for name in ("hydra_logging", "job_logging"):
            settings = OmegaConf.to_container(hydra[name], resolve=True)
            logging.config.dictConfig(settings)  # raises on a handler it cannot build
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
