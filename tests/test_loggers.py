"""Trackers (logger=csv|tensorboard|mlflow): what was logged is read back through each library's
own reader and compared with metrics.csv; failures never cost a run its files or status."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from cnnbench import engine, loggers
from cnnbench.distributed import World
from cnnbench.metrics import COLUMNS
from cnnbench.train import run

METRICS = [c for c in COLUMNS if c != "epoch"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An empty MLflow SQLite store, created once: creating one runs MLflow's ~100 schema
    migrations (seconds). ``store(folder)`` puts a copy where a run or sweep expects its own."""
    pytest.importorskip("tensorboard", reason="needs the [tracking] extra")
    pytest.importorskip("mlflow", reason="needs the [tracking] extra")
    from mlflow import MlflowClient

    template = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{template}").search_experiments()

    def put(folder):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, folder / "mlflow.db")
        return folder

    return put


def tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events, {tag: [(s.step, s.value) for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_run(run_dir):
    from mlflow import MlflowClient

    state = json.loads((run_dir / loggers.STATE_FILE).read_text())["mlflow"]
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    return client, client.get_run(state["run_id"])


def assert_same_as_metrics_csv(history: dict[str, list[tuple[int, float]]], metrics: pd.DataFrame, rel=0.0) -> None:
    for column in METRICS:
        assert [step for step, _ in history[column]] == metrics["epoch"].tolist(), column  # each epoch once
        assert [value for _, value in history[column]] == pytest.approx(metrics[column].tolist(), rel=rel), column


def test_the_logger_group_and_its_multi_select(make_cfg):
    assert list(make_cfg().logger) == ["csv"]
    assert list(make_cfg("logger=mlflow").logger) == ["mlflow"]
    both = make_cfg("logger=[tensorboard,mlflow]", "logger.mlflow.tracking_uri=http://tracker:5000")
    assert OmegaConf.to_container(both.logger) == {"tensorboard": {"log_dir": None},
                                                   "mlflow": {"tracking_uri": "http://tracker:5000", "experiment": None}}
    assert "not an option of logger=tensorboard; allowed: log_dir" in loggers.config_problem({"tensorboard": {"logdir": "x"}})
    assert "logger=wandb is not a tracker" in loggers.config_problem({"wandb": {}})


def test_the_trackers_are_imported_only_when_chosen():
    code = "import sys, cnnbench.train; print(sorted(m for m in ('mlflow', 'tensorboard') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"  # importing MLflow takes seconds


def test_a_missing_tracker_package_names_the_extra(make_cfg, tmp_path, monkeypatch):
    real = loggers.importlib.util.find_spec
    monkeypatch.setattr(loggers.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    summary = run(make_cfg("logger=[csv,mlflow]"), tmp_path)
    assert summary["status"] == "failed" and summary["bad_input"]
    assert summary["error"] == "logger=mlflow needs the mlflow package, which is not installed: pip install 'cnnbench[tracking]'"


def test_tensorboard_and_mlflow_get_what_metrics_csv_holds(make_cfg, tiny_data, tmp_path, store):
    store(tmp_path)
    summary = run(make_cfg("trainer=smoke", f"data.root={tiny_data}", "logger=[tensorboard,mlflow]", "optimizer.lr=0.05",
                           "trainer.plot=true"), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    metrics = pd.read_csv(tmp_path / "metrics.csv")

    events, scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert_same_as_metrics_csv(scalars, metrics, rel=1e-6)  # event files hold float32
    assert set(events.Tags()["images"]) == {"curves", "confusion", "mistakes"}
    assert [image.step for image in events.Images("confusion")] == [2]  # the model of the last epoch
    assert scalars["per_class_acc/Shirt"][0][1] == pytest.approx(summary["per_class_acc"]["Shirt"])
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["optimizer.lr"].number_value == 0.05 and hparams["model.name"].string_value == "bn_lenet"

    client, tracked = mlflow_run(tmp_path)
    history = {m: [(x.step, x.value) for x in client.get_metric_history(tracked.info.run_id, m)] for m in METRICS}
    assert_same_as_metrics_csv(history, metrics)
    assert tracked.info.status == "FINISHED" and tracked.data.tags["cnnbench.status"] == "completed"
    assert tracked.data.params["optimizer.lr"] == "0.05" and tracked.data.params["trainer.max_epochs"] == "2"
    assert not any(key.startswith("logger.") for key in tracked.data.params)  # where to log (a URI may hold a password)
    assert tracked.data.tags["worst_class"] == summary["worst_class"]
    artifacts = {a.path for a in client.list_artifacts(tracked.info.run_id)}
    assert {"summary.json", "metrics.csv", "curves.png", "per_class.csv", "confusion.csv", "confusion.png", "mistakes.png"} <= artifacts
    logged = json.loads(open(client.download_artifacts(tracked.info.run_id, "summary.json", str(tmp_path / "dl"))).read())
    assert logged["status"] == "completed" and logged["per_class_acc"] == summary["per_class_acc"]  # the final file


def test_a_resumed_run_continues_its_tracker_runs_without_repeating_epochs(make_cfg, tiny_data, tmp_path, monkeypatch, store):
    store(tmp_path)
    args = [f"data.root={tiny_data}", "data.batch_size=16", "trainer.checkpoint=true", "logger=[tensorboard,mlflow]"]
    assert run(make_cfg(*args, "trainer.max_epochs=2"), tmp_path)["status"] == "completed"
    _, first = mlflow_run(tmp_path)

    def dies_halfway(obj, f, *a, **k):  # epoch 3 is logged, then its checkpoint cannot be written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine.torch, "save", dies_halfway)
    assert run(make_cfg(*args, "trainer.max_epochs=3", f"trainer.resume={tmp_path}"), tmp_path)["status"] == "failed"
    monkeypatch.undo()
    client, cut = mlflow_run(tmp_path)
    assert cut.info.run_id == first.info.run_id and cut.info.status == "FAILED"
    # resumed from epoch 2's checkpoint: epoch 3 runs again, and is not logged again
    assert run(make_cfg(*args, "trainer.max_epochs=3", f"trainer.resume={tmp_path}"), tmp_path)["status"] == "completed"
    client, resumed = mlflow_run(tmp_path)
    assert resumed.info.run_id == first.info.run_id and resumed.info.status == "FINISHED"
    assert len(client.search_runs([resumed.info.experiment_id])) == 1
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["epoch"].tolist() == [1, 2, 3]
    history = {m: [(x.step, x.value) for x in client.get_metric_history(resumed.info.run_id, m)] for m in METRICS
               if m != "epoch_time_s" and m != "train_images_per_s" and m != "peak_mem_mb"}
    for m in ("train_loss", "train_acc", "test_loss", "test_acc", "lr"):  # an exact resume: the same numbers
        assert history[m] == [(e, pytest.approx(v)) for e, v in zip(metrics["epoch"], metrics[m])], m
    _, scalars = tensorboard_scalars(tmp_path / "tensorboard")
    assert [step for step, _ in scalars["test_acc"]] == [1, 2, 3]
    assert [v for _, v in scalars["test_acc"]] == pytest.approx(metrics["test_acc"].tolist(), rel=1e-6)


def test_an_interrupted_run_resumes_its_mlflow_run(make_cfg, tiny_data, tmp_path, monkeypatch, store):
    import signal

    from cnnbench.metrics import MetricsWriter

    store(tmp_path)
    args = [f"data.root={tiny_data}", "data.batch_size=16", "trainer.max_epochs=2", "logger=mlflow",
            "trainer.checkpoint=true"]  # (without, the stop's last.pt goes when the resumed run completes)
    write = MetricsWriter.write

    def write_then_sigterm(self, row):  # SIGTERM arrives as epoch 1's row is written
        write(self, row)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(MetricsWriter, "write", write_then_sigterm)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*args), tmp_path)
    monkeypatch.undo()
    client, cut = mlflow_run(tmp_path)
    assert cut.info.status == "KILLED" and cut.data.tags["cnnbench.status"] == "interrupted"
    assert run(make_cfg(*args, f"trainer.resume={tmp_path}"), tmp_path)["status"] == "completed"
    client, resumed = mlflow_run(tmp_path)
    assert resumed.info.run_id == cut.info.run_id and resumed.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "test_acc")] == [1, 2]
    # task=evaluate of the same checkpoint: a tracker run of its own, with the per-class files
    store(tmp_path / "eval")
    summary = run(make_cfg("task=evaluate", f"trainer.resume={tmp_path}", f"data.root={tiny_data}", "logger=mlflow", "trainer.plot=true"),
                  tmp_path / "eval")
    client, evaluated = mlflow_run(tmp_path / "eval")
    assert evaluated.info.status == "FINISHED" and evaluated.info.run_id != resumed.info.run_id
    assert {"per_class.csv", "confusion.png", "summary.json"} <= {a.path for a in client.list_artifacts(evaluated.info.run_id)}
    assert evaluated.data.metrics["worst_class_acc"] == pytest.approx(summary["worst_class_acc"])


def test_a_failing_tracker_never_costs_the_run(make_cfg, tiny_data, tmp_path, monkeypatch, caplog, store):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    log_epoch = loggers.TensorBoard.log_epoch

    def server_gone(self, row):
        if row["epoch"] == 2:
            raise ConnectionError("the disk went away")
        log_epoch(self, row)

    monkeypatch.setattr(loggers.TensorBoard, "log_epoch", server_gone)
    with caplog.at_level(logging.WARNING, logger="cnnbench.loggers"):
        summary = run(make_cfg("trainer=smoke", f"data.root={tiny_data}", "logger=[tensorboard,mlflow]",
                               f"logger.mlflow.tracking_uri=sqlite:///{blocker}/mlflow.db", "trainer.plot=true"), tmp_path / "run")
    assert summary["status"] == "completed", summary.get("error")
    assert pd.read_csv(tmp_path / "run" / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert (tmp_path / "run" / "confusion.png").is_file()
    warnings = [r.getMessage() for r in caplog.records]
    assert any("logger=mlflow failed to start" in w for w in warnings), warnings
    assert any("logger=tensorboard failed to log epoch 2" in w and "the disk went away" in w for w in warnings), warnings
    _, scalars = tensorboard_scalars(tmp_path / "run" / "tensorboard")
    assert [step for step, _ in scalars["test_acc"]] == [1]
    from cnnbench.train import _closing_line  # the run's last line says its trackers are off, once each

    assert summary["trackers_failed"] == ["mlflow", "tensorboard"]
    assert _closing_line(summary, tmp_path / "run").endswith(
        "; logger=mlflow and logger=tensorboard failed and were switched off (the warning above says why)")


@pytest.mark.parametrize("uri, allowed", [("foo://x", False), ("htp://localhost:5000", False), ("sqlite:///tmp/m.db", True),
                                          ("http://localhost:5000", True), ("postgresql+psycopg2://u@h/db", True),
                                          ("mlruns", True), ("file:///tmp/mlruns", True), ("C:/mlruns", True)])
def test_a_tracking_uri_mlflow_cannot_log_to_is_refused_before_the_run(make_cfg, uri, allowed):
    from cnnbench.config import ConfigError, validate

    cfg = make_cfg("logger=mlflow", f"logger.mlflow.tracking_uri={uri}")
    if allowed:
        validate(cfg)
    else:
        with pytest.raises(ConfigError, match=rf"logger.mlflow.tracking_uri={uri} is not a store MLflow can log to "
                                              rf"\({uri.partition(':')[0]}: is not one of its schemes\); allowed: sqlite:///PATH"):
            validate(cfg)


def test_only_rank_0_logs(make_cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(loggers.distributed, "from_env", lambda: World(rank=1, size=2, distributed=True))
    trackers = loggers.start(make_cfg("logger=[tensorboard,mlflow]"), tmp_path)
    assert trackers.trackers == [] and not (tmp_path / loggers.STATE_FILE).exists()
    trackers.log_epoch({"epoch": 1, **{m: 0.0 for m in METRICS}})
    loggers.finish(tmp_path, "completed")
    assert list(tmp_path.iterdir()) == []


def test_a_sweeps_jobs_land_in_one_experiment_and_one_log_dir(make_cfg, tiny_data, tmp_path, monkeypatch, store):
    store(tmp_path)
    for job, lr in (("0", "0.01"), ("1", "0.1")):  # as Hydra's multirun runs them (the command: test below)
        monkeypatch.setattr(loggers, "sweep_info", lambda: loggers.Sweep(tmp_path, job, [f"optimizer.lr={lr}"]))
        summary = run(make_cfg("trainer=smoke", f"data.root={tiny_data}", f"optimizer.lr={lr}", "logger=[tensorboard,mlflow]"),
                      tmp_path / job)
        assert summary["status"] == "completed", summary.get("error")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(f"cnnbench sweep {tmp_path}")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["0: optimizer.lr=0.01", "1: optimizer.lr=0.1"]
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["0_optimizer.lr=0.01", "1_optimizer.lr=0.1"]
    # how to open them: once for the sweep (at its end), not once per job
    assert loggers.sweep_open_commands(tmp_path) == [f"logger=tensorboard: open with  tensorboard --logdir {tmp_path}/tensorboard",
                                                     f"logger=mlflow: open with  mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db"]
    for job, lr in (("0", "0.01"), ("1", "0.1")):
        metrics = pd.read_csv(tmp_path / job / "metrics.csv")
        tracked = runs[f"{job}: optimizer.lr={lr}"]
        assert tracked.data.params["optimizer.lr"] == lr and tracked.info.status == "FINISHED"
        history = {m: [(x.step, x.value) for x in client.get_metric_history(tracked.info.run_id, m)] for m in METRICS}
        assert_same_as_metrics_csv(history, metrics)
        _, scalars = tensorboard_scalars(tmp_path / "tensorboard" / f"{job}_optimizer.lr={lr}")
        assert_same_as_metrics_csv(scalars, metrics, rel=1e-6)


@pytest.mark.slow  # a whole sweep in a subprocess: about 30 s on 2 busy cores
def test_the_multi_select_sweep_command(tiny_data, tmp_path):
    pytest.importorskip("tensorboard", reason="needs the [tracking] extra")
    pytest.importorskip("mlflow", reason="needs the [tracking] extra")
    proc = subprocess.run([sys.executable, "-m", "cnnbench", "-m", "trainer=smoke", f"data.root={tiny_data}",
                           "optimizer.lr=0.01,0.1", "logger=[tensorboard,mlflow]", f"hydra.sweep.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(f"tensorboard --logdir {tmp_path}/tensorboard") == 1  # once, at the sweep's end
    assert proc.stderr.count(f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db") == 1
    assert "database tables" not in proc.stderr and "[HYDRA]" not in proc.stderr + proc.stdout  # MLflow's set-up lines: not ours
    assert "] Launching 2 jobs locally" in proc.stderr  # Hydra's own lines: on stderr, on the run's clock
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(f"cnnbench sweep {tmp_path}")
    # named by what the sweep varies (read from its multirun.yaml), not by every override
    assert sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id])) == \
        ["0: optimizer.lr=0.01", "1: optimizer.lr=0.1"]
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["0_optimizer.lr=0.01", "1_optimizer.lr=0.1"]
    results = pd.read_csv(tmp_path / "results.csv")  # the sweep's table gains the worst class
    assert results["worst_class"].notna().all() and results["worst_class_acc"].between(0, 1).all()
    assert (tmp_path / "report.html").stat().st_size > 50_000


@pytest.mark.parametrize("where", ["http", "sqlite"])
def test_a_tracking_store_that_cannot_answer_fails_at_once(make_cfg, tmp_path, monkeypatch, caplog, where):
    """MLflow retries an unreachable server or an unopenable SQLite file for minutes; cnnbench
    tries it once first, and the run goes on without the tracker."""
    import socket

    import mlflow

    if where == "http":
        with socket.socket() as probe:  # a port nothing listens on
            probe.bind(("127.0.0.1", 0))
            uri = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    else:
        (tmp_path / "file").write_text("")
        uri = f"sqlite:///{tmp_path / 'file' / 'mlflow.db'}"  # below a file: cannot be opened
    monkeypatch.setattr(mlflow, "MlflowClient", lambda *a, **k: pytest.fail("MLflow was asked to retry"))
    with caplog.at_level(logging.WARNING, logger="cnnbench.loggers"):
        trackers = loggers.start(make_cfg("logger=mlflow", f"logger.mlflow.tracking_uri={uri}"), tmp_path)
    assert trackers.trackers == []
    assert any("logger=mlflow failed to start" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / loggers.STATE_FILE).exists()  # no tracker started: no empty tracker.json among the run's files


def test_a_jobs_tracker_name_holds_what_its_sweep_varies(tmp_path):
    """A grid's command-line sweeps (its multirun.yaml), a recipe's axes and a search's draws (its
    sweeper's params: Optuna writes no multirun.yaml) name a job's TensorBoard folder and MLflow run."""
    def hydra_cfg(params: dict):
        return OmegaConf.create({"sweep": {"dir": str(tmp_path)}, "sweeper": {"params": params}})

    job = ["experiment=ex_bn_lr", "model.norm=batch", "optimizer.lr=0.05", "data.batch_size=64", "trainer=smoke"]
    search = {"optimizer.lr": "tag(log, interval(0.005, 2.0))", "data.resize": "28"}  # a fixed value is no axis
    assert loggers._swept_first(hydra_cfg(search), job) == ["optimizer.lr=0.05"]
    recipe = {"model.norm": "none,batch", "optimizer.lr": "0.01,0.05"}
    assert loggers._swept_first(hydra_cfg(recipe), job) == ["model.norm=batch", "optimizer.lr=0.05"]
    OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": ["data.batch_size=64,128", "trainer=smoke"]}}}),
                   tmp_path / "multirun.yaml")
    assert loggers._swept_first(hydra_cfg(recipe), job) == ["model.norm=batch", "optimizer.lr=0.05", "data.batch_size=64"]
    assert loggers._swept_first(hydra_cfg({}), ["trainer=smoke", "seed=1"]) == ["trainer=smoke", "seed=1"]  # nothing swept: all
