"""Trackers: ``logger=csv`` (the default), ``logger=tensorboard``, ``logger=mlflow``, or several
(``'logger=[tensorboard,mlflow]'``), behind one small interface.

metrics.csv is always written (by metrics.MetricsWriter); a tracker gets, besides, the
flattened config as parameters, every metrics.csv column per epoch (step = epoch) and the
run's files at the end (summary.json, curves.png, the per-class files). Everything is local
by default, inside the output tree, with no server:

- tensorboard: event files in ``<run dir>/tensorboard`` (one run), or one log dir per sweep,
  ``<sweep dir>/tensorboard/<job>_<overrides>``, so TensorBoard compares the jobs;
- mlflow: a SQLite store ``<run or sweep dir>/mlflow.db`` (artifacts beside it in
  ``mlartifacts/``), one experiment per sweep; ``logger.mlflow.tracking_uri`` points
  elsewhere (a shared ``sqlite:///...`` or a server's ``http://...``).

Only rank 0 logs under torchrun. A tracker that fails (unwritable store, server gone) is
logged and switched off: it never costs the run its files or its status. A resumed run
continues its tracker runs (ids in ``tracker.json`` in the run dir) without logging an
epoch twice.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from . import distributed
from .metrics import COLUMNS, MLFLOW_ARTIFACTS_DIR, TENSORBOARD_DIR, write_json
from .rundir import grid_overrides

log = logging.getLogger(__name__)

STATE_FILE = "tracker.json"
EXTRA = "pip install 'cnnbench[tracking]'"
# Files of a run dir handed to the trackers at its end, when they exist.
ARTIFACTS = ("summary.json", "metrics.csv", "curves.png", "per_class.csv", "confusion.csv", "confusion.png", "mistakes.png")
METRICS = [c for c in COLUMNS if c != "epoch"]


@dataclass
class Sweep:
    """Where a multirun job sits: the sweep dir, its job number and overrides."""

    dir: Path
    job: str
    overrides: list[str]  # this job's, those the sweep varies first

    @property
    def label(self) -> str:
        return f"{self.job}_{','.join(self.overrides)}" if self.overrides else self.job


def _swept_first(hydra_cfg, overrides: list[str]) -> list[str]:
    """``overrides`` with the keys the sweep varies alone, else all: its sweeper's params (a
    recipe's axes, a search's draws) and the command line's sweeps (from the multirun.yaml a
    grid sweep writes in its dir; a search writes none)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    grid = grid_overrides(hydra_cfg.sweep.dir)  # none for a search: its params alone
    lines = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()] + list(grid.task if grid else [])
    swept = set()
    for line in lines:
        try:
            override = parser.parse_override(line)
        except Exception:  # noqa: BLE001 - a line Hydra's parser refuses names no sweep
            continue
        if override.is_sweep_override():
            swept.add(override.key_or_group)
    mine = [o for o in overrides if o.lstrip("+~").partition("=")[0] in swept]
    return mine or overrides


def sweep_info() -> Sweep | None:
    """The sweep this process runs a job of (Hydra multirun), else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hydra_cfg = HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return None
        sweep_dir = Path(hydra_cfg.sweep.dir)  # as typed: it names the sweep's MLflow experiment
        return Sweep(sweep_dir, str(hydra_cfg.job.num), _swept_first(hydra_cfg, list(hydra_cfg.overrides.task)))
    except Exception:  # outside a Hydra app, or a Hydra without these fields
        return None


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{"optimizer.lr": 0.1, ...}``, values int/float/str/bool; the
    ``logger`` keys left out (where to log is not a parameter, and a URI may hold a password)."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, (bool, int, float, str)):
            out[prefix[:-1]] = node
        else:  # None, lists
            out[prefix[:-1]] = json.dumps(node)

    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    config.pop("logger", None)
    walk(config, "")
    return out


class Tracker:
    """One tracker. ``start`` returns what a resumed run needs to continue (kept in
    tracker.json); ``state`` is that of the run being resumed, else empty."""

    name = "csv"
    package: str | None = None  # the module it imports (the [tracking] extra installs it)
    keys: tuple[str, ...] = ()  # its options, logger.<name>.<key>
    continued = False  # set by start when it continues the tracker run of a resumed run

    def __init__(self, options: dict[str, Any]):
        self.options = options

    def start(self, cfg: DictConfig, run_dir: Path, sweep: Sweep | None, state: dict[str, Any]) -> dict[str, Any]:
        return {}

    def log_epoch(self, row: dict[str, float]) -> None:
        pass

    def log_artifacts(self, paths: list[Path]) -> None:
        pass

    def finish(self, status: str) -> None:
        pass

    def how_to_open(self) -> str | None:
        """The command that shows what was logged."""
        return None

    @classmethod
    def option_problem(cls, options: dict[str, Any]) -> str | None:
        """What is wrong with this tracker's options, found before the run starts (None: nothing)."""
        return None


class Csv(Tracker):
    """metrics.csv, summary.json and the PNGs: what every run writes anyway (nothing more to do)."""


class TensorBoard(Tracker):
    name = "tensorboard"
    package = "tensorboard"
    keys = ("log_dir",)

    def start(self, cfg, run_dir, sweep, state):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        base = self.options.get("log_dir")
        if sweep:
            self.root = Path(base) / _safe(str(sweep.dir)) if base else sweep.dir / TENSORBOARD_DIR
            log_dir = self.root / _safe(sweep.label)[:120]
        else:
            self.root = Path(base) if base else run_dir / TENSORBOARD_DIR
            log_dir = self.root / run_dir.name if base else self.root
        self.continued = bool(state.get("log_dir")) and Path(state["log_dir"]).absolute() == log_dir.absolute()
        if not self.continued:  # else a resumed run: its event files stay, epochs already there are skipped
            for old in log_dir.glob("events.out.tfevents.*"):  # an earlier run in this dir
                old.unlink()
        self.writer = SummaryWriter(str(log_dir))
        if not self.continued:
            params = flat_config(cfg)
            for summary in hparams(params, {f"hparams/{m}": 0 for m in ("final_test_acc", "best_test_acc", "worst_class_acc")}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```\n" + OmegaConf.to_yaml(cfg, resolve=True) + "```")
            self.writer.flush()
        self.log_dir = log_dir
        return {"log_dir": str(log_dir.absolute())}  # tracker.json's paths hold from any working dir

    def log_epoch(self, row):
        for key in METRICS:
            self.writer.add_scalar(key, row[key], row["epoch"])
        self.writer.flush()

    def log_artifacts(self, paths):
        from matplotlib.image import imread

        summary = next((json.loads(p.read_text()) for p in paths if p.name == "summary.json"), {})
        step = int(summary.get("epochs_completed") or 0)  # the files describe the model of the last epoch
        for path in paths:
            if path.suffix == ".png":
                self.writer.add_image(path.stem, imread(path)[..., :3], step, dataformats="HWC")
            elif path.name == "summary.json":
                self.writer.add_text(path.stem, "```\n" + json.dumps(summary, indent=2, default=str) + "\n```", step)
            elif path.suffix == ".csv" and path.name != "metrics.csv":  # a table, readable in the Text tab
                self.writer.add_text(path.stem, "```\n" + path.read_text() + "```", step)
        for key in ("final_test_acc", "best_test_acc", "worst_class_acc"):  # the hparams view's metrics
            if isinstance(summary.get(key), (int, float)):
                self.writer.add_scalar(f"hparams/{key}", summary[key], step)
        for name, acc in (summary.get("per_class_acc") or {}).items():
            self.writer.add_scalar(f"per_class_acc/{name}", acc, step)
        self.writer.flush()

    def finish(self, status):
        self.writer.add_text("status", status)
        self.writer.close()

    def how_to_open(self):
        return f"tensorboard --logdir {Path(self.root).absolute()}"  # the same from any working dir


def _check_store(uri: str) -> None:
    """Fail in seconds where MLflow retries for minutes before giving up (an HTTP server that
    does not answer: 7 retries with backoff; a SQLite file that cannot be opened: its engine's
    retries), so a tracker that cannot start costs the run a warning, not minutes."""
    import socket
    import sqlite3
    from urllib.parse import urlparse

    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        socket.create_connection((parsed.hostname, port), timeout=10).close()
    elif parsed.scheme == "sqlite" and uri.startswith("sqlite:///") and ":memory:" not in uri:
        with sqlite3.connect(uri[len("sqlite:///"):]) as db:  # opens (or creates) the file, as MLflow will
            db.execute("PRAGMA schema_version")


class MLflow(Tracker):
    name = "mlflow"
    package = "mlflow"
    keys = ("tracking_uri", "experiment")
    STATUS = {"completed": "FINISHED", "interrupted": "KILLED"}  # the rest: FAILED
    # the stores MLflow writes to out of the box (a database's scheme may name its driver: postgresql+psycopg2)
    SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")

    @classmethod
    def option_problem(cls, options):
        from importlib.metadata import entry_points
        from urllib.parse import urlparse

        uri = str(options.get("tracking_uri") or "")
        scheme = urlparse(uri).scheme.lower().partition("+")[0]
        plugins = {entry.name for entry in entry_points(group="mlflow.tracking_store")}  # a plugin's own store
        if len(scheme) < 2 or scheme in cls.SCHEMES or scheme in plugins:  # none (or a drive's C:): a folder, a file store
            return None
        return (f"logger.mlflow.tracking_uri={uri} is not a store MLflow can log to ({scheme}: is not one of its schemes); "
                f"allowed: sqlite:///PATH, http(s)://HOST:PORT (a tracking server), file:///PATH, "
                f"{', '.join(s + '://' for s in cls.SCHEMES[4:])}")

    def start(self, cfg, run_dir, sweep, state):
        from mlflow import MlflowClient  # imported here: it takes seconds
        from mlflow.entities import Param

        root = sweep.dir if sweep else run_dir
        uri = self.options.get("tracking_uri") or f"sqlite:///{(root / 'mlflow.db').resolve()}"
        self.uri, self.local = uri, not self.options.get("tracking_uri")
        _check_store(uri)
        # Jobs running side by side (hydra/launcher=local_parallel) share the sweep's store: one
        # at a time creates its tables (the first MlflowClient call) and the sweep's experiment.
        with _file_lock(root / ".mlflow.lock" if self.local else None):
            self.client = client = MlflowClient(tracking_uri=uri)
            if state.get("run_id") and state.get("tracking_uri") == uri:
                self.run_id, self.continued = state["run_id"], True
                client.update_run(self.run_id, status="RUNNING")
                return state
            experiment = self.options.get("experiment") or (f"cnnbench sweep {sweep.dir}" if sweep else "cnnbench")
            artifacts = (root / MLFLOW_ARTIFACTS_DIR).resolve().as_uri() if self.local else None
            found = client.get_experiment_by_name(experiment)
            if found is None:
                try:
                    experiment_id = client.create_experiment(experiment, artifact_location=artifacts)
                except Exception:  # another process created it first (a shared server or store)
                    experiment_id = client.get_experiment_by_name(experiment).experiment_id
            else:
                experiment_id = found.experiment_id
        name = f"{sweep.job}: {', '.join(sweep.overrides)}" if sweep else run_dir.name
        tags = {"cnnbench.run_dir": str(run_dir.resolve()), "cnnbench.model": str(cfg.model.get("name"))}
        if sweep:
            tags |= {"cnnbench.sweep_dir": str(sweep.dir.resolve()), "cnnbench.job": sweep.job}
        self.run_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        params = [Param(key, str(value)[:6000]) for key, value in flat_config(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            client.log_batch(self.run_id, params=params[i:i + 100])
        return {"run_id": self.run_id, "tracking_uri": uri, "experiment": experiment}

    def log_epoch(self, row):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(row[k]), now, int(row["epoch"])) for k in METRICS])

    def log_artifacts(self, paths):
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))
        summary = next((json.loads(p.read_text()) for p in paths if p.name == "summary.json"), {})
        finals = {k: v for k, v in summary.items() if k in ("final_test_acc", "best_test_acc", "worst_class_acc")}
        finals |= {f"per_class_acc.{_safe(k)}": v for k, v in (summary.get("per_class_acc") or {}).items()}
        from mlflow.entities import Metric

        now, step = int(time.time() * 1000), int(summary.get("epochs_completed") or 0)
        metrics = [Metric(k, float(v), now, step) for k, v in finals.items() if isinstance(v, (int, float)) and math.isfinite(v)]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        if summary.get("worst_class"):
            self.client.set_tag(self.run_id, "worst_class", summary["worst_class"])

    def finish(self, status):
        self.client.set_tag(self.run_id, "cnnbench.status", status)
        self.client.set_terminated(self.run_id, self.STATUS.get(status, "FAILED"))

    def how_to_open(self):
        return f"mlflow ui --backend-store-uri {self.uri}" if self.local else f"the MLflow server at {self.uri}"


TRACKERS: dict[str, type[Tracker]] = {t.name: t for t in (Csv, TensorBoard, MLflow)}


@contextmanager
def _file_lock(path: Path | None):
    """Hold an exclusive lock on ``path`` (created if need be) while the block runs; None: no lock."""
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _safe(text: str) -> str:
    """A file-name-safe version of ``text`` (overrides, class names)."""
    return re.sub(r"[^\w.,=+-]+", "_", text).strip("_") or "_"


def config_problem(chosen: Any) -> str | None:
    """What is wrong with ``cfg.logger`` (unknown tracker or key, missing package), or None."""
    for name, options in (chosen or {}).items():
        if name not in TRACKERS:
            return f"logger={name} is not a tracker; choose from {', '.join(TRACKERS)} (several: 'logger=[tensorboard,mlflow]')"
        tracker = TRACKERS[name]
        for key in options or {}:
            if key not in tracker.keys:
                allowed = ", ".join(tracker.keys) or "none"
                return f"logger.{name}.{key} is not an option of logger={name}; allowed: {allowed}"
        if tracker.package and importlib.util.find_spec(tracker.package) is None:
            return f"logger={name} needs the {tracker.package} package, which is not installed: {EXTRA}"
        if problem := tracker.option_problem(options or {}):
            return problem
    return None


class Trackers:
    """The trackers of one run, every call guarded: a failing tracker is logged and dropped."""

    def __init__(self, run_dir: Path, trackers: list[Tracker] = (), state: dict[str, Any] | None = None):
        self.run_dir = run_dir
        self.trackers = list(trackers)
        self.state = state or {}
        self.started = time.time()
        self.failed: list[str] = []  # trackers switched off by an error: the run's last line names them

    def _call(self, tracker: Tracker, what: str, fn, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception as err:
            log.warning("logger=%s failed to %s (%s: %s); the run goes on without it", tracker.name, what,
                        type(err).__name__, str(err).strip().splitlines()[0] if str(err).strip() else "")
            if tracker in self.trackers:
                self.trackers.remove(tracker)
            self.failed.append(tracker.name)
            return False

    def _save(self) -> None:
        if not self.state:  # no tracker started, none to continue: no file to list among the run's
            return
        try:
            write_json(self.run_dir / STATE_FILE, self.state)
        except OSError as err:
            log.warning("could not write %s: %s", self.run_dir / STATE_FILE, err)

    def log_epoch(self, row: dict[str, float]) -> None:
        """Each metrics row, once per tracker (a resumed run re-running an epoch skips it)."""
        for tracker in list(self.trackers):
            state = self.state.setdefault(tracker.name, {})
            if row["epoch"] <= state.get("epochs_logged", 0):
                continue
            if self._call(tracker, f"log epoch {row['epoch']}", tracker.log_epoch, row):
                state["epochs_logged"] = row["epoch"]
        if self.trackers:
            self._save()

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        paths = [p for p in paths if p.is_file()]
        for tracker in list(self.trackers):
            self._call(tracker, "log the run's files", tracker.log_artifacts, paths)

    def finish(self, status: str) -> None:
        # this run's files only (a new run in an old dir may find an earlier run's plots there)
        paths = [self.run_dir / name for name in ARTIFACTS]
        self.log_artifacts(p for p in paths if p.is_file() and p.stat().st_mtime >= self.started - 1)
        in_sweep = sweep_info() is not None
        for tracker in list(self.trackers):
            if self._call(tracker, "finish", tracker.finish, status):
                where = tracker.how_to_open()
                if where and in_sweep:  # the sweep says it once, at its end (sweep_open_commands)
                    self.state.setdefault(tracker.name, {})["open"] = where
                elif where:
                    log.info("logger=%s: open with  %s", tracker.name, where)
        if in_sweep:
            self._save()
        self.trackers = []


_open: Trackers | None = None  # the trackers of the run under way in this process


def start(cfg: DictConfig, run_dir: Path, resumed: bool = False) -> Trackers:
    """Start the trackers ``cfg.logger`` names for a run writing into ``run_dir``; on a resumed
    run, continue the tracker runs recorded in its tracker.json. Rank 0 only."""
    global _open
    run_dir = Path(run_dir)
    chosen = [name for name in (cfg.get("logger") or {}) if name != "csv"]
    if not chosen or not distributed.from_env().main:
        _open = Trackers(run_dir)
        return _open
    before: dict[str, Any] = {}
    if resumed:
        try:
            before = json.loads((run_dir / STATE_FILE).read_text())
        except (OSError, ValueError):
            before = {}
    sweep = sweep_info()
    # a tracker that cannot start now keeps its earlier run in tracker.json, for a later resume
    trackers = Trackers(run_dir, state={name: before[name] for name in chosen if name in before})
    for name in chosen:
        tracker = TRACKERS[name](OmegaConf.to_container(cfg.logger[name], resolve=True) or {})
        earlier = before.get(name, {})
        started: dict[str, Any] = {}
        trackers.trackers.append(tracker)
        if trackers._call(tracker, "start", lambda: started.update(tracker.start(cfg, run_dir, sweep, earlier))):
            logged = earlier.get("epochs_logged", 0) if tracker.continued else 0
            trackers.state[name] = started | {"epochs_logged": logged}
    trackers._save()
    _open = trackers
    return trackers


def sweep_open_commands(sweep_dir: Path) -> list[str]:
    """How to open what a sweep's jobs logged, each command once (its jobs share one log dir or
    store): read from their tracker.json."""
    commands: dict[str, None] = {}
    for state_file in sorted(Path(sweep_dir).glob(f"*/{STATE_FILE}")):
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            continue
        for name, tracked in state.items():
            if isinstance(tracked, dict) and tracked.get("open"):
                commands[f"logger={name}: open with  {tracked['open']}"] = None
    return list(commands)


def finish(run_dir: Path, status: str) -> list[str]:
    """End the trackers started for ``run_dir`` (if any) with the run's final status, after
    handing them its files. Called by train.run once summary.json is final. Returns the trackers
    that failed during the run (each was logged as a warning and switched off)."""
    global _open
    trackers, _open = _open, None
    if trackers is None or trackers.run_dir != Path(run_dir):
        return []
    trackers.finish(status)
    return trackers.failed
