"""The ``cnnbench`` command: compose the config, check it, run the task, write the run's files.

``main`` is the Hydra entry point (it returns the metric a sweeper optimises); ``run``
does the work and can be called from Python with a composed config.
"""
from __future__ import annotations

import atexit
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from . import STARTED, __version__, command, data, distributed, loggers
from .config import (
    CONF_DIR,
    ConfigError,
    ResumeMismatch,
    check_choice_keys,
    check_hydra_keys,
    check_overrides,
    compose_checked,
    enum_value,
    first_line,
    multirun_requested,
    one_value_sweeps,
    program,
    register_configs,
    resume_command,
    sweep_command,
    validate,
)
from .engine import (
    Diverged,
    set_backends,
    stop_at_once,
    tell_if_busy,
)
from .metrics import NoSpace, write_json, write_results
from .rundir import LOCK_NAME, grid_overrides, hold, is_search, read_summary, release, restore_record, resumes_in
from .sweeps import metric, prepare_job
from .tasks import TASKS, in_sweep

log = logging.getLogger("cnnbench")


_first_job = True  # the first run() of this process pays its start-up (imports, Hydra)
EXIT_CODES = {"completed": 0, "failed": 1, "diverged": 3, "oom": 4, "interrupted": 130}
BAD_INPUT_EXIT = 2
CONFIG_FLAGS = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp"}
QUIET_RANK = ["hydra.job_logging.root.level=WARNING", "hydra.hydra_logging.root.level=ERROR"]  # torchrun's ranks but 0
HELP_FLAGS = {"--help", "-h", "--hydra-help"}  # with looking_flag's (--cfg, --info, ...): Hydra runs nothing


def run(cfg: DictConfig, out_dir: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Run ``cfg.task`` for one configuration, writing its files and summary.json into
    ``out_dir``. Never raises for a failed run (bar a stop signal, re-raised after recording
    it): the returned summary's ``status`` and ``error`` say what happened. The dir is locked
    for the run (``rundir.hold``): another process writing it raises DirBusy."""
    out_dir = Path(out_dir)
    hold(out_dir)
    try:
        return _run(cfg, out_dir, list(overrides))
    finally:
        release(out_dir)


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _run(cfg: DictConfig, out_dir: Path, overrides: list[str]) -> dict[str, Any]:
    global _first_job
    started = time.perf_counter()
    earlier = _read(out_dir / "summary.json")  # a run this one continues (trainer.resume), or an unfinished one
    earlier_completed = read_summary(out_dir).get("status") == "completed"
    mismatch = False  # a resume refused for its settings, its checkpoint sound
    summary: dict[str, Any] = {
        "task": enum_value(cfg.task),
        "model": cfg.model.get("name"),
        "status": "running",
        "seed": cfg.seed,
        "overrides": overrides,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    try:
        with stop_at_once(lambda: _stage(summary)):
            validate(cfg)
            set_backends(cfg.trainer.deterministic, enum_value(cfg.trainer.matmul_precision), cfg.trainer.threads)
            if summary["task"] in ("train", "bench"):  # the tasks that spend their time in torch's operators
                tell_if_busy(cfg.trainer.threads, cfg.trainer.device)
            TASKS[summary["task"]](cfg, out_dir, summary)
        summary["status"] = "completed"
    except (ConfigError, data.DataError) as err:
        summary |= {"status": "failed", "error": str(err), "bad_input": True}
        mismatch = isinstance(err, ResumeMismatch)
    except Diverged as err:
        summary |= {"status": "diverged", "error": str(err)}
    except (torch.OutOfMemoryError, MemoryError) as err:
        summary |= {"status": "oom", "error": first_line(err)}
    except KeyboardInterrupt as err:  # Ctrl-C, or engine.Interrupted after SIGINT/SIGTERM/SIGUSR2
        summary |= {"status": "interrupted", "error": (str(err) or "stopped by SIGINT") + "; " + _resume_advice(summary, out_dir)}
        raise
    except NoSpace as err:
        summary |= {"status": "failed", "error": str(err)}
    except Exception as err:
        if isinstance(err, RuntimeError) and "can't allocate memory" in str(err):  # the CPU's allocator
            summary |= {"status": "oom", "error": first_line(err)}
        else:
            log.exception("run failed")
            summary |= {"status": "failed", "error": f"{type(err).__name__}: {first_line(err)}"}
    finally:
        ended = time.perf_counter()
        summary["wall_time_s"] = ended - started
        if _first_job:  # imports, composing the config, Hydra's set-up: once per process
            summary["startup_s"], _first_job = started - STARTED, False
        if "training_s" in summary:  # fixed cost: everything but the epochs
            summary["setup_s"] = summary.pop("_epochs_started") - started
            summary["teardown_s"] = ended - summary.pop("_epochs_ended")
        own = bool(cfg.trainer.get("resume")) and resumes_in(cfg.trainer.resume, out_dir) and earlier is not None
        if summary.get("bad_input") and (earlier_completed or mismatch and own) and _read(out_dir / "summary.json") == earlier:
            # Refused before this run wrote anything: a completed run keeps its record, and so does
            # an unfinished one whose resume did not fit its settings (it can still be resumed in its
            # own); Hydra's files too. A damaged checkpoint is the unfinished run's record: the
            # resume its summary.json offered cannot be made.
            restore_record(out_dir)
            log.error("refused, nothing was run (%s is as it was; its cnnbench.log keeps this line): %s", out_dir, summary["error"])
            return summary | {"refused": True}
        restore_record(out_dir, put_back=False)  # the run went on (or failed on): Hydra's record is this run's
        try:
            write_json(out_dir / "summary.json", summary)
        except OSError as err:  # a full disk: the run's other files stay as they were
            log.error("could not write %s: %s", out_dir / "summary.json", err)
        if failed := loggers.finish(out_dir, summary["status"]):  # the trackers get the final summary.json and status
            summary["trackers_failed"] = failed  # for the last line (summary.json is written: its status stands)
        if summary["status"] != "completed" and (summary["status"] != "interrupted" or distributed.from_env().main):
            # an interruption is told once, by rank 0, with the command that resumes the run
            log.error("%s: %s", "refused" if summary.get("bad_input") else f"run {summary['status']}", summary.get("error", ""))
        if summary["status"] == "oom":
            gc.collect()  # free what the failed step held before the next job of a sweep
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return summary


def _closing_line(summary: dict[str, Any], out_dir: Path) -> str:
    """A single run's last line: how it ended (and its accuracy) and the files in its dir."""
    if summary.get("refused") == "removed":
        return f"refused; nothing was run or kept ({out_dir}, made for the run, is removed)"
    if summary.get("refused"):
        return f"refused; {out_dir} is as it was (its cnnbench.log notes the refusal)"
    status = summary["status"]
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in out_dir.iterdir() if not p.name.startswith("."))
    final, best = summary.get("final_test_acc"), summary.get("best_test_acc")
    done = status == "completed" and summary["task"] == "train" and None not in (final, best)
    images = summary.get("eval_images")  # a smoke run's few test images: its accuracy is no model's measure
    on = f" on {images:,} test images" if isinstance(images, int) and images < 10_000 else ""
    outcome = f" (test accuracy {final:.4f}{on}, best {best:.4f})" if done else ""
    names = summary.get("trackers_failed") or []  # each once: a tracker that fails is switched off
    off = (f"; {' and '.join(f'logger={name}' for name in names)} failed and {'was' if len(names) == 1 else 'were'} "
           "switched off (the warning above says why)") if names else ""
    return f"run {status}{outcome} in {out_dir}: {', '.join(files)}{off}"


def _made_by_hydra(out_dir: Path) -> bool:
    """The run dir holds only what Hydra (its .hydra/ and log) and the lock put there: it was made
    for this run."""
    return all(p.name in (".hydra", LOCK_NAME) or p.suffix == ".log" for p in out_dir.iterdir())


def _stage(summary: dict[str, Any]) -> str:
    """Where a run stood when a stop signal came outside the training loop."""
    if summary["task"] != "train":
        return f"during task={summary['task']}"
    return "after training, while writing its results" if "training_s" in summary else "before training"


def _resume_advice(summary: dict[str, Any], out_dir: Path) -> str:
    """What to do after an interruption: a command to paste, or what running again gives."""
    sweep = in_sweep()
    if sweep and is_search(HydraConfig.get().sweeper):
        return SEARCH_STOPPED
    if summary["task"] == "train" and (out_dir / "last.pt").exists():
        if sweep:
            return f"run the sweep again, {_sweep_again()}: this job resumes from its last.pt, completed jobs are skipped"
        command = resume_command(summary["overrides"], out_dir)
        if (world := distributed.from_env()).distributed:  # the same processes: the same share of each batch per rank
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world.size))
            launch = (f"torchrun --standalone --nproc_per_node={world.size} -m cnnbench" if per_node == world.size
                      else f"(the same torchrun launch, {world.size} processes) cnnbench")
            command = launch + command.removeprefix(program())
        return "resume with: " + command
    done = summary.get("epochs_completed") or 0
    epochs = f"{done} epoch{'s' if done != 1 else ''}"
    if summary["task"] == "train" and done and done == (summary.get("config") or {}).get("trainer", {}).get("max_epochs"):
        what = f"training had ended ({epochs}, in metrics.csv), but what is written after it (per-class files, plots) may be missing"
    elif done:
        what = (f"{epochs} {'is' if done == 1 else 'are'} in metrics.csv, but no checkpoint was written to resume "
                "from (trainer.checkpoint=true writes one every epoch)")
    elif summary["task"] == "bench":
        what = ("the batch sizes measured before the stop are in bench.csv" if (out_dir / "bench.csv").is_file()
                else "nothing was measured yet")
    else:
        what = "nothing was trained yet"
    how = (f"run the sweep again, {_sweep_again()}, to run this job afresh, completed jobs are skipped" if sweep
           else "run the same command again to start over")
    return f"{what}: {how}"


SEARCH_STOPPED = ("a search cannot go on where it stopped (run again into its dir it would draw new trials over these); "
                  "its trials so far are in results.csv: run it again into a new dir")


def _sweep_again() -> str:
    """The command that goes on with this process's sweep, in its dir: the sweep's own overrides
    are in the multirun.yaml its launcher wrote there (a job's config holds the job's)."""
    sweep_dir = Path(HydraConfig.get().sweep.dir).absolute()
    overrides = grid_overrides(sweep_dir)
    if overrides is None:
        return f"the same command with hydra.sweep.dir={sweep_dir}"
    return sweep_command(list(overrides.task), list(overrides.hydra), sweep_dir)


register_configs()


def checked_args(args: list[str]) -> list[str]:
    """The command line as Hydra gets it, checked first (raises ConfigError): group options and
    section keys; a single run's model knobs and optimizer arguments; a multirun's ``model.KNOB=V``
    and ``optimizer.ARG=V`` as one-value sweeps (``config.one_value_sweeps``). --cfg, --help and
    --info run nothing: Hydra composes them as one run, so they keep their values as typed. ``-m``
    may stand anywhere (Hydra's parser takes it only before the overrides)."""
    multirun = [a for a in args if a in ("-m", "--multirun")]
    args = multirun + [a for a in args if a not in multirun]
    check_words(args)
    looks = looking_flag(args)
    runs_nothing = bool(looks or HELP_FLAGS & set(args))
    if multirun and looks:  # Hydra's ValueError, with its traceback
        raise ConfigError(f"{multirun[0]} and {looks} do not go together: {looks} looks at one job, so drop {multirun[0]} "
                          f"and give each key one value")
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    single = runs_nothing or not multirun_requested(args) and not CONFIG_FLAGS & {a.split("=")[0] for a in args}
    check_overrides(overrides, sweep_advice=(None if not single else "give one value" if runs_nothing else
                                             "run it with -m (cnnbench -m {override} ...), or give one value"))
    if not CONFIG_FLAGS & {a.split("=")[0] for a in args}:  # another primary config has keys of its own
        check_hydra_keys(overrides)
    if multirun_requested(args) and not runs_nothing:
        run_dir = next((o for o in overrides if o.lstrip("+~").partition("=")[0] == "hydra.run.dir"), None)
        if run_dir and distributed.from_env().main:  # Hydra would ignore it: the sweep would go to outputs/sweeps/ unannounced
            # (torchrun's other ranks are given a scratch run dir by main(), not by the user)
            why = multirun[0] if multirun else next((a.lstrip("+~") for a in overrides if a.lstrip("+~").startswith("experiment=")),
                                                    "hydra.mode=MULTIRUN")
            raise ConfigError(f"{run_dir.lstrip('+~')} is a single run's dir, and this command is a sweep ({why}), whose "
                              f"jobs go into numbered dirs under hydra.sweep.dir: give hydra.sweep.dir={run_dir.partition('=')[2]}")
        return one_value_sweeps(args)
    search = next((o for o in overrides if o.lstrip("+~").partition("=")[0] == "hparams_search"), None)
    if search and not runs_nothing:  # without -m Hydra would run one plain job, no search
        raise ConfigError(f"{search.lstrip('+')} is a search: run it with -m (cnnbench -m {search} ...)")
    check_choice_keys(overrides)
    if not runs_nothing:
        check_values(overrides, args)
    return args


def hydra_flags(args: list[str]):
    """The command line as Hydra's own parser reads it: (its flags and overrides, the words it does
    not know), or None for a flag without its value (Hydra's own parse says so, as it runs)."""
    from hydra._internal.utils import get_args_parser

    try:
        return get_args_parser().parse_known_args(args)
    except SystemExit:
        return None


def check_words(args: list[str]) -> None:
    """Every word is an override (KEY=VALUE, or ~KEY to delete one) or one of Hydra's flags with
    its value: ``cnnbench model resnet18`` and ``cnnbench --model resnet18`` get one line saying
    so, not Hydra's parser error (with a link to another version's docs) or its usage text."""
    if (read := hydra_flags(args)) is None:
        return
    parsed, unknown = read
    words = [w for w in parsed.overrides if "=" not in w and not w.startswith("~")]
    if unknown or words:
        given, flat = " ".join(unknown + words), [w.lstrip("-") for w in unknown + words]
        example = f"{flat[0]}={flat[1]}" if len(flat) == 2 else "model=resnet18"  # model resnet18, --model resnet18
        raise ConfigError(f"{given}: cnnbench takes overrides KEY=VALUE (e.g. {example}; a sweep: -m KEY=A,B) and Hydra's "
                          "flags (--cfg job, --help, -m); cnnbench --help lists the keys, models and recipes")


def looking_flag(args: list[str]) -> str | None:
    """The flag of a command that only looks at one job (--cfg, --info, --shell-completion), as
    Hydra's own parser reads it (--cfg=job, -cjob), or None."""
    if (read := hydra_flags(args)) is None:
        return None
    parsed = read[0]
    return next((flag for flag, on in (("--cfg", parsed.cfg), ("--info", parsed.info),
                                       ("--shell-completion", parsed.shell_completion)) if on), None)


# Keys that say how a model is trained: task=evaluate takes them from the checkpoint, so it refuses them
TRAINING_ONLY = ("seed", "model.", "optimizer.", "scheduler.", "bench.", "data.batch_size", "data.subset", "data.drop_last",
                 "data.normalize", "data.crop_padding", "data.hflip", "trainer.max_epochs", "trainer.label_smoothing",
                 "trainer.grad_clip", "trainer.diverge_loss", "trainer.limit_train_batches", "trainer.checkpoint",
                 "trainer.save_best")


def check_values(overrides: list[str], args: list[str]) -> None:
    """A single run's values, checked before Hydra makes its run dir: a typo must not leave a
    failed run behind. A value of the wrong type gets cnnbench's message, not Hydra's; a config
    that only a run can resolve (``${hydra:...}``) is left to the run's own check."""
    if CONFIG_FLAGS & {a.split("=")[0] for a in args}:
        return  # another primary config or config dir: the run's own check judges it
    try:
        cfg = compose_checked(*overrides)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - a malformed override or another composition error: Hydra says where, as before
        return
    ignored = [o.lstrip("+~") for o in overrides if o.lstrip("+~").partition("=")[0].startswith(TRAINING_ONLY)
               or o.lstrip("+~").partition("=")[0] in ("model", "optimizer", "scheduler")]
    if enum_value(cfg.task) == "evaluate" and ignored:  # it would be recorded as the run's, and reported so
        raise ConfigError(f"{' '.join(ignored)}: task=evaluate takes the model, its knobs and how it was trained from the "
                          f"checkpoint (trainer.resume), so this does not apply; drop it (data.resize=N evaluates at another "
                          f"size; data.test_subset, data.test_batch_size, trainer.precision and trainer.device are the evaluation's own)")
    try:
        validate(cfg)
    except ConfigError:
        raise
    except Exception:  # noqa: BLE001 - an interpolation only a run resolves
        return


SCRATCH_PREFIX = "cnnbench-rank"  # + RANK-PID-random: a torchrun rank's throwaway run dir, in the temp dir


def remove_dead_scratch() -> None:
    """The throwaway run dirs of ranks that died without their atexit (SIGKILL, OOM killer)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*-*"):
        pid = folder.name[len(SCRATCH_PREFIX):].split("-")[1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # no such process: its dir is debris
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def main() -> None:
    """The ``cnnbench`` command. Under torchrun, ranks other than 0 run in a temporary dir with
    Hydra's logging off: rank 0 alone writes the run dir and logs."""
    world = distributed.from_env()
    if not world.main:
        remove_dead_scratch()
        scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{world.rank}-{os.getpid()}-")
        atexit.register(shutil.rmtree, scratch, ignore_errors=True)
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null", *QUIET_RANK]
    if "--version" in sys.argv[1:]:  # Hydra's would name Hydra's alone
        print(f"cnnbench {__version__} (torch {torch.__version__}, Hydra {hydra.__version__})")
        sys.exit(0)
    if looking_flag(sys.argv[1:]) == "--cfg" and "--resolve" not in sys.argv:  # --cfg job, --cfg=job, -cjob
        sys.argv.append("--resolve")  # --cfg job shows the values a run uses (the resolution, say), not ${...}
    try:
        sys.argv[1:] = checked_args(sys.argv[1:])
    except ConfigError as err:
        print(f"cnnbench: {err}", file=sys.stderr)
        sys.exit(BAD_INPUT_EXIT)
    command.started()  # a stop from here on is a job's or a launcher's to handle
    try:
        hydra_main()
    except SystemExit as stop:
        # Hydra's own errors (a value of the wrong type, a malformed override) exit 1 before any
        # job starts: bad input, like every other, is status 2.
        if stop.code == 1 and not _job_started:
            sys.exit(BAD_INPUT_EXIT)
        raise
    finally:
        distributed.shutdown()


def cli() -> None:
    """The console script (and ``python -m cnnbench``): ``main``, then a quicker exit. At exit
    Python's collector scans every object torch, Hydra and matplotlib left (about 0.7 s of a
    run's 1 s exit on the project machine, measured with perf); freezing them after a last
    collection skips that scan. Everything else about the exit stays: atexit handlers, joining
    threads, flushing files, and freeing objects as their last reference goes. Only reference
    cycles still alive at exit stay unfreed, which Python never promised to finalise anyway."""
    try:
        main()
    except KeyboardInterrupt:
        if not command.starting:  # a run's or a launcher's stop: told by their own lines
            raise
        command.stopped_while_starting(signal.SIGINT)  # checking the command: one line, not a traceback
    finally:
        gc.collect()  # today's garbage still meets its finalisers
        gc.freeze()


_job_started = False


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float:
    global _job_started
    _job_started = True
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    out_dir = Path(hydra_cfg.runtime.output_dir)
    if multirun and (done := prepare_job(cfg, hydra_cfg, out_dir)):
        return metric(done, cfg.objective)
    made_for_it = not multirun and _made_by_hydra(out_dir)
    try:
        summary = run(cfg, out_dir, hydra_cfg.overrides.task)
    except KeyboardInterrupt as err:  # stops a sweep too: the user or the cluster asked
        signum = getattr(err, "signum", signal.SIGINT)
        handler = signal.getsignal(signal.SIGUSR2)
        if signum == signal.SIGUSR2 and callable(handler):
            handler(signum, None)  # submitit's: requeue this job (it resumes from last.pt) and exit
        if multirun and "BasicLauncher" in str(hydra_cfg.launcher.get("_target_", "")):  # jobs one after another, here
            sweep_dir = Path(hydra_cfg.sweep.dir).absolute()
            path = write_results(sweep_dir)  # the jobs so far: the sweep's end, which writes it, never comes
            go_on = (SEARCH_STOPPED if is_search(hydra_cfg.sweeper)
                     else f"to go on (completed jobs are skipped, this one resumes): {_sweep_again()}")
            print(f"cnnbench: the sweep stopped in job {hydra_cfg.job.num}" + (f"; the jobs so far are in {path}" if path else "")
                  + f"; {go_on}", file=sys.stderr)
        sys.exit(128 + signum)  # 130 for SIGINT, 143 for SIGTERM
    status = summary["status"]
    if made_for_it and summary.get("bad_input") and distributed.from_env().main:
        # refused before anything was trained: a dir made for the run holds nothing worth keeping
        # (the error is on the screen), and would stand among the runs as a failed one
        shutil.rmtree(out_dir, ignore_errors=True)
        summary["refused"] = "removed"
    if not multirun and distributed.from_env().main:  # rank 0 alone says where the files are (the others' dirs go)
        print(f"cnnbench: {_closing_line(summary, out_dir)}", file=sys.stderr)
    if status != "completed":  # run() has logged why
        # A sweep goes on with its other jobs; a single run exits non-zero.
        if not multirun:
            sys.exit(BAD_INPUT_EXIT if summary.get("bad_input") else EXIT_CODES[status])
    return metric(summary, cfg.objective)


if __name__ == "__main__":
    main()
