"""Trust: no code runs from a checkpoint, no run overwrites another, caches and data that cannot
lie, and every fault ends with a status and no debris."""
from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import sigterm_after_step, write_idx

from cnnbench import data, engine, metrics
from cnnbench.train import run


def cnnbench(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnnbench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


class Payload:
    """What a crafted checkpoint could hold: unpickling it would create a file (run a command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant_malicious_checkpoint(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"meta": {"model": "bn_lenet"}, "exploit": Payload(marker)}, path)


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(make_cfg, tiny_data, tmp_path):
    marker = tmp_path / "pwned"
    plant_malicious_checkpoint(tmp_path / "evil" / "last.pt", marker)
    summary = run(make_cfg(f"data.root={tiny_data}", f"trainer.resume={tmp_path / 'evil'}"), tmp_path / "run")
    assert summary["status"] == "failed" and summary["bad_input"]
    assert "holds objects other than tensors and plain values, which cnnbench refuses to load" in summary["error"]
    assert not marker.exists()
    with pytest.raises(engine.CheckpointError):
        engine.load_checkpoint(tmp_path / "evil" / "last.pt")
    assert not marker.exists()


def test_a_planted_checkpoint_in_an_interrupted_sweep_job_runs_nothing(tiny_data, tmp_path):
    """Re-running a sweep resumes its interrupted jobs from their last.pt: a planted file there
    must be refused like any other."""
    args = ["-m", "trainer=smoke", "trainer.plot=false", f"data.root={tiny_data}", "seed=0", f"hydra.sweep.dir={tmp_path}"]
    first = cnnbench(*args)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    summary = json.loads((tmp_path / "0" / "summary.json").read_text())
    summary["status"] = "interrupted"  # as if the job had been preempted
    (tmp_path / "0" / "summary.json").write_text(json.dumps(summary))
    marker = tmp_path / "pwned"
    plant_malicious_checkpoint(tmp_path / "0" / "last.pt", marker)
    again = cnnbench(*args)
    assert again.wait(timeout=300) == 1  # the job failed, the sweep says so
    assert not marker.exists()
    assert "refuses to load" in json.loads((tmp_path / "0" / "summary.json").read_text())["error"]


def flip_bytes_in_largest_record(src: Path, dst: Path) -> None:
    """A copy of ``src`` with 64 bytes inverted inside its largest record (a tensor's data): the
    zip's structure intact, as a bad disk or an interrupted copy leaves it."""
    import zipfile

    with zipfile.ZipFile(src) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    raw = bytearray(src.read_bytes())
    name_len, extra_len = (int.from_bytes(raw[record.header_offset + at:record.header_offset + at + 2], "little") for at in (26, 28))
    start = record.header_offset + 30 + name_len + extra_len + record.file_size // 2
    raw[start:start + 64] = bytes(b ^ 0xFF for b in raw[start:start + 64])
    dst.write_bytes(bytes(raw))


def test_a_damaged_or_foreign_checkpoint_is_refused_saying_what_is_wrong(make_cfg, tiny_data, tmp_path, recwarn):
    run(make_cfg(f"data.root={tiny_data}", "trainer=smoke", "trainer.checkpoint=true"), tmp_path / "run")
    good = tmp_path / "run" / "last.pt"
    state = engine.load_checkpoint(good)
    bad = tmp_path / "bad"
    bad.mkdir()
    flip_bytes_in_largest_record(good, bad / "flipped.pt")
    (bad / "truncated.pt").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    torch.save(torch.zeros(3), bad / "tensor.pt")
    torch.save(state["model"], bad / "state_dict.pt")
    torch.save({"meta": {"model": "bn_lenet"}, "model": state["model"]}, bad / "no_knobs.pt")
    expected = {
        "flipped.pt": "is damaged: its record archive/data/",  # a tensor's bytes (torch.save into a file object names it archive/)
        "truncated.pt": "is damaged: it begins as the zip archive torch.save writes but its end is missing",
        "tensor.pt": "is not a checkpoint a cnnbench run wrote: it holds a tensor of shape (3,), where a run's last.pt",
        "state_dict.pt": f"is not a checkpoint a cnnbench run wrote: it holds a dict of {len(state['model'])} tensors (a bare state_dict?)",
        "no_knobs.pt": "is not a checkpoint a cnnbench run wrote: its meta record or state lacks knobs, resolution (a run's "
                       "last.pt and best.pt name the model, knobs, resolution and hold the model's weights)",
        "no_checksums.pt": None,  # torch's CRC-32s turned off: nothing to verify against, read as it is
    }
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(state, bad / "no_checksums.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    for name, message in expected.items():
        if message is None:
            assert engine.load_checkpoint(bad / name)["epoch"] == state["epoch"]
            continue
        with pytest.raises(engine.CheckpointError) as err:
            engine.load_checkpoint(bad / name)
        assert message in str(err.value), (name, str(err.value))
    # the whole command: refused as bad input before anything is evaluated or trained, with the damage named
    evaluated = run(make_cfg("task=evaluate", f"trainer.resume={bad / 'flipped.pt'}", f"data.root={tiny_data}"), tmp_path / "eval")
    assert evaluated["status"] == "failed" and evaluated["bad_input"] and "does not match the checksum written with it" in evaluated["error"]
    assert "eval_test_acc" not in evaluated
    resumed = run(make_cfg(f"data.root={tiny_data}", "trainer=smoke", f"trainer.resume={bad / 'tensor.pt'}"), tmp_path / "resume")
    assert resumed["status"] == "failed" and "it holds a tensor of shape (3,)" in resumed["error"]
    torch.save({"meta": state["meta"], "model": state["model"]}, bad / "best.pt")  # the weights alone, as best.pt holds them
    resumed = run(make_cfg(f"data.root={tiny_data}", "trainer=smoke", f"trainer.resume={bad / 'best.pt'}"), tmp_path / "resume2")
    assert resumed["status"] == "failed" and resumed["bad_input"] and "a resume needs the last.pt a run writes" in resumed["error"]
    assert not [w for w in recwarn if "cnnbench" in w.filename]  # no warning from indexing what is not a checkpoint


def test_checkpoints_load_weights_only(make_cfg, tiny_data, tmp_path, monkeypatch):
    calls = []
    load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("weights_only")) or load(*a, **k))
    run(make_cfg(f"data.root={tiny_data}", "trainer=smoke", "trainer.checkpoint=true", "scheduler=onecycle",
                 "optimizer=adamw"), tmp_path)
    assert engine.load_checkpoint(tmp_path / "last.pt")["epoch"] == 2 and calls == [True]


def test_a_model_name_cannot_move_the_run_dir_out_of_outputs(tmp_path):
    from cnnbench.config import compose

    name = "x/../../../../../tmp/elsewhere"
    for overrides in ([f"model.name={name}"], ["task=evaluate", f"trainer.resume={name}/.."]):
        run_dir = Path(compose(*overrides, hydra=True).hydra.run.dir)
        assert run_dir.parts[:2] == ("outputs", "runs") and len(run_dir.parts) == 4 and ".." not in run_dir.parts
    proc = cnnbench("trainer=smoke", f"model.name={name}", cwd=tmp_path)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "is not a registered model" in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # refused before Hydra made any dir
    proc = cnnbench("trainer=smoke", "data.resize=-3", cwd=tmp_path)  # a bad value: no failed run left behind either
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "data.resize=-3 is not allowed" in err
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_second_run_into_a_busy_dir_is_refused_and_the_first_keeps_its_files(real_data, tmp_path):
    run_dir = tmp_path / "run"
    first = cnnbench("model=lenet", "data.subset=2048", "data.test_subset=500", "trainer.max_epochs=2", "trainer.plot=false",
                     "trainer.checkpoint=true", f"hydra.run.dir={run_dir}")
    deadline = time.time() + 120
    while not (run_dir / ".cnnbench.lock").exists():
        assert first.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGSTOP)  # still writing when the second looks, however slow the second's start
    try:
        second = subprocess.run([sys.executable, "-m", "cnnbench", "trainer=smoke", f"hydra.run.dir={run_dir}"],
                                capture_output=True, text=True, timeout=120)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert second.returncode == 2
    assert f"is being written by another cnnbench process (PID {first.pid})" in second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert pd.read_csv(run_dir / "metrics.csv")["epoch"].tolist() == [1, 2]
    assert json.loads((run_dir / "summary.json").read_text())["overrides"][0] == "model=lenet"
    # a completed run is not overwritten by a new one; only an explicit resume continues it
    third = subprocess.run([sys.executable, "-m", "cnnbench", "trainer=smoke", f"hydra.run.dir={run_dir}"],
                           capture_output=True, text=True, timeout=120)
    assert third.returncode == 2 and "holds a completed run" in third.stderr
    # ... and the refusal spells out how to continue it, in the settings it was started with
    assert ("cnnbench model=lenet data.subset=2048 data.test_subset=500 trainer.plot=false trainer.checkpoint=true "
            f"hydra.run.dir={run_dir} trainer.resume={run_dir} trainer.max_epochs=N") in " ".join(third.stderr.split())
    assert pd.read_csv(run_dir / "metrics.csv")["epoch"].tolist() == [1, 2]
    # a resume refused for its settings: Hydra's record of the run (.hydra/) is put back as it was, with the rest
    record = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}
    files = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix != ".log" and p.name != ".cnnbench.lock"}
    fourth = subprocess.run([sys.executable, "-m", "cnnbench", "model=lenet", "data.subset=2048", "data.test_subset=500",
                             "trainer.max_epochs=3", "data.batch_size=64", f"hydra.run.dir={run_dir}", f"trainer.resume={run_dir}"],
                            capture_output=True, text=True, timeout=120)
    assert fourth.returncode == 2 and "the checkpoint is of batch_size=128" in fourth.stderr, fourth.stderr
    assert fourth.stderr.splitlines()[-1].endswith("is as it was (its cnnbench.log notes the refusal)")
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == record
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix != ".log" and p.name != ".cnnbench.lock"} == files


def plant_default_dirs(root: Path, kind: str, name: str = "") -> set[Path]:
    """Taken default dirs (``outputs/runs/DATE/TIME_lenet``) for every second of the next two
    minutes, as if another command had started in each of them."""
    from datetime import datetime, timedelta

    start = datetime.now()
    planted = set()
    for second in range(-2, 120):
        moment = start + timedelta(seconds=second)
        folder = root / "outputs" / kind / f"{moment:%Y-%m-%d}" / f"{moment:%H-%M-%S}{name}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "summary.json").write_text('{"status": "completed"}')
        planted.add(folder)
    return planted


@pytest.mark.parametrize("sweep", [False, True], ids=["run", "sweep"])
def test_a_default_dir_taken_in_the_same_second_gets_a_suffix(tiny_data, tmp_path, sweep):
    """The default dirs are named by the second a command starts in: a second command started
    in that second (``cnnbench seed=1 & cnnbench seed=2``) must neither be refused nor mix with
    the first, but take the dir beside it."""
    planted = plant_default_dirs(tmp_path, "sweeps" if sweep else "runs", "" if sweep else "_lenet")
    proc = subprocess.run([sys.executable, "-m", "cnnbench", *(["-m"] if sweep else []), "model=lenet", "trainer=smoke",
                           "trainer.plot=false", f"data.root={tiny_data}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    written = [p.parent for p in (tmp_path / "outputs").rglob("metrics.csv")]
    assert len(written) == 1
    run_dir = written[0].parent if sweep else written[0]
    assert run_dir.name.endswith("_2") and run_dir.with_name(run_dir.name[:-2]) in planted
    for folder in planted:  # the earlier commands' dirs are as they were
        assert sorted(p.name for p in folder.iterdir()) in (["summary.json"], [".cnnbench.lock", "summary.json"])
    if sweep:  # each job of the sweep went there too, and its results and report
        assert (run_dir / "results.csv").is_file() and (run_dir / "multirun.yaml").is_file()
        assert written[0] == run_dir / "0"
    assert str(run_dir.relative_to(tmp_path)) in proc.stderr  # the last lines say where


def test_a_killed_run_leaves_no_stale_lock(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    proc = cnnbench("model=lenet", f"data.root={tiny_data}", "trainer.max_epochs=1000", f"hydra.run.dir={run_dir}")
    deadline = time.time() + 120
    while not (run_dir / "metrics.csv").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=60)
    again = subprocess.run([sys.executable, "-m", "cnnbench", "trainer=smoke", "trainer.plot=false", f"data.root={tiny_data}",
                            f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr


def test_two_sweeps_into_one_sweep_dir_are_refused(tiny_data, tmp_path):
    from cnnbench import rundir

    rundir.hold(tmp_path)  # this process stands for a sweep under way
    try:
        proc = subprocess.run([sys.executable, "-m", "cnnbench", "-m", "trainer=smoke", f"data.root={tiny_data}",
                               f"hydra.sweep.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    finally:
        rundir.release(tmp_path)
    assert proc.returncode == 2 and f"(PID {os.getpid()})" in proc.stderr
    assert not (tmp_path / "0").exists()


# --- caches and data ----------------------------------------------------------------------


def test_the_cache_is_keyed_on_content_not_modification_time(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_CACHE", str(tmp_path / "cache"))
    good = write_idx(tmp_path / "good", gz=True)
    src = tmp_path / "src"
    shutil.copytree(good, src)
    name = "train-labels-idx1-ubyte.gz"
    (src / name).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x60" + bytes(10)))  # truncated labels
    stamp = os.stat(good / name).st_mtime
    os.utime(src / name, (stamp, stamp))
    with pytest.raises(data.DataError, match="truncated or corrupt"):
        data.load(str(src), download=False)
    shutil.copy2(good / name, src / name)  # the good copy, with its old modification time (cp -p)
    os.utime(src / name, (stamp, stamp))
    train, _ = data.load(str(src), download=False)
    assert len(train) == 96
    # a cache file damaged on disk fails its check and is rebuilt
    cached = next((tmp_path / "cache").rglob("train-images-idx3-ubyte"))
    blob = bytearray(cached.read_bytes())
    blob[-1] ^= 0xFF
    cached.write_bytes(bytes(blob))
    data._read.cache_clear()
    assert torch.equal(data.load(str(src), download=False)[0].images, train.images)


def test_a_full_disk_while_caching_names_the_cache_and_the_way_out(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_CACHE", str(tmp_path / "cache"))
    src = write_idx(tmp_path / "src", gz=True)
    real = metrics.atomic_write

    def full_disk(path, write, binary=False):
        def write_some(f):
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, write_some, binary)

    monkeypatch.setattr(data, "atomic_write", full_disk)
    with pytest.raises(data.DataError, match=r"no space left on the device to write the dataset cache .*CNNBENCH_CACHE"):
        data.load(str(src), download=False)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # no debris


@pytest.mark.parametrize("damage, message", [
    ("labels", r"holds 1 labels outside 0..9 \(the first, at index 3, is 12\)"),
    ("size", r"holds 20x20 images; Fashion-MNIST's are 28x28"),
    ("directory", r"is a directory where the data file train-images-idx3-ubyte should be"),
    ("dangling", r"is a broken symbolic link"),
])
def test_damaged_data_is_a_clear_error_and_leaves_nothing_behind(make_cfg, tmp_path, monkeypatch, damage, message):
    import struct

    monkeypatch.setenv("CNNBENCH_CACHE", str(tmp_path / "cache"))
    root = write_idx(tmp_path / "d")
    if damage == "labels":
        path = root / "train-labels-idx1-ubyte"
        blob = bytearray(path.read_bytes())
        blob[8 + 3] = 12
        path.write_bytes(bytes(blob))
    elif damage == "size":
        (root / "t10k-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, 32, 20, 20) + bytes(32 * 400))
    elif damage == "directory":
        (root / "train-images-idx3-ubyte").unlink()
        (root / "train-images-idx3-ubyte").mkdir()
    else:
        (root / "train-images-idx3-ubyte").unlink()
        (root / "train-images-idx3-ubyte").symlink_to(tmp_path / "gone")
    before = sorted(p.name for p in root.iterdir())
    summary = run(make_cfg(f"data.root={root}", "trainer=smoke"), tmp_path / "run")
    assert summary["status"] == "failed" and summary["bad_input"]
    assert __import__("re").search(message, summary["error"]), summary["error"]
    assert sorted(p.name for p in root.iterdir()) == before  # no download attempt, no empty folder


# --- every fault ends with a status and no debris ------------------------------------------


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_leaves_no_debris(make_cfg, tiny_data, tmp_path, monkeypatch):
    args = [f"data.root={tiny_data}", "data.batch_size=16", "trainer.checkpoint=true"]
    assert run(make_cfg(*args, "trainer.max_epochs=1"), tmp_path)["status"] == "completed"
    before = (tmp_path / "last.pt").read_bytes()

    def disk_full(obj, f, *a, **k):
        f.write(b"\x80\x02 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine.torch, "save", disk_full)
    summary = run(make_cfg(*args, "trainer.max_epochs=2", f"trainer.resume={tmp_path}"), tmp_path)
    assert summary["status"] == "failed"
    assert summary["error"] == f"[Errno 28] no space left on the device to write {tmp_path / 'last.pt'} (its previous version is intact)"
    assert (tmp_path / "last.pt").read_bytes() == before
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name]
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_a_full_disk_while_writing_metrics_keeps_whole_rows(make_cfg, tiny_data, tmp_path, monkeypatch):
    append, rows = metrics.MetricsWriter._append, []

    def full_on_the_second_row(self, line):
        rows.append(line)
        if len(rows) == 2:  # half the row reaches the disk, then it is full
            append(self, line[: len(line) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, line)

    monkeypatch.setattr(metrics.MetricsWriter, "_append", full_on_the_second_row)
    summary = run(make_cfg(f"data.root={tiny_data}", "data.batch_size=16", "trainer.max_epochs=3", "trainer.plot=false"), tmp_path)
    monkeypatch.undo()
    assert summary["status"] == "failed" and "no space left on the device to write" in summary["error"]
    assert pd.read_csv(tmp_path / "metrics.csv")["epoch"].tolist() == [1]


@pytest.mark.parametrize("task", ["train", "after_training", "summary", "bench", "min_size"])
def test_a_stop_signal_before_training_or_in_any_task_is_recorded(make_cfg, tiny_data, tmp_path, monkeypatch, task):
    from cnnbench import config, confusion, tasks

    target = {"train": (data, "load"), "after_training": (confusion, "after_training"), "summary": (tasks, "layer_table"),
              "bench": (tasks, "_bench_one"), "min_size": (tasks, "min_size_report")}[task]
    monkeypatch.setattr(*target, lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(5))
    monkeypatch.setattr(config, "accepts_input", lambda *a, **k: True)
    with pytest.raises(KeyboardInterrupt) as stopped:
        run(make_cfg(f"task={task if task != 'after_training' else 'train'}", f"data.root={tiny_data}", "trainer=smoke"), tmp_path)
    assert stopped.value.signum == signal.SIGTERM  # main() exits 128 + 15 = 143
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    if task == "after_training":  # the epochs are done and recorded: the message says so, not "nothing was trained"
        assert summary["error"] == ("stopped by SIGTERM after training, while writing its results; training had ended "
                                    "(2 epochs, in metrics.csv), but what is written after it (per-class files, plots) "
                                    "may be missing: run the same command again to start over")
        return
    where = "before training" if task == "train" else f"during task={task}"
    what = "nothing was measured yet" if task == "bench" else "nothing was trained yet"
    assert summary["error"] == f"stopped by SIGTERM {where}; {what}: run the same command again to start over"


def test_a_bench_stopped_after_its_first_batch_size_says_bench_csv_holds_it(make_cfg, tiny_data, tmp_path, monkeypatch):
    from cnnbench import tasks

    bench_one, calls = tasks._bench_one, []

    def stop_in_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        return bench_one(*args, **kwargs)

    monkeypatch.setattr(tasks, "_bench_one", stop_in_the_second)
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg("task=bench", f"data.root={tiny_data}", "trainer=smoke"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["error"] == ("stopped by SIGTERM during task=bench; the batch sizes measured before the stop are in "
                                "bench.csv: run the same command again to start over")
    assert pd.read_csv(tmp_path / "bench.csv")["batch_size"].tolist() == [2, 2]  # train and infer at the first size


def test_a_refused_resume_leaves_a_completed_run_as_it_was(make_cfg, tiny_data, tmp_path):
    """Continuing a run in its own dir with settings its checkpoint does not fit is refused; the
    completed run keeps its summary (still 'completed', so no new run may overwrite it) and files."""
    start = [f"data.root={tiny_data}", "trainer=smoke", "trainer.checkpoint=true", "trainer.plot=false"]
    assert run(make_cfg(*start), tmp_path, overrides=start)["status"] == "completed"
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".log"}
    summary = run(make_cfg(f"data.root={tiny_data}", "trainer=smoke", "model=lenet", "trainer.max_epochs=4",
                           f"trainer.resume={tmp_path}"), tmp_path)
    assert summary["status"] == "failed" and summary["bad_input"] and "model='lenet'" in summary["error"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".log"} == before
    # an interrupted run's record too: its status and the command that resumes it (it became "failed")
    interrupted = json.loads((tmp_path / "summary.json").read_text()) | {"status": "interrupted", "error": "stopped by SIGTERM"}
    (tmp_path / "summary.json").write_text(json.dumps(interrupted))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".log"}
    summary = run(make_cfg(f"data.root={tiny_data}", "trainer=smoke", "data.batch_size=4", f"trainer.resume={tmp_path}"), tmp_path)
    assert summary["refused"] and "the checkpoint is of batch_size=" in summary["error"]
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".log"} == before


def test_a_resume_refused_into_a_new_dir_leaves_no_dir(make_cfg, tiny_data, tmp_path):
    """A resume refused before training (a completed run: nothing left to train; another model)
    exits 2 and leaves no failed run behind in the dir made for it."""
    base = ["trainer=smoke", "trainer.plot=false", f"data.root={tiny_data}"]
    assert run(make_cfg(*base, "model=lenet", "trainer.checkpoint=true"), tmp_path / "done")["status"] == "completed"
    for extra, message in ((["model=lenet", "trainer.resume=done"], "that run completed its 2 epochs, and this run has trainer.max_epochs=2: "
                                                                    "nothing is left to train"),
                           (["trainer.resume=done", "model=alexnet28"], "the checkpoint is of model='lenet'")):
        proc = subprocess.run([sys.executable, "-m", "cnnbench", *base, *extra], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "refused; nothing was run or kept" in proc.stderr.splitlines()[-1]
        assert not list((tmp_path / "outputs" / "runs").glob("*/*"))  # the dir made for it is gone
    # one more epoch is something to train: the run goes on from the checkpoint, in a dir of its own
    more = run(make_cfg(*base, "model=lenet", f"trainer.resume={tmp_path / 'done'}", "trainer.max_epochs=3"), tmp_path / "more")
    assert more["status"] == "completed" and pd.read_csv(tmp_path / "more" / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def hydra_dirs(run_dir: Path | None = None, sweep_dir: Path | None = None, resume: str | None = None):
    from omegaconf import OmegaConf

    chosen = [f"hydra.run.dir={run_dir}"] * bool(run_dir) + [f"hydra.sweep.dir={sweep_dir}"] * bool(sweep_dir)
    return OmegaConf.create({  # the dirs as given on the command line, as in the tests' commands
        "hydra": {"run": {"dir": str(run_dir)}, "sweep": {"dir": str(sweep_dir)}, "overrides": {"task": [], "hydra": chosen},
                  "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": None}},
        "trainer": {"resume": resume}})


def test_a_run_and_a_sweep_never_share_a_dir(tmp_path, capsys):
    from cnnbench.callbacks import OutputCheck

    sweep, single = tmp_path / "sweep", tmp_path / "run"
    (sweep / "0").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("{}")
    single.mkdir()
    (single / "summary.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(SystemExit) as stop:
        OutputCheck().on_run_start(hydra_dirs(run_dir=sweep))
    assert stop.value.code == 2 and f"hydra.run.dir={sweep} holds a sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        OutputCheck().on_multirun_start(hydra_dirs(sweep_dir=single))
    assert stop.value.code == 2 and f"hydra.sweep.dir={single} holds a single run" in capsys.readouterr().err


def test_a_new_run_never_adopts_an_earlier_runs_checkpoints(tmp_path, capsys):
    """An interrupted or failed run's last.pt and best.pt would be listed, and evaluated, as the new
    run's: the new run is refused unless it resumes them."""
    from cnnbench.callbacks import OutputCheck

    (tmp_path / "summary.json").write_text(json.dumps({"status": "interrupted", "overrides": ["model=lenet"]}))
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as stop:
        OutputCheck().on_run_start(hydra_dirs(run_dir=tmp_path))
    err = " ".join(capsys.readouterr().err.split())
    assert stop.value.code == 2 and "holds last.pt of an earlier run that did not complete" in err
    assert f"resume that run with: cnnbench model=lenet hydra.run.dir={tmp_path} trainer.resume={tmp_path}" in err
    OutputCheck().on_run_start(hydra_dirs(run_dir=tmp_path, resume=str(tmp_path)))  # resuming it is what it is for
    (tmp_path / "last.pt").unlink()
    OutputCheck().on_run_start(hydra_dirs(run_dir=tmp_path))  # nothing kept: starting over is fine


@pytest.mark.parametrize("status, kept", [("completed", "summary.json"), ("interrupted", "last.pt")])
def test_only_a_resume_of_the_dirs_own_run_may_write_into_it(tmp_path, capsys, status, kept):
    """trainer.resume let any command into a dir: a resume from another run's checkpoint replaced a
    completed run's results (or an interrupted run's last.pt, its one way back), and task=evaluate
    with the run's own checkpoint replaced its summary.json. Only task=train resuming this dir's
    checkpoint (the dir, or a file in it) goes on there."""
    from cnnbench.callbacks import OutputCheck

    here, other = tmp_path / "here", tmp_path / "other"
    here.mkdir(), other.mkdir()
    (here / "summary.json").write_text(json.dumps({"status": status, "task": "train", "overrides": []}))
    (here / "last.pt").write_bytes(b"")
    for resume, task, why in ((str(other), "train", f"trainer.resume={other} is not this dir's: a resume goes on in the dir of "
                                                     "the run it continues, or in a new one"),
                              (str(here), "evaluate", "task=evaluate writes results of its own")):
        config = hydra_dirs(run_dir=here, resume=resume)
        config.task = task
        with pytest.raises(SystemExit) as stop:
            OutputCheck().on_run_start(config)
        assert stop.value.code == 2 and why in " ".join(capsys.readouterr().err.split())
    for resume in (here, here / "last.pt", Path(os.path.relpath(here))):  # its own checkpoint, however it is named
        OutputCheck().on_run_start(hydra_dirs(run_dir=here, resume=str(resume)))
    (here / "other.pt").write_bytes(b"")  # another run's checkpoint copied in is not this dir's run
    with pytest.raises(SystemExit):
        OutputCheck().on_run_start(hydra_dirs(run_dir=here, resume=str(here / "other.pt")))


def test_the_cpu_running_out_of_memory_is_oom(make_cfg, tiny_data, tmp_path, monkeypatch):
    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 160000000000 bytes.")

    monkeypatch.setattr(engine.Trainer, "step", no_memory)
    summary = run(make_cfg(f"data.root={tiny_data}", "trainer=smoke"), tmp_path)
    assert summary["status"] == "oom" and "can't allocate memory" in summary["error"]


@pytest.mark.parametrize("override, message", [
    ("data.resize=2048", r"data.resize=2048 \(2048x2048\) with data.test_batch_size=1000 needs 15.6 GiB for one fp32 input batch"),
    ("data.crop_padding=100000", r"data.crop_padding=100000 is not allowed; it must be in \[0, 28\]"),
])
def test_absurd_sizes_are_refused_before_allocating(make_cfg, tmp_path, monkeypatch, override, message):
    from cnnbench import config

    monkeypatch.setattr(config, "total_memory", lambda device: 8 * 2**30)
    summary = run(make_cfg(override, "data.root=/nonexistent"), tmp_path)
    assert summary["status"] == "failed" and summary["bad_input"]
    assert __import__("re").search(message, summary["error"]), summary["error"]


def test_a_completed_run_is_offered_for_continuing_only_where_it_can_go_on(tmp_path):
    from cnnbench.callbacks import continuation

    def completed(**config):
        (tmp_path / "summary.json").write_text(json.dumps({"task": "train", "status": "completed", "config": config,
                                                           "overrides": ["experiment=quickstart"]}))

    completed(scheduler={"name": "cosine"}, trainer={"checkpoint": False})
    assert "kept no checkpoint of its end to continue from: trainer.checkpoint=true keeps one" in continuation(tmp_path)
    (tmp_path / "last.pt").write_bytes(b"")  # a signal's, mid-run: not the end
    assert "kept no checkpoint of its end" in continuation(tmp_path)
    completed(scheduler={"name": "cosine"}, trainer={"checkpoint": True})
    assert "schedule spanned it and has ended" in continuation(tmp_path)
    completed(scheduler={"name": "none"}, trainer={"checkpoint": True})
    assert continuation(tmp_path).startswith(", or continue that run, in its own settings, for more epochs: cnnbench experiment=quickstart")


def test_a_second_signal_while_a_stop_is_recorded_does_not_cut_it_short():
    """torchrun signals every rank once one has stopped: rank 0, still writing the files of the
    first stop, must finish them and report that stop, not a new one 'after training'."""
    with pytest.raises(engine.Interrupted, match="stopped by SIGTERM in epoch 2 after step 4"):
        with engine.stop_at_once(lambda: "after training"):
            try:
                raise engine.Interrupted(signal.SIGTERM, "in epoch 2 after step 4")
            finally:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while the first stop is being recorded
                time.sleep(0.2)
    with pytest.raises(engine.Interrupted, match="stopped by SIGTERM after training"):  # alone, it stops at once
        with engine.stop_at_once(lambda: "after training"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)


def test_a_resumed_run_leaves_no_stale_checkpoint_and_a_stale_one_cannot_overwrite_it(make_cfg, tiny_data, tmp_path, monkeypatch):
    """Stopped, then resumed with trainer.checkpoint=false (as the stop's advice says) to the end:
    the stop's last.pt, from mid-training, went on lying in the completed run. Evaluating it gave
    the unfinished model; resuming from it again trained over the completed run's epochs. Now
    the completed run removes it, and a stale checkpoint (kept from before) is refused there."""
    base = [f"data.root={tiny_data}", "trainer=smoke", "trainer.max_epochs=3", "trainer.plot=false", "trainer.progress=false"]
    sigterm_after_step(monkeypatch, 4)  # in epoch 2's first step
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*base), tmp_path)
    monkeypatch.undo()
    stale = (tmp_path / "last.pt").read_bytes()
    resumed = run(make_cfg(*base, f"trainer.resume={tmp_path}"), tmp_path)
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 3
    assert not (tmp_path / "last.pt").exists()  # the stop's checkpoint went with the run's completion
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix != ".log"}
    (tmp_path / "last.pt").write_bytes(stale)  # as a run completed before this fix left it
    again = run(make_cfg(*base, f"trainer.resume={tmp_path}"), tmp_path)
    assert again["bad_input"] and ("last.pt is from epoch 1, but the run in " in again["error"]
                                   and "completed 3 epochs: resuming there would train epochs 2-3 again" in again["error"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file() and p.suffix not in (".log", ".pt")} == before
    # into another dir, branching from epoch 1 is allowed
    assert run(make_cfg(*base, f"trainer.resume={tmp_path}"), tmp_path / "branch")["status"] == "completed"
    # with trainer.checkpoint=true the last epoch's checkpoint is kept
    kept = run(make_cfg(*base, "trainer.checkpoint=true"), tmp_path / "kept")
    assert kept["status"] == "completed" and (tmp_path / "kept" / "last.pt").is_file()


def test_a_resume_with_another_thread_count_says_it_is_not_exact(make_cfg, tiny_data, tmp_path, caplog):
    """The CPU's thread count changes the order of its sums, so the last digits of a resumed run."""
    base = [f"data.root={tiny_data}", "trainer=smoke", "trainer.plot=false", "trainer.checkpoint=true"]
    run(make_cfg(*base, "trainer.threads=2"), tmp_path / "two")
    resumed = run(make_cfg(*base, "trainer.threads=1", "trainer.max_epochs=3", f"trainer.resume={tmp_path / 'two'}"), tmp_path / "one")
    assert resumed["status"] == "completed" and resumed["resumed_from"]["threads"] == 2 and resumed["cpu_threads"] == 1
    assert "the checkpoint's run used 2 CPU threads, this one 1" in caplog.text
    same = run(make_cfg(*base, "trainer.threads=1", "trainer.max_epochs=4", f"trainer.resume={tmp_path / 'one'}"), tmp_path / "again")
    assert "threads" not in same["resumed_from"]


def test_a_run_stopped_while_writing_its_results_resumes_to_write_them_and_keeps_its_checkpoint(make_cfg, tiny_data, tmp_path,
                                                                                                monkeypatch):
    from cnnbench import confusion

    base = [f"data.root={tiny_data}", "trainer=smoke", "trainer.plot=false", "trainer.checkpoint=true"]
    monkeypatch.setattr(confusion, "after_training", lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(5))
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*base), tmp_path)
    monkeypatch.undo()
    summary = run(make_cfg(*base, f"trainer.resume={tmp_path}"), tmp_path)  # trains nothing: writes the results
    assert summary["status"] == "completed" and (tmp_path / "per_class.csv").is_file()
    assert engine.load_checkpoint(tmp_path / "last.pt")["epoch"] == 2  # the last epoch's, kept (it can be lengthened)


def test_weights_that_do_not_fit_their_own_record_are_refused_saying_so(make_cfg, tiny_data, tmp_path):
    """A file with bn_lenet's record and lenet's weights: refused for what it is, not blamed on a
    data.resize nobody gave."""
    from cnnbench.models import create_model

    start = [f"data.root={tiny_data}", "trainer=smoke", "trainer.checkpoint=true", "trainer.plot=false"]
    assert run(make_cfg(*start), tmp_path / "run")["status"] == "completed"
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    state["model"] = create_model("lenet").state_dict()
    torch.save(state, tmp_path / "mixed.pt")
    expected = (f"trainer.resume='{tmp_path / 'mixed.pt'}': its weights do not fit the model its record names (bn_lenet at 28x28, "
                "with its recorded knobs): 24 missing (features.1.weight, features.1.bias, features.1.running_mean, ...); 4 unexpected")
    evaluated = run(make_cfg("task=evaluate", f"trainer.resume={tmp_path / 'mixed.pt'}", f"data.root={tiny_data}"), tmp_path / "e")
    resumed = run(make_cfg(*start, "trainer.max_epochs=3", f"trainer.resume={tmp_path / 'mixed.pt'}"), tmp_path / "r")
    for summary in (evaluated, resumed):
        assert summary["bad_input"] and summary["error"].startswith(expected), summary["error"]
    # the run's own last.pt so damaged: continuing it in its dir is refused, and the completed run stays as it was
    shutil.copy(tmp_path / "mixed.pt", tmp_path / "run" / "last.pt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file() and p.suffix != ".log"}
    again = run(make_cfg(*start, "trainer.max_epochs=3", f"trainer.resume={tmp_path / 'run'}"), tmp_path / "run")
    assert again["refused"] and "its weights do not fit the model its record names" in again["error"]
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file() and p.suffix != ".log"} == before
