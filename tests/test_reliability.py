"""Interruption, exact resume, atomic checkpoints, and hostile inputs."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnbench import engine
from cnnbench.config import ConfigError, validate
from cnnbench.metrics import MetricsWriter
from cnnbench.train import run

# Long enough epochs (about 2 s on 2 cores) to be signalled in the middle of one. Augmentation,
# a cosine schedule and momentum make every kind of state matter for an exact resume.
RUN = ["model=bn_lenet", "data.subset=16384", "data.test_subset=2000", "data.batch_size=32", "trainer.max_epochs=3",
       "data.hflip=true", "data.crop_padding=2", "scheduler=cosine", "optimizer.momentum=0.9"]
EXACT = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]


def cnnbench(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(real_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    proc = cnnbench(*RUN, f"hydra.run.dir={out}")
    assert proc.wait(timeout=600) == 0, proc.stderr.read()
    return pd.read_csv(out / "metrics.csv", dtype=str)


# Real signals to a real process, timed into the middle of an epoch (slow: three processes of
# three long epochs; tests/test_train.py stops a run mid-epoch in-process, every time).
@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_epoch_then_resume_matches_an_uninterrupted_run(uninterrupted, tmp_path, sig, code):
    proc = cnnbench(*RUN, f"hydra.run.dir={tmp_path}")
    metrics = tmp_path / "metrics.csv"
    deadline = time.time() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):  # epoch 1 written
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
        time.sleep(0.02)
    time.sleep(0.5)  # into epoch 2
    proc.send_signal(sig)
    assert proc.wait(timeout=120) == code
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert f"stopped by {sig.name} in epoch 2 after step" in summary["error"] and "trainer.resume=" in summary["error"]
    assert pd.read_csv(metrics)["epoch"].tolist() == [1]  # only whole rows
    state = engine.load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 1 and 0 < state["partial"]["batches_done"] < 512

    resumed = subprocess.run([sys.executable, "-m", "cnnbench", *RUN, f"hydra.run.dir={tmp_path}", f"trainer.resume={tmp_path}"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"]["epochs_done"] == 1
    # the same numbers, to the last digit written
    pd.testing.assert_frame_equal(pd.read_csv(metrics, dtype=str)[EXACT], uninterrupted[EXACT])


def test_a_killed_checkpoint_write_leaves_the_previous_one(make_cfg, tiny_data, tmp_path, monkeypatch):
    args = [f"data.root={tiny_data}", "data.batch_size=16", "trainer.checkpoint=true"]
    assert run(make_cfg(*args, "trainer.max_epochs=2"), tmp_path)["status"] == "completed"
    assert engine.load_checkpoint(tmp_path / "last.pt")["epoch"] == 2

    def dies_halfway(obj, f, *a, **k):
        f.write(b"\x80\x02 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine.torch, "save", dies_halfway)
    summary = run(make_cfg(*args, "trainer.max_epochs=3", f"trainer.resume={tmp_path}"), tmp_path)
    assert summary["status"] == "failed" and "no space left on the device to write" in summary["error"]
    monkeypatch.undo()
    state = engine.load_checkpoint(tmp_path / "last.pt")
    assert state["epoch"] == 2  # the old checkpoint, whole
    # the epoch that ran was recorded; a resume from the checkpoint drops it and runs it again
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2, 3]
    assert run(make_cfg(*args, "trainer.max_epochs=3", f"trainer.resume={tmp_path}"), tmp_path)["status"] == "completed"
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def test_a_resume_under_another_process_count_says_it_is_not_exact(make_cfg, tiny_data, tmp_path, caplog):
    """The global batch is the same under any number of torchrun processes, so a resume with
    another count is allowed; but batch norm's statistics are per process: it is said, and kept."""
    args = [f"data.root={tiny_data}", "data.batch_size=16", "trainer.checkpoint=true"]
    assert run(make_cfg(*args, "trainer.max_epochs=1"), tmp_path)["status"] == "completed"
    state = engine.load_checkpoint(tmp_path / "last.pt")
    assert state["meta"]["processes"] == 1
    state["meta"]["processes"] = 2  # as if written by a two-process torchrun
    torch.save(state, tmp_path / "last.pt")
    summary = run(make_cfg(*args, "trainer.max_epochs=2", f"trainer.resume={tmp_path}"), tmp_path)
    assert summary["status"] == "completed" and summary["resumed_from"]["processes"] == 2
    assert "the checkpoint's run had 2 process(es), this one has 1" in caplog.text
    state["meta"].pop("processes")  # a checkpoint from before the count was kept: one process
    torch.save(state, tmp_path / "older.pt")  # (older than the run in tmp_path: resumed elsewhere)
    summary = run(make_cfg(*args, "trainer.max_epochs=2", f"trainer.resume={tmp_path / 'older.pt'}"), tmp_path / "again")
    assert summary["status"] == "completed" and "processes" not in summary["resumed_from"]


def test_sigterm_at_an_epoch_end_then_resume_matches(make_cfg, tiny_data, tmp_path, monkeypatch):
    args = [f"data.root={tiny_data}", "data.batch_size=16", "data.hflip=true", "data.crop_padding=2",
            "scheduler=onecycle", "optimizer.momentum=0.9", "model=lenet", "trainer.max_epochs=4"]
    run(make_cfg(*args), tmp_path / "full")
    write = MetricsWriter.write

    def write_then_sigterm(self, row):  # SIGTERM arrives as epoch 2's row is written
        write(self, row)
        if row["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(MetricsWriter, "write", write_then_sigterm)
    with pytest.raises(KeyboardInterrupt):  # run() records, then re-raises for main() to exit 143
        run(make_cfg(*args), tmp_path / "cut")
    monkeypatch.undo()
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "stopped by SIGTERM after epoch 2" in summary["error"]
    assert engine.load_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    assert run(make_cfg(*args, f"trainer.resume={tmp_path / 'cut'}"), tmp_path / "cut")["status"] == "completed"
    full = pd.read_csv(tmp_path / "full" / "metrics.csv", dtype=str)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cut" / "metrics.csv", dtype=str)[EXACT], full[EXACT])


def test_save_best_keeps_the_best_weights(make_cfg, tiny_data, tmp_path):
    run(make_cfg(f"data.root={tiny_data}", "data.batch_size=16", "trainer.max_epochs=3", "trainer.save_best=true"), tmp_path)
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert best["meta"]["test_acc"] == pytest.approx(metrics["test_acc"].max())
    assert best["meta"]["epoch"] == metrics.loc[metrics["test_acc"].idxmax(), "epoch"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=lenet"], "the checkpoint is of model='bn_lenet', this run has model='lenet'"),
        (["model.padding=1"], "the checkpoint is of knobs="),
        (["data.resize=32"], "the checkpoint is of resolution=[28, 28], this run has resolution=[32, 32]"),
    ],
)
def test_a_checkpoint_of_another_model_is_refused(make_cfg, tiny_data, tmp_path, overrides, message):
    run(make_cfg(f"data.root={tiny_data}", "trainer.max_epochs=1", "trainer.checkpoint=true"), tmp_path / "a")
    summary = run(make_cfg(f"data.root={tiny_data}", *overrides, f"trainer.resume={tmp_path / 'a'}"), tmp_path / "b")
    assert summary["status"] == "failed" and summary["bad_input"] and message in summary["error"]
    assert not (tmp_path / "b" / "metrics.csv").exists()


@pytest.mark.parametrize(
    "first, then, message",
    [
        (["optimizer.lr=0.05"], [], "the checkpoint's run had optimizer.lr=0.05; this run has optimizer.lr=0.1. An exact resume"),
        (["data.normalize=true"], [], "had data.normalize=True; this run has data.normalize=False"),
        # a cosine schedule spans the run it was built for: a longer resume would climb back up
        (["scheduler=cosine"], ["scheduler=cosine", "trainer.max_epochs=3"], "had trainer.max_epochs=1; this run has trainer.max_epochs=3"),
        # epochs of another length, or a seed the weights did not come from, recorded as the run's
        ([], ["trainer.limit_train_batches=1"], "had trainer.limit_train_batches=None; this run has trainer.limit_train_batches=1"),
        (["seed=3"], [], "had seed=3; this run has seed=0"),
    ],
)
def test_a_resume_in_other_settings_is_refused_with_the_first_runs_overrides(make_cfg, tiny_data, tmp_path, first, then, message):
    start = [f"data.root={tiny_data}", "trainer.max_epochs=1", "trainer.checkpoint=true", *first]
    run(make_cfg(*start), tmp_path / "a", overrides=start)
    summary = run(make_cfg(f"data.root={tiny_data}", "trainer.max_epochs=2", *then, f"trainer.resume={tmp_path / 'a'}"), tmp_path / "b")
    assert summary["status"] == "failed" and summary["bad_input"] and message in summary["error"], summary["error"]
    assert f"resume with the overrides of the run that wrote it: {' '.join(start)}" in summary["error"]
    assert not (tmp_path / "b" / "metrics.csv").exists()


def test_a_checkpoint_written_before_a_key_was_recorded_still_resumes(make_cfg, tiny_data, tmp_path):
    """The seed and trainer.limit_train_batches joined the recorded recipe later: an older last.pt,
    whose recipe lacks them, is not refused for them."""
    start = [f"data.root={tiny_data}", "trainer.max_epochs=1", "trainer.checkpoint=true"]
    run(make_cfg(*start), tmp_path)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("seed", "trainer.limit_train_batches"):
        del state["meta"]["recipe"][key]
    torch.save(state, tmp_path / "last.pt")
    summary = run(make_cfg(start[0], "trainer.max_epochs=2", f"trainer.resume={tmp_path}"), tmp_path)
    assert summary["status"] == "completed", summary.get("error")


def test_more_epochs_of_a_run_without_a_spanning_schedule_resume(make_cfg, tiny_data, tmp_path):
    start = [f"data.root={tiny_data}", "trainer.max_epochs=1", "trainer.checkpoint=true", "scheduler=step"]
    run(make_cfg(*start), tmp_path)
    summary = run(make_cfg(*start[:1], "trainer.max_epochs=2", "scheduler=step", f"trainer.resume={tmp_path}"), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1, 2]


def test_a_run_resumed_into_another_dir_carries_the_curve_so_far(make_cfg, tiny_data, tmp_path):
    start = [f"data.root={tiny_data}", "trainer.max_epochs=2", "trainer.checkpoint=true"]
    run(make_cfg(*start), tmp_path / "a")
    summary = run(make_cfg(*start[:1], "trainer.max_epochs=3", f"trainer.resume={tmp_path / 'a'}"), tmp_path / "b")
    assert summary["status"] == "completed", summary.get("error")
    first, resumed = pd.read_csv(tmp_path / "a" / "metrics.csv"), pd.read_csv(tmp_path / "b" / "metrics.csv")
    assert resumed["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(resumed.iloc[:2], first)  # the first run's rows as they were
    assert first["epoch"].tolist() == [1, 2]  # and its own file untouched


def test_missing_or_broken_checkpoints_are_refused(make_cfg, tiny_data, tmp_path):
    summary = run(make_cfg(f"data.root={tiny_data}", f"trainer.resume={tmp_path}"), tmp_path / "b")
    assert "no checkpoint at" in summary["error"] and summary["bad_input"]
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    summary = run(make_cfg(f"data.root={tiny_data}", f"trainer.resume={tmp_path}"), tmp_path / "c")
    assert "last.pt is not a checkpoint (torch.save writes a zip archive" in summary["error"] and summary["bad_input"]
    import zipfile

    with zipfile.ZipFile(tmp_path / "last.pt", "w") as z:  # a zip archive, but not one torch.save wrote
        z.writestr("notes.txt", "hello")
    summary = run(make_cfg(f"data.root={tiny_data}", f"trainer.resume={tmp_path}"), tmp_path / "d")
    assert "is a zip archive, but not one torch.save wrote (it has no data.pkl record)" in summary["error"] and summary["bad_input"]


def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = subprocess.run([sys.executable, "-m", "cnnbench", "trainer=smoke", f"hydra.run.dir={blocker}/run"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"hydra.run.dir={blocker}/run cannot be written" in proc.stderr and "Traceback" not in proc.stderr


# Every numeric key and knob, thrown values at and across the edges of its range: each must give
# a config that validates exactly when the value is in range, or an error that names the key.
MODEL_KNOBS = {"model.padding": "lenet", "model.dropout": "lenet", "model.width": "vgg11", "model.compression": "densenet",
               "model.groups": "resnet18", "model.bottleneck_ratio": "resnet50", "model.kernel_1x1": "nin",
               "model.stem_channels": "regnetx32", "model.num_1x1": "nin", "model.depth": "regnet", "model.wm": "regnet",
               "model.wa": "regnet", "model.stem_stride": "regnet"}


def key_range(key: str):
    from cnnbench.config import RANGES
    from cnnbench.models.registry import knob_range

    return RANGES[key] if key in RANGES else knob_range(MODEL_KNOBS[key], key.split(".", 1)[1])


def edge_values(bounds):
    finite = [v for v in (bounds.lo, bounds.hi) if math.isfinite(v)]
    near = [v + d for v in finite for d in (-1, -1e-9, 0, 1e-9, 1)]
    return st.one_of(
        st.sampled_from(near + [v * 2 for v in finite] + [2**70, -(2**70), 0, 1, 0.5]),
        st.sampled_from([math.nan, math.inf, -math.inf]),
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.integers(-(2**66), 2**66),
    )


NUMERIC_KEYS = [*__import__("cnnbench.config", fromlist=["RANGES"]).RANGES, *MODEL_KNOBS]


# The default suite draws 25 (key, value) pairs a run; the slow suite 200 (a compose and a check each).
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_numeric_key_is_checked_against_its_range(make_cfg, data):
    check_a_numeric_key(make_cfg, data)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_every_numeric_key_is_checked_against_its_range_at_length(make_cfg, data):
    check_a_numeric_key(make_cfg, data)


def check_a_numeric_key(make_cfg, data) -> None:
    """One drawn key at one drawn edge value: refused naming the key exactly when outside its range."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    key = data.draw(st.sampled_from(NUMERIC_KEYS), label="key")
    bounds = key_range(key)
    value = data.draw(edge_values(bounds), label="value")
    text = f"[{value!r}]" if key == "bench.batch_sizes" else repr(value)
    model = [f"model={MODEL_KNOBS[key]}"] if key in MODEL_KNOBS else []
    try:
        cfg = make_cfg(*model, f"{key}={text}")
    except (HydraException, OmegaConfBaseException) as err:  # a value of the wrong type for the schema
        assert key.rsplit(".", 1)[-1] in str(err), str(err)
        return
    try:
        validate(cfg)
    except ConfigError as err:
        assert str(err).startswith(f"{key}="), str(err)
        wrong_type = isinstance(value, float) and not float(value).is_integer() and "type" in str(err)
        # a knob in its range can still break the model's structure (a share of channels that leaves a
        # layer with none, an even kernel that cannot keep the map size): refused, naming the key and why
        structural = key in MODEL_KNOBS and any(s in str(err) for s in ("keeps no channel", "inner width at 0", "must be odd",
                                                                       "must be a multiple of it"))
        assert value not in bounds or wrong_type or structural, str(err)
        return
    assert value in bounds, f"{key}={value!r} passed outside {bounds}"


def test_every_whole_number_knob_declares_its_range():
    # An int knob without a declared range may be anything up to 2**31: a block count that size
    # builds modules for hours before any error (model.num_1x1=2147483648 did). Each names its own.
    import typing

    from cnnbench.models import get_spec, list_models
    from cnnbench.models.registry import declared_range

    missing = []
    for name in list_models():
        spec = get_spec(name)
        hints = typing.get_type_hints(spec.builder, include_extras=True)
        for knob, param in spec.knobs.items():
            whole = isinstance(param.default, int) and not isinstance(param.default, bool)
            if whole and declared_range(hints.get(knob)) is None:
                missing.append(f"{spec.builder.__name__}.{knob}")
    assert not missing, sorted(set(missing))


def test_a_huge_block_count_is_refused_at_once(make_cfg):
    cfg = make_cfg("model=nin", "model.num_1x1=2147483648")
    with pytest.raises(ConfigError, match=r"^model.num_1x1=2147483648 is not allowed; it must be in \[0, 16\]"):
        validate(cfg)


def test_every_numeric_schema_key_has_a_range():
    import typing

    from cnnbench.config import (
        RANGES,
        BenchConfig,
        DataConfig,
        SchedulerConfig,
        TrainerConfig,
    )

    keys = {"seed"} | {f"{section}.{k}" for section, cls in (("data", DataConfig), ("scheduler", SchedulerConfig),
                                                               ("trainer", TrainerConfig), ("bench", BenchConfig))
                       for k, t in typing.get_type_hints(cls).items() if any(n in str(t) for n in ("int", "float"))}
    assert len(keys) > 15 and keys - {"data.resize"} == set(RANGES), sorted(keys ^ set(RANGES))


# --- composing -------------------------------------------------------------------------------

COMPOSITIONS = [
    [], ["model=resnet18", "data.resize=40", "trainer.max_epochs=3"], ["experiment=ex_bn_lr", "model.norm=none"],
    ["experiment=d2l_alexnet", "trainer=smoke", "data.root=/tmp/x"], ["model=vgg11", "++model.width=0.5", "seed=3"],
    ["model=nin", "~data.root"], ["bench.batch_sizes=[4,8]", "task=bench", "data.root=null"], ["model.name='a b'"],
    ["optimizer=adamw", "scheduler=onecycle", "optimizer.lr=3e-3"], ["data.resize=[32,48]", "model=googlenet"],
    # errors: the same exception and message either way
    ["model=resnet18", "model.widht=3"], ["trainer.max_epoch=2"], ["trainer.max_epochs=abc"], ["model=nosuch"],
    ["+trainer.extra=1"], ["seed=1,2"], ["nosuchkey=1"], ["hydra.run.dir=/tmp/r", "model=lenet"], ["data.resize="],
    # a group given a dict is a value, applied in its place among the others
    ["data.batch_size=64", "data={batch_size:32}"], ["model=vgg11", "model.width=0.5", "model={width:0.25}"],
]


def composed(*overrides):
    from omegaconf import OmegaConf

    from cnnbench.config import compose

    try:
        cfg = compose(*overrides)
    except Exception as err:
        return type(err), str(err)
    return OmegaConf.to_container(cfg), OmegaConf.is_struct(cfg), OmegaConf.is_struct(cfg.model)


@pytest.mark.parametrize("overrides", COMPOSITIONS, ids=" ".join)
def test_composing_from_the_choices_equals_hydras_full_composition(overrides, monkeypatch):
    from cnnbench import config

    fast = composed(*overrides)
    again = composed(*overrides)  # from the cache, and a copy: what the first caller does to it stays there
    monkeypatch.setattr(config, "_compose_from_choices", lambda overrides: None)
    assert fast == again == composed(*overrides)


def test_a_composed_config_is_the_callers_own(make_cfg):
    first = make_cfg("model=vgg11")
    first.model.width, first.trainer.max_epochs = 0.5, 99
    assert make_cfg("model=vgg11").model.width == 1.0 and make_cfg("model=vgg11").trainer.max_epochs != 99


def test_a_guard_that_breaks_stops_the_command(capsys):
    """Hydra would turn a callback's exception into a warning and run on, unguarded."""
    from omegaconf import OmegaConf

    from cnnbench.callbacks import OutputCheck

    with pytest.raises(SystemExit) as stop:
        OutputCheck().on_run_start(OmegaConf.create({"hydra": {}}))  # no run dir: the guard itself fails
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "cnnbench: OutputCheck.on_run_start failed (a bug in cnnbench" in err


def test_a_stop_signal_says_how_to_abandon_the_step_only_when_a_key_can(caplog):
    """SIGTERM comes from a scheduler or `kill`: "Ctrl-C again" was advice for no one."""
    import logging

    with caplog.at_level(logging.WARNING, logger="cnnbench.engine"):
        engine.StopFlag()._handle(signal.SIGTERM, None)
        engine.StopFlag()._handle(signal.SIGINT, None)
    assert [r.getMessage() for r in caplog.records] == ["SIGTERM received: stopping after this step",
                                                        "SIGINT received: stopping after this step (Ctrl-C again to abandon it)"]


@pytest.mark.parametrize("when", ["torch", "check"])
@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_a_stop_while_the_command_starts_is_one_line(tmp_path, signame, when):
    """The first seconds of every command import torch, then check the command: Ctrl-C there
    printed 30 lines of torch's import machinery, SIGTERM nothing at all. The signal comes as
    torch's import begins, or as the command's check does."""
    code = f"""
import os, signal, sys
sys.argv = ["cnnbench", "trainer=smoke", "hydra.run.dir={tmp_path / 'run'}"]
class StopAtTorch:
    def find_spec(self, name, path, target=None):
        if name == "torch":
            os.kill(os.getpid(), signal.{signame})
        return None
if "{when}" == "torch":
    sys.meta_path.insert(0, StopAtTorch())
else:
    from cnnbench import train
    checked_args = train.checked_args
    def stopping(args):
        os.kill(os.getpid(), signal.{signame})
        return checked_args(args)
    train.checked_args = stopping
from cnnbench.command import main
main()
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    signum = getattr(signal, signame)
    assert proc.returncode == 128 + signum, proc.stderr
    assert proc.stderr == f"cnnbench: stopped by {signame} while starting; nothing was run\n"
    assert not (tmp_path / "run").exists()
