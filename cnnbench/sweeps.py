"""What a sweep does with each job before running it: give it a GPU and a share of the CPU
cores of its own when jobs run side by side, skip it when it already completed with the same
config, resume it when it was interrupted (a requeued SLURM job, or a sweep run again into its dir)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from .config import sweep_jobs
from .rundir import grid_overrides, read_summary

log = logging.getLogger("cnnbench")


def prepare_job(cfg: DictConfig, hydra_cfg, out_dir: Path) -> dict | None:
    """Apply the sweep policy to one job of a multirun: returns the earlier summary when the
    job completed already (skip it), else None after setting what the job needs (a GPU, a resume)."""
    if "LocalLauncher" in str(hydra_cfg.launcher.get("_target_", "")):
        one_gpu_per_job(cfg, hydra_cfg.job.num)  # first: an earlier run's summary records the device
        share_the_cores(cfg, jobs_side_by_side(hydra_cfg))
    before = previous_run(cfg, out_dir)
    if before and before["status"] == "completed":  # re-running a sweep into its dir: kept, not run again
        log.info("job %s already completed in %s: skipped", hydra_cfg.job.num, out_dir)
        return before
    if before and before["status"] == "interrupted" and (out_dir / "last.pt").is_file():
        # a requeued (preempted, timed-out) or re-run job continues from its checkpoint
        log.info("job %s was interrupted in %s: resuming from its last.pt", hydra_cfg.job.num, out_dir)
        with open_dict(cfg):
            cfg.trainer.resume = str(out_dir)
    return None


def one_gpu_per_job(cfg: DictConfig, job_num: int) -> None:
    """Jobs running side by side on one machine (hydra/launcher=local_parallel): with
    trainer.device=auto, job N takes GPU N mod the number of GPUs."""
    count = torch.cuda.device_count()
    if cfg.trainer.device == "auto" and count > 1:
        with open_dict(cfg):
            cfg.trainer.device = f"cuda:{job_num % count}"


def share_the_cores(cfg: DictConfig, jobs: int) -> None:
    """Jobs running side by side on one machine: with trainer.threads=null, each takes its share
    of the cores. torch's default, a thread per core in every job, makes N jobs spin N threads a
    core, which on a CPU trains many times slower than one thread each (docs/speed.md)."""
    if cfg.trainer.threads is None:
        threads = max(1, len(os.sched_getaffinity(0)) // max(1, jobs))
        with open_dict(cfg):
            cfg.trainer.threads = threads
        log.info("%d jobs side by side: %d CPU thread%s each (trainer.threads sets another count)",
                 jobs, threads, "" if threads == 1 else "s")


def jobs_side_by_side(hydra_cfg) -> int:
    """How many jobs the local parallel launcher runs at once: a search's batch (its sweeper's
    n_jobs), else the grid's jobs (``config.sweep_jobs`` of the overrides in the multirun.yaml the
    grid sweeper wrote in the sweep's dir) less those completed already (a re-run skips them), at
    most its max_batch_size. When they cannot be counted, as many as there are cores."""
    sweeper = hydra_cfg.sweeper
    if sweeper.get("n_jobs"):
        return int(sweeper.n_jobs)
    sweep_dir, overrides = Path(hydra_cfg.sweep.dir), grid_overrides(hydra_cfg.sweep.dir)
    try:
        total = len(sweep_jobs(list(overrides.task), sweeper.get("params")))
    except Exception:  # noqa: BLE001 - no multirun.yaml (None), or a sweep only its sweeper can expand
        return len(os.sched_getaffinity(0))
    jobs = total - sum(read_summary(sweep_dir / str(n)).get("status") == "completed" for n in range(total))
    return max(1, min(jobs, sweeper.get("max_batch_size") or jobs))


def previous_run(cfg: DictConfig, out_dir: Path) -> dict | None:
    """The summary of an earlier run of this very config in ``out_dir``, if there is one
    (``trainer.resume``, which a resumed run sets, does not count as a difference)."""
    summary = read_summary(out_dir)
    if not summary:
        return None
    ours = OmegaConf.to_container(cfg, resolve=True)
    theirs = summary.get("config") or {}
    for config in (ours, theirs):  # a resume, and the threads a job was given, change no result
        for key in ("resume", "threads"):
            config.get("trainer", {}).pop(key, None)
    return summary if ours == theirs else None


def metric(summary: dict, objective: str) -> float:
    """What a sweeper optimises: the summary's ``objective`` field (NaN when it has none)."""
    value = summary.get(objective)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")
