"""Run and sweep dirs: one writer at a time, writable, and named only from safe values.

A dir is locked with an OS lock (``flock``) on ``.cnnbench.lock`` inside it for as long as the
process that writes it lives: a second run or sweep started into the same dir is refused with
the holder's PID, and a process that dies (even by SIGKILL) leaves no stale lock, since the OS
drops its locks. Locks are re-entrant within a process (a sweep's process holds its sweep dir
and each job's dir in turn).
"""
from __future__ import annotations

import fcntl
import json
import os
import re
from pathlib import Path
from typing import Any

LOCK_NAME = ".cnnbench.lock"
_held: dict[Path, tuple[int, int]] = {}  # dir -> (file descriptor, how many holds)


def read_summary(folder: Path) -> dict[str, Any]:
    """The summary.json of the run in ``folder``; {} when there is none or it cannot be read."""
    try:
        summary = json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def is_search(sweeper) -> bool:
    """Whether a sweeper config (``hydra.sweeper``) is a search (Optuna's, which draws its trials
    as it goes) rather than Hydra's grid sweeper, whose jobs are known up front."""
    return "BasicSweeper" not in str(sweeper.get("_target_") or "BasicSweeper")


def grid_overrides(sweep_dir: Path):
    """The overrides (``task``, ``hydra``) a grid sweep was started with, from the multirun.yaml
    Hydra's grid sweeper writes into its dir; None without one (a search writes none)."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra.overrides
    except Exception:  # noqa: BLE001 - none, or unreadable
        return None


# What an evaluation takes from its own config; every other setting is the trained model's.
EVALUATED_HERE = {"task", "data.root", "data.download", "data.test_subset", "data.test_batch_size",
                  "trainer.device", "trainer.precision", "trainer.resume", "logger"}


def described_config(summary: dict) -> dict:
    """The settings a run is listed with: its config; for task=evaluate, the trained run's
    (recorded in its checkpoint) with what the evaluation set itself. Its own config holds the
    command's defaults (trainer.max_epochs=10, optimizer.lr=0.1), not how the model was trained."""
    config, trained = summary.get("config") or {}, summary.get("trained_config")
    if not isinstance(trained, dict):
        return config
    described = {section: dict(value) if isinstance(value, dict) else value for section, value in trained.items()}
    for key in EVALUATED_HERE:
        section, _, name = key.partition(".")
        if not name:
            if section in config:
                described[section] = config[section]
        elif name in config.get(section, {}):
            described.setdefault(section, {})[name] = config[section][name]
    return described


class DirBusy(RuntimeError):
    """Another process writes this dir."""


def hold(folder: Path, key: str = "hydra.run.dir") -> None:
    """Lock ``folder`` for this process (created if needed); raise DirBusy when another process
    holds it. Each ``hold`` is matched by a ``release`` (process exit releases everything)."""
    shown, folder = folder, Path(folder).resolve()  # a message names the dir as the command gave it
    if folder in _held:
        fd, count = _held[folder]
        _held[folder] = (fd, count + 1)
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DirBusy(f"{key}={shown} is being written by another cnnbench process (PID {holder}); "
                      f"wait for it to finish, or choose another dir with {key}=DIR") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[folder] = (fd, 1)


def hold_unused(folder: Path, key: str = "hydra.run.dir") -> Path:
    """Hold ``folder``, or when another process holds it or it holds anything, the first of
    ``folder_2``, ``folder_3``, ... that is free and empty: for the default dirs, which are named
    by the second they start in, so that two runs started in the same second (``cnnbench seed=1 &
    cnnbench seed=2``) each get a dir of their own."""
    folder = Path(folder)
    for n in range(1, 1000):
        candidate = folder if n == 1 else folder.with_name(f"{folder.name}_{n}")
        try:
            hold(candidate, key)
        except DirBusy:
            continue
        if all(entry.name == LOCK_NAME for entry in candidate.iterdir()):
            return candidate
        release(candidate)
    raise DirBusy(f"{key}={folder} and 998 dirs named after it are in use; choose a dir with {key}=DIR")


def release(folder: Path) -> None:
    folder = Path(folder).resolve()
    if folder not in _held:
        return
    fd, count = _held.pop(folder)
    if count > 1:
        _held[folder] = (fd, count - 1)
    else:
        os.close(fd)  # closing the descriptor drops the lock


def resumes_in(resume: str, run_dir: Path) -> bool:
    """Whether ``trainer.resume`` names this run dir's own checkpoint: the dir, or its last.pt
    (another file put there, another run's copied in, is not the run of this dir)."""
    path = Path(resume).expanduser()
    return (path if path.is_dir() else path.parent if path.name == "last.pt" else path).resolve() == Path(run_dir).resolve()


_records: dict[Path, dict[Path, bytes]] = {}  # run dir -> its Hydra record (.hydra/*.yaml) before a resume


def keep_record(run_dir: Path, subdir: str | None) -> None:
    """Keep the Hydra record of the run a resume continues, before Hydra writes the resume's own
    over it: a resume refused for its settings puts it back (``restore_record``)."""
    files = (Path(run_dir) / subdir).glob("*.yaml") if subdir else ()  # hydra.output_subdir=null: Hydra writes none
    _records[Path(run_dir).resolve()] = {f: f.read_bytes() for f in files if f.is_file()}


def restore_record(run_dir: Path, put_back: bool = True) -> None:
    """Put back what ``keep_record`` kept (the config files of the run as it was trained), or with
    ``put_back=False`` forget it (the resume went ahead: its record is now the run's)."""
    for path, content in _records.pop(Path(run_dir).resolve(), {}).items():
        if put_back:
            path.write_bytes(content)


def safe_name(value: object) -> str:
    """``value`` as one path component that cannot leave its folder: anything but letters,
    digits, ``._-`` becomes ``_`` and leading dots go (so ``x/../../etc`` is ``x_.._.._etc``)."""
    text = re.sub(r"[^A-Za-z0-9._-]", "_", str(value)).lstrip(".")
    return text[:80] or "_"
