"""Hydra callbacks (conf/config.yaml, ``hydra.callbacks``): guard the output dirs before Hydra
writes into them, and write a sweep's results.csv and report when it ends."""
from __future__ import annotations

import functools
import os
import shutil
import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf, read_write

from .config import ConfigError, enum_value, resume_command, sweep_jobs, validate_search, validate_sweep
from .metrics import collect_results, write_results
from .rundir import DirBusy, hold, hold_unused, is_search, keep_record, read_summary, resumes_in


def loud(method):
    """Hydra turns an exception in a callback into a warning and goes on: a guard that breaks
    would let the run or sweep write where it must not, unnoticed. A callback's own failure
    stops the command instead (exit 1), with its traceback."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception:  # noqa: BLE001 - SystemExit (refuse) passes through untouched
            traceback.print_exc()
            print(f"cnnbench: {type(self).__name__}.{method.__name__} failed (a bug in cnnbench, the lines above say where)",
                  file=sys.stderr)
            sys.exit(1)
    return guarded


def refuse(message: str) -> None:
    """Bad input found before anything ran: one line on stderr, exit status 2."""
    print(f"cnnbench: {message}", file=sys.stderr)
    sys.exit(2)


def check_writable(folder: Path, key: str) -> None:
    """Exit with a clear message (status 2) when the output folder cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".cnnbench-probe-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        refuse(f"{key}={folder} cannot be written ({err.strerror or err}); choose another with {key}=DIR")


def completed_run(folder: Path) -> bool:
    return read_summary(folder).get("status") == "completed"


def continuation(run_dir: Path) -> str:
    """How a completed run can go on for more epochs, if it can: it kept a checkpoint and its
    schedule does not span the run (a cosine or one-cycle schedule has ended)."""
    summary = read_summary(run_dir)
    config = summary.get("config") or {}
    if summary.get("task", "train") != "train":
        return ""
    # a last.pt that a signal wrote, in a run not asked to keep one, is the state of that moment, not of the end
    if not ((run_dir / "last.pt").is_file() and config.get("trainer", {}).get("checkpoint")):
        return " (that run kept no checkpoint of its end to continue from: trainer.checkpoint=true keeps one)"
    if str(config.get("scheduler", {}).get("name")) in ("cosine", "onecycle"):
        return " (that run's schedule spanned it and has ended: it cannot be lengthened)"
    command = resume_command(summary.get("overrides") or [], run_dir, "trainer.max_epochs")
    return f", or continue that run, in its own settings, for more epochs: {command} trainer.max_epochs=N"


class OutputCheck(Callback):
    """Before Hydra writes a run or sweep dir: it must be writable and have no other writer (an
    OS lock held for the process's life, see ``rundir``), and a run dir holding a completed run
    is only written again to resume it (``trainer.resume`` naming that dir or its checkpoint, by
    task=train: another run's checkpoint, or an evaluation, would overwrite it)."""

    @loud
    def on_run_start(self, config, **kwargs) -> None:
        run_dir = Path(config.hydra.run.dir)
        check_writable(run_dir, "hydra.run.dir")
        run_dir = take_dir(config, "run")
        if (run_dir / "multirun.yaml").is_file() or (run_dir / "results.csv").is_file():
            refuse(f"hydra.run.dir={run_dir} holds a sweep (multirun.yaml, results.csv): a single run's files would "
                   "mix with its jobs and hide them from its report; choose another dir")
        resume, task = config.trainer.get("resume"), enum_value(config.get("task", "train"))
        if resume and task == "train" and resumes_in(resume, run_dir):
            keep_record(run_dir, config.hydra.get("output_subdir", ".hydra"))  # put back should the resume be refused
            return  # continuing the run of this dir, from its own checkpoint (checked against it as the run starts)
        # a resume from another dir's checkpoint, or an evaluation, is a new run here: it may not overwrite one
        other = "" if not resume else f" (task={task} writes results of its own)" if task != "train" else \
            f" (trainer.resume={resume} is not this dir's: a resume goes on in the dir of the run it continues, or in a new one)"
        if completed_run(run_dir):
            refuse(f"hydra.run.dir={run_dir} holds a completed run (summary.json), which a new run would overwrite{other}; "
                   f"choose another dir{continuation(run_dir) if not resume else ''}")
        kept = [name for name in ("last.pt", "best.pt") if (run_dir / name).is_file()]
        if kept:  # an interrupted or failed run's: a new run would list them as its own, or overwrite them
            command = resume_command(read_summary(run_dir).get("overrides") or [], run_dir)
            advice = f"resume that run with: {command}; or " if "last.pt" in kept else ""
            refuse(f"hydra.run.dir={run_dir} holds {' and '.join(kept)} of an earlier run that did not complete{other}: "
                   f"{advice}choose another dir (or delete them to start over there)")

    @loud
    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            if is_search(config.hydra.sweeper):  # its trials are drawn one by one: the ranges they come from are checked
                validate_search(list(config.hydra.overrides.task), config.hydra.sweeper.get("params"),
                                config.hydra.sweeper.get("n_trials"))
                quiet_optuna()
            else:  # a grid: the jobs are known up front
                validate_sweep(list(config.hydra.overrides.task), config.hydra.sweeper.get("params"))
        except ConfigError as err:
            refuse(str(err))
        launcher = str(OmegaConf.select(config, "hydra.launcher._target_", default=""))
        if "SlurmLauncher" in launcher and not shutil.which("sbatch"):  # submitit would fail with a traceback
            refuse("hydra/launcher=slurm submits each job with SLURM's sbatch, which this machine does not have: "
                   "run the sweep on the cluster's login node (or drop hydra/launcher=slurm to run it here)")
        check_writable(sweep_dir, "hydra.sweep.dir")
        sweep_dir = take_dir(config, "sweep")
        check_sweep_dir(sweep_dir, config)


def quiet_optuna() -> None:
    """Optuna's lines ("A new study created ...") through Hydra's logging, like the sweep's other
    lines, instead of its own handler, which colours them even in a file or a CI log."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def take_dir(config, kind: str) -> Path:
    """Hold ``hydra.<kind>.dir`` for this process. A dir the user chose is theirs: when another
    process writes it, the command is refused. The default dir is named by the second the
    command started in; when it is taken (another command started in the same second), this
    one takes the first free ``_2``, ``_3``, ... beside it and tells Hydra so: for a sweep also
    through its overrides, from which Hydra composes each job's config anew."""
    key = f"hydra.{kind}.dir"
    folder = Path(config.hydra[kind].dir)
    chosen = any(str(o).lstrip("+~").split("=")[0] == key for o in config.hydra.overrides.hydra)
    try:
        if chosen:
            hold(folder, key)
            return folder
        taken = hold_unused(folder, key)
    except DirBusy as err:
        refuse(str(err))
    if taken != folder:
        with read_write(config.hydra):
            config.hydra[kind].dir = str(taken)
            if kind == "sweep":
                config.hydra.overrides.hydra.append(f"{key}={taken}")
    return taken


def best_job(rows: list[dict], config, sweep_dir: Path) -> str | None:
    """A search's (Optuna's) best job, in the direction it optimised, for the sweep's last lines;
    None for a grid sweep (its report compares the jobs) or when no job has the objective."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction")
    direction = getattr(direction, "name", direction)  # Optuna's default is its enum, Direction.minimize
    if not isinstance(direction, str):  # a grid sweep, or a multi-objective search
        return None
    objective = OmegaConf.select(config, "objective", default="best_test_acc")
    scored = [r for r in rows if isinstance(r.get(objective), (int, float)) and r[objective] == r[objective]]
    if not scored:
        return None
    best = (max if direction.lower().endswith("maximize") else min)(scored, key=lambda r: r[objective])
    return f"best job {best['job']} ({direction} {objective}): {objective}={best[objective]:.4g}, in {sweep_dir / str(best['job'])}"


def check_sweep_dir(sweep_dir: Path, config) -> None:
    """A sweep dir holding jobs of another sweep is refused: its completed runs would be
    overwritten, or listed in results.csv beside this sweep's as if one experiment. The same
    sweep run again is welcome (its completed jobs are skipped, interrupted ones resume), and so
    is a grown one, where every earlier job is this sweep's job of the same number (a design
    study's longer sample range, say), unless it is a search (Optuna) that draws its trials
    afresh. The earlier sweep is read from the multirun.yaml Hydra's grid sweeper wrote into the
    dir (this runs before it writes anew)."""
    if (sweep_dir / "summary.json").is_file():
        refuse(f"hydra.sweep.dir={sweep_dir} holds a single run (summary.json): its files would mix with the sweep's "
               "jobs and hide them from the report; choose another hydra.sweep.dir")
    earlier = sorted({path.parent.name for path in sweep_dir.glob("*/summary.json")})
    if not earlier:
        return
    ours = _sweep_identity(config)
    try:
        theirs = _sweep_identity(OmegaConf.load(sweep_dir / "multirun.yaml"))
    except Exception:  # noqa: BLE001 - none, or unreadable: nothing to tell the sweeps apart by
        theirs = None
    if is_search(config.hydra.sweeper):
        what = "an earlier run of a search, which draws its trials afresh"
    elif theirs is not None and theirs != ours and not _grows(config, sweep_dir, earlier):
        what = f"another sweep ({' '.join(theirs[0]) or 'no overrides'})"
    else:
        return  # the same sweep again (or one that left no multirun.yaml: as before)
    refuse(f"hydra.sweep.dir={sweep_dir} holds {len(earlier)} job(s) of {what}: this sweep would overwrite them or mix "
           "with them in results.csv; choose another hydra.sweep.dir (the same grid sweep run again, or a grown one that keeps "
           "each of these jobs at its number, skips its completed jobs and resumes interrupted ones)")


def _grows(config, sweep_dir: Path, earlier: list[str]) -> bool:
    """Whether this grid sweep keeps every earlier job of ``sweep_dir`` as its job of the same
    number, with the same overrides (job N's dir then holds job N's run, to skip or resume)."""
    try:  # the jobs as Hydra's grid sweeper numbers them
        jobs = [sorted(job) for job in sweep_jobs(list(config.hydra.overrides.task), config.hydra.sweeper.get("params"))]
    except Exception:  # noqa: BLE001 - an override only Hydra's own config loader can expand (a glob)
        return False
    return all(name.isdigit() and int(name) < len(jobs) and jobs[int(name)] == sorted(read_summary(sweep_dir / name).get("overrides") or [])
               for name in earlier)


def _sweep_identity(config) -> tuple:
    """What makes two sweeps the same: their command-line overrides, sweeper and its params."""
    sweeper = config.hydra.sweeper
    params = sweeper.get("params") or {}
    return (sorted(str(o) for o in config.hydra.overrides.task), str(sweeper.get("_target_", "")),
            sorted((str(k), str(v)) for k, v in params.items()))


class SweepResults(Callback):
    """results.csv and the report at the end of a multirun; the sweep exits 1 when any job did
    not complete (after every job ran)."""

    @loud
    def on_multirun_start(self, config, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir).absolute()

    @loud
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = getattr(self, "sweep_dir", Path(config.hydra.sweep.dir).absolute())
        path = write_results(sweep_dir)
        if path:
            print(f"cnnbench: sweep results in {path}", file=sys.stderr)
            try:
                from .report import report

                report(sweep_dir, html=True, plots=bool(OmegaConf.select(config, "trainer.plot", default=True)))
            except Exception as err:  # a report must never cost the sweep its results
                print(f"cnnbench: could not write the sweep report: {err}", file=sys.stderr)
        from .loggers import sweep_open_commands

        for command in sweep_open_commands(sweep_dir):  # once for the sweep, not once per job
            print(f"cnnbench: {command}", file=sys.stderr)
        rows = collect_results(sweep_dir)
        best = best_job(rows, config, sweep_dir)
        if best:  # a search's answer, last
            print(f"cnnbench: {best}", file=sys.stderr)
        unfinished = [r for r in rows if r.get("status") != "completed"]
        if unfinished:
            jobs = ", ".join(f"{r['job']} ({r.get('status')})" for r in unfinished)
            diverged = all(r.get("status") == "diverged" for r in unfinished)  # a result of their settings, not a fault
            hint = ("; divergence is what these settings did (a learning-rate sweep looks for it: results.csv says "
                    "which), and the exit status is 1 so that a script notices" if diverged else "")
            print(f"cnnbench: {len(unfinished)} job(s) did not complete: {jobs}{hint}", file=sys.stderr)
            sys.exit(1)
