"""Sweeps: results.csv, re-runs that skip finished jobs, reports, and the shipped recipes."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from variants import smoke_side

from cnnbench import report
from cnnbench.config import validate
from cnnbench.train import run

EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml"))


def cnnbench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnbench", *args], capture_output=True, text=True, timeout=600)


def test_the_books_nine_runs_are_shipped():
    assert {e for e in EXPERIMENTS if e.startswith("d2l_")} == {
        "d2l_alexnet", "d2l_vgg11", "d2l_nin", "d2l_googlenet", "d2l_bn_lenet", "d2l_bn_lenet_scratch",
        "d2l_resnet18", "d2l_densenet", "d2l_regnetx32"}


EXERCISES = [e for e in EXPERIMENTS if e.startswith("ex_")]


def sweep_jobs(name: str) -> list[list[str]]:
    """The jobs (override lists) of a recipe's own sweep, as Hydra's basic sweeper expands them."""
    from cnnbench import config

    return config.sweep_jobs([], config.compose(f"experiment={name}", hydra=True).hydra.sweeper.params)


# Every job of every exercise recipe composes and passes the checks made before training (shapes
# at its own resolution included); the first job then trains for a step on the tiny data set, at a
# small input unless the recipe sweeps the resolution. The slow variant runs it at its own size.
@pytest.mark.parametrize("name, own_size", [*((e, False) for e in EXERCISES),
                                            *(pytest.param(e, True, marks=pytest.mark.slow) for e in EXERCISES)])
def test_every_exercise_recipe_is_a_valid_sweep_and_its_first_job_runs(make_cfg, tiny_data, tmp_path, name, own_size):
    jobs = sweep_jobs(name)
    smoke = ["trainer=smoke", "trainer.max_epochs=1", "trainer.limit_train_batches=1", "trainer.limit_test_batches=1",
             "trainer.plot=false", f"data.root={tiny_data}", "bench.batch_sizes=[2]", "bench.steps=1", "bench.warmup_steps=0"]
    if name != "ex_alexnet_bench":  # a single task=bench run; every other exercise is a sweep
        assert len(jobs) >= 2
    for job in jobs:
        validate(make_cfg(f"experiment={name}", *job, *smoke))
    first = [f"experiment={name}", *jobs[0], *smoke]
    if not own_size and not any(o.startswith("data.resize=") for o in jobs[0]):
        first.append(f"data.resize={smoke_side(make_cfg(*first))}")
    summary = run(make_cfg(*first), tmp_path)
    assert summary["status"] == "completed", summary.get("error")


def test_an_exercise_recipe_runs_as_a_sweep_by_itself(tiny_data, tmp_path):
    # no -m: the recipe sets hydra.mode=MULTIRUN; trainer=smoke beats the recipe's 10 epochs
    proc = cnnbench("experiment=ex_bn_placement", "trainer=smoke", f"data.root={tiny_data}", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    results = pd.read_csv(tmp_path / "results.csv")
    assert results["model.norm_at"].tolist() == ["none", "conv", "dense", "all"]
    assert (results["status"] == "completed").all() and (results["epochs_completed"] == 2).all()
    assert results["params"].is_monotonic_increasing  # each placement adds norm parameters
    assert (tmp_path / "report_vs_model.norm_at.png").stat().st_size > 10_000


# What the exercise page says these recipes build (a recipe-wide knob reaches every job's model).
DOCUMENTED_PARAMS = {
    "ex_vgg_resolution": {("model=vgg11_quarter", "data.resize=56"): "17.9M", ("model=vgg11_quarter", "data.resize=84"): "19.5M",
                          ("model=vgg11_quarter", "data.resize=224"): "43.1M", ("model=vgg_lowres", "data.resize=56"): "22.0M",
                          ("model=vgg_lowres", "data.resize=84"): "30.4M", ("model=vgg_lowres", "data.resize=224"): "120.1M"},
    "ex_vgg_family": {("model=vgg11",): "43.1M", ("model=vgg19",): "43.8M"},
}


@pytest.mark.parametrize("name", DOCUMENTED_PARAMS)
def test_recipes_build_the_models_the_exercise_page_says(make_cfg, name):
    from cnnbench.analysis import count_params, meta_model
    from cnnbench.config import model_knobs, resolution

    page = (Path(__file__).parents[1] / "docs" / "exercises.md").read_text()
    row = next(line for line in page.splitlines() if f"experiment={name}`" in line)
    jobs = {tuple(job) for job in sweep_jobs(name)}
    for job, documented in DOCUMENTED_PARAMS[name].items():
        assert job in jobs and documented in row, (job, documented)
        cfg = make_cfg(f"experiment={name}", *job)
        params = count_params(meta_model(cfg.model.name, resolution(cfg), **model_knobs(cfg)))
        assert f"{params / 1e6:.1f}M" == documented, (job, params)


def test_the_exercise_page_answers_every_exercise_recipe():
    page = (Path(__file__).parents[1] / "docs" / "exercises.md").read_text()
    for name in EXERCISES:
        assert f"experiment={name}`" in page, f"docs/exercises.md's table lacks {name}"


@pytest.mark.parametrize("name", [e for e in EXPERIMENTS if not e.startswith("ex_")])
def test_every_recipe_composes_and_runs_smoke(make_cfg, tiny_data, tmp_path, name):
    cfg = make_cfg(f"experiment={name}", "trainer=smoke", "trainer.max_epochs=1", "trainer.limit_test_batches=1",
                   "trainer.plot=false", f"data.root={tiny_data}", "trainer.compile=false")  # compiling takes a minute on a CPU: tests/test_train.py covers it
    if name.startswith("d2l_"):  # the book's settings
        assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.momentum == 0
        assert cfg.scheduler.name == "none" and not cfg.data.normalize
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed", summary.get("error")


def test_rerunning_a_sweep_skips_completed_jobs(tiny_data, tmp_path):
    (tmp_path / "empty").mkdir()
    args = ["-m", "trainer=smoke", "trainer.plot=false", f"data.root={tiny_data},{tmp_path / 'empty'}", "data.download=false",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    first = cnnbench(*args)
    tmp_path = tmp_path / "sweep"
    assert first.returncode == 1
    done = (tmp_path / "0" / "metrics.csv").stat().st_mtime_ns
    second = cnnbench(*args)
    assert second.returncode == 1  # job 1 ran again and failed again
    assert "job 0 already completed" in second.stderr and "job 1 already" not in second.stderr
    assert (tmp_path / "0" / "metrics.csv").stat().st_mtime_ns == done
    results = pd.read_csv(tmp_path / "results.csv")
    assert results["status"].tolist() == ["completed", "failed"]
    assert not list(tmp_path.glob("report*")) and "no plots (trainer.plot=false)" in second.stdout  # the table alone
    # another sweep into the same dir would overwrite job 0's completed run and list job 1 beside its own
    other = cnnbench("-m", "trainer=smoke", "trainer.plot=false", f"data.root={tiny_data}", "optimizer.lr=0.3",
                     f"hydra.sweep.dir={tmp_path}")
    assert other.returncode == 2 and f"hydra.sweep.dir={tmp_path} holds 2 job(s) of another sweep (" in other.stderr
    assert (tmp_path / "0" / "metrics.csv").stat().st_mtime_ns == done


def test_report_of_a_sweep(tiny_data, tmp_path):
    # trainer.plot=false: the sweep ends with its table alone; cnnbench.report draws the plots later
    # (the sweep's own report, plots on, is drawn in test_an_exercise_recipe_runs_as_a_sweep_by_itself)
    proc = cnnbench("-m", "trainer=smoke", "trainer.plot=false", f"data.root={tiny_data}", "optimizer.lr=0.01,0.1",
                    "model.norm=none,batch", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "results.csv").is_file() and not list(tmp_path.glob("report*"))
    out = subprocess.run([sys.executable, "-m", "cnnbench.report", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    header = out.stdout.splitlines()[0].split()
    assert header[:3] == ["job", "optimizer.lr", "model.norm"] and "final_test_acc" in header
    assert len([line for line in out.stdout.splitlines() if "completed" in line]) == 4
    for png in ("report_curves.png", "report_vs_optimizer.lr.png", "report_vs_model.norm.png"):
        assert (tmp_path / png).stat().st_size > 10_000, png


def test_report_of_one_run_and_of_nothing(make_cfg, tiny_data, tmp_path, capsys, monkeypatch):
    run(make_cfg(f"data.root={tiny_data}", "trainer.max_epochs=2"), tmp_path / "run")
    figures, save = {}, report.save_figure
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.__setitem__(path.name, fig) or save(fig, path))
    results, written = report.report(tmp_path / "run")
    assert len(results) == 1 and [w.name for w in written] == ["report_curves.png"]
    assert not figures["report_curves.png"].legends  # one run: nothing to tell apart
    assert report.main([str(tmp_path / "run" / "summary.json")]) == 0  # a run's file: its run
    assert f"reporting on its folder, {tmp_path / 'run'}" in capsys.readouterr().err
    assert report.main([str(tmp_path / "nothing")]) == 2
    assert f"{tmp_path / 'nothing'} does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "holds no run" in capsys.readouterr().err


def test_report_of_a_bench_sweep(make_cfg, tiny_data, tmp_path, monkeypatch):
    figures = {}
    monkeypatch.setattr(report, "save_figure", lambda fig, path: figures.__setitem__(path.name, fig) or path)
    for job, model in enumerate(["lenet", "bn_lenet"]):
        run(make_cfg("task=bench", f"model={model}", f"data.root={tiny_data}", "bench.batch_sizes=[4,8]", "bench.steps=1",
                     "bench.warmup_steps=0"), tmp_path / str(job))
        summary = json.loads((tmp_path / str(job) / "summary.json").read_text())
        (tmp_path / str(job) / "summary.json").write_text(json.dumps(summary | {"overrides": [f"model={model}"]}))
    results, written = report.report(tmp_path)
    assert "report_bench.png" in [w.name for w in written]
    assert [t.get_text() for t in figures["report_bench.png"].legends[0].get_texts()] == ["model=lenet", "model=bn_lenet"]
    shutil.copytree(tmp_path / "0", tmp_path / "alone" / "0")  # a sweep of one job: nothing to tell apart
    report.report(tmp_path / "alone")
    assert not figures["report_bench.png"].legends  # was a legend of one entry, its job number ("0")


@pytest.mark.slow  # several processes
def test_optuna_search_returns_the_objective(tiny_data, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the [sweeps] extra")
    proc = cnnbench("-m", "+hparams_search=lenet_lr", "hydra.sweeper.n_trials=3", "trainer=smoke", f"data.root={tiny_data}",
                    f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    # Optuna's line through the sweep's logging, uncoloured; alembic's plugin list (Optuna imports it) left out
    assert "] A new study created in memory" in proc.stderr and "\x1b[" not in proc.stderr and "setup plugin" not in proc.stderr
    results = pd.read_csv(tmp_path / "results.csv")
    assert len(results) == 3 and (results["status"] == "completed").all()
    best = (tmp_path / "optimization_results.yaml").read_text()
    # the value Optuna saw is the objective each run returned: its best test accuracy
    assert f"best_value: {results['best_test_acc'].max()}" in best
    from cnnbench.report import _objective

    assert _objective(tmp_path) == "best_test_acc"  # the report plots what the search optimised (no multirun.yaml tells it)
    top = results.loc[results["best_test_acc"].idxmax()]  # and the sweep's last line says which job that was
    assert proc.stderr.strip().splitlines()[-1] == (f"cnnbench: best job {top['job']} (maximize best_test_acc): "
                                                    f"best_test_acc={top['best_test_acc']:.4g}, in {tmp_path / str(top['job'])}")
    # run again into its dir, the search would draw new trials over the completed ones
    again = cnnbench("-m", "+hparams_search=lenet_lr", "hydra.sweeper.n_trials=3", "trainer=smoke", f"data.root={tiny_data}",
                     f"hydra.sweep.dir={tmp_path}")
    assert again.returncode == 2 and "holds 3 job(s) of an earlier run of a search" in again.stderr, again.stderr
    assert len(pd.read_csv(tmp_path / "results.csv")) == 3


@pytest.mark.slow  # composes all 140 recipe jobs (40 s on 2 cores); CI runs it (make test-slow)
def test_the_exercise_page_lists_what_every_recipe_job_builds():
    """docs/exercises.md's recipe-jobs table (model, size, parameters, FLOPs of every job of
    every exercise recipe) is generated from the composed configs, so it cannot go stale: a
    recipe-wide knob (a quarter width, say) shows in the counts the page states."""
    from cnnbench import catalog

    page = (Path(__file__).parents[1] / "docs" / "exercises.md").read_text()
    expected = catalog.replace_section(page, catalog.recipe_jobs_table(), catalog.RECIPES_BEGIN, catalog.RECIPES_END)
    assert page == expected, "docs/exercises.md's recipe-jobs table is stale: run `make models-table`"


def test_a_searchs_best_job_in_either_direction(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the [sweeps] extra")
    from cnnbench.callbacks import best_job
    from cnnbench.config import compose

    rows = [{"job": "0", "final_train_loss": 0.9}, {"job": "1", "final_train_loss": 0.4}, {"job": "2", "status": "failed"}]
    # Optuna's default direction is its enum (Direction.minimize), a recipe's a string
    config = compose("hydra/sweeper=optuna", "objective=final_train_loss", hydra=True)
    assert best_job(rows, config, tmp_path) == f"best job 1 (minimize final_train_loss): final_train_loss=0.4, in {tmp_path / '1'}"
    config = compose("+hparams_search=lenet_lr", "objective=final_train_loss", hydra=True)
    assert best_job(rows, config, tmp_path).startswith("best job 0 (maximize final_train_loss)")
    assert best_job(rows, compose("objective=final_train_loss", hydra=True), tmp_path) is None  # a grid sweep: its report compares


STOP_IN_JOB_1 = '''
import os, signal
import cnnbench.engine as engine
original, calls = engine.Trainer.step, []
def step(self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == 8:  # trainer=smoke: 6 steps a job, so job 1's second step
        os.kill(os.getpid(), signal.SIGINT)
    return out
engine.Trainer.step = step
'''


def test_a_stopped_sweep_writes_the_jobs_so_far_and_goes_on_when_run_again(tiny_data, tmp_path):
    """In its default dir (a new one every second): the command it prints goes on there."""
    (tmp_path / "inject").mkdir()
    (tmp_path / "inject" / "sitecustomize.py").write_text(STOP_IN_JOB_1)
    args = ["-m", "trainer=smoke", "trainer.plot=false", f"data.root={tiny_data}", "optimizer.lr=0.05,0.1,0.2"]
    stopped = subprocess.run([sys.executable, "-m", "cnnbench", *args], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "inject")})
    assert stopped.returncode == 130, stopped.stderr
    sweep = next((tmp_path / "outputs" / "sweeps").glob("*/*")).absolute()
    assert f"the sweep stopped in job 1; the jobs so far are in {sweep / 'results.csv'}" in stopped.stderr
    assert pd.read_csv(sweep / "results.csv")["status"].tolist() == ["completed", "interrupted"]
    told = stopped.stderr.split("completed jobs are skipped, this one resumes): ")[1].splitlines()[0]
    assert told == f"cnnbench -m {' '.join(args[1:])} hydra.sweep.dir={sweep}"
    assert f"run the sweep again, {told}" in json.loads((sweep / "1" / "summary.json").read_text())["error"]
    time.sleep(1.1)  # the default dir would be another one now
    again = subprocess.run([sys.executable, *shlex.split(told.replace("cnnbench", "-m cnnbench", 1))],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "job 0 already completed" in again.stderr and "job 1 was interrupted" in again.stderr
    results = pd.read_csv(sweep / "results.csv")
    assert results["status"].tolist() == ["completed"] * 3 and "trainer.resume" not in results


def test_jobs_side_by_side_share_the_cores(make_cfg, tmp_path, monkeypatch):
    """hydra/launcher=local_parallel runs every job at once: each gets its share of the cores
    (torch's default, all of them in every job, made training many times slower)."""
    from omegaconf import OmegaConf

    from cnnbench import sweeps

    def jobs(task: list[str], **sweeper) -> int:  # the grid sweeper's multirun.yaml, the job's own Hydra config
        OmegaConf.save(OmegaConf.create({"hydra": {"overrides": {"task": task}}}), tmp_path / "multirun.yaml")
        return sweeps.jobs_side_by_side(OmegaConf.create({"sweep": {"dir": str(tmp_path)}, "sweeper": sweeper}))

    assert jobs(["optimizer.lr=0.01,0.1,1", "data.batch_size=64,128", "seed=0"]) == 6
    # a recipe's own axes count; the command line's sweep of the same key replaces the recipe's
    recipe = {"params": {"model.norm": "none,batch", "optimizer.lr": "0.01,0.03,0.1"}}
    assert jobs([], **recipe) == 6 and jobs(["optimizer.lr=0.1,1"], **recipe) == 4
    assert jobs(["seed=range(0,5)"]) == 5 and jobs(["seed=range(0,5)"], max_batch_size=2) == 2  # batches of 2
    for done in ("0", "3"):  # a re-run skips the completed jobs: they take no cores
        (tmp_path / done).mkdir()
        (tmp_path / done / "summary.json").write_text('{"status": "completed"}')
    assert jobs(["seed=range(0,5)"]) == 3
    for done in ("0", "3"):
        shutil.rmtree(tmp_path / done)
    # a search (Optuna writes no multirun.yaml): its batch, from the job's own config
    (tmp_path / "multirun.yaml").unlink()
    search = OmegaConf.create({"sweep": {"dir": str(tmp_path)}, "sweeper": {"n_jobs": 3, "params": {"optimizer.lr": "interval(0, 1)"}}})
    assert sweeps.jobs_side_by_side(search) == 3
    monkeypatch.setattr(sweeps.os, "sched_getaffinity", lambda pid: set(range(8)))
    assert jobs(["optimizer.lr=interval(0, 1)"]) == 8  # cannot be counted: as many as cores
    (tmp_path / "multirun.yaml").unlink()
    assert sweeps.jobs_side_by_side(OmegaConf.create({"sweep": {"dir": str(tmp_path)}, "sweeper": {}})) == 8

    cfg = make_cfg()
    sweeps.share_the_cores(cfg, 3)
    assert cfg.trainer.threads == 2  # 8 cores, 3 jobs
    sweeps.share_the_cores(cfg, 20)
    assert cfg.trainer.threads == 2, "a thread count already set (by the user) is kept"
    cfg = make_cfg()
    sweeps.share_the_cores(cfg, 20)
    assert cfg.trainer.threads == 1


def test_a_grown_grid_sweep_goes_on_in_its_dir_and_any_other_is_refused(tmp_path, capsys):
    """A design study grows in place: run again into its dir with a longer sample range, its
    finished jobs keep their numbers and are skipped. A sweep that would give a finished job's
    number to another job (a space added in front, other settings, fewer jobs) is refused."""
    import itertools

    from omegaconf import OmegaConf

    from cnnbench.callbacks import check_sweep_dir

    def sweep(*task: str):
        params = {"model.sample": "range(0,2)", "model.space": "anynetx_a,regnetx"}  # as ds_anynet: sample first
        return OmegaConf.create({"hydra": {"sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                                                       "params": params}, "overrides": {"task": ["experiment=ds_anynet", *task]}}})

    OmegaConf.save(sweep("trainer=smoke"), tmp_path / "multirun.yaml")
    for n, (sample, space) in enumerate(itertools.product(range(2), ["anynetx_a", "regnetx"])):
        (tmp_path / str(n)).mkdir()
        overrides = [f"model.sample={sample}", f"model.space={space}", "experiment=ds_anynet", "trainer=smoke"]
        (tmp_path / str(n) / "summary.json").write_text(json.dumps({"overrides": overrides}))
    check_sweep_dir(tmp_path, sweep("trainer=smoke"))  # the same sweep again
    check_sweep_dir(tmp_path, sweep("trainer=smoke", "model.sample=range(0,5)"))  # grown: jobs 0-3 are the same four
    for other in (["model.space=anynetx_a,anynetx_b,regnetx"], ["model.sample=range(0,1)"], ["optimizer.lr=0.3"]):
        with pytest.raises(SystemExit):
            check_sweep_dir(tmp_path, sweep("trainer=smoke", *other))
        assert f"hydra.sweep.dir={tmp_path} holds 4 job(s) of another sweep" in capsys.readouterr().err


def test_a_stopped_search_does_not_advise_going_on_in_its_dir(tmp_path, monkeypatch):
    """A stopped grid sweep goes on when run again into its dir; a search run again there is
    refused (it would draw new trials over the old): its stop said to run it again all the same."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cnnbench import train
    from cnnbench.config import compose

    summary = {"task": "train", "overrides": [], "epochs_completed": 0}
    (tmp_path / "last.pt").write_bytes(b"")
    monkeypatch.setattr(train, "in_sweep", lambda: True)
    monkeypatch.setattr(train, "_sweep_again", lambda: "cnnbench -m ... hydra.sweep.dir=D")
    previous = HydraConfig.instance().cfg
    try:
        for chosen, advice in ((["+hparams_search=lenet_lr"], train.SEARCH_STOPPED),
                               ([], "run the sweep again, cnnbench -m ... hydra.sweep.dir=D: this job resumes from its last.pt")):
            config = compose(*chosen, hydra=True)
            config.hydra.mode = RunMode.MULTIRUN
            HydraConfig.instance().set_config(config)
            assert train._resume_advice(summary, tmp_path).startswith(advice)
    finally:
        HydraConfig.instance().cfg = previous
    assert "run it again into a new dir" in train.SEARCH_STOPPED


def test_a_search_checks_its_ranges_and_trials_before_the_first_trial(tmp_path):
    """Optuna draws its trials one by one: a typo or a range no trial could run with surfaced in
    trial 0 as a refusal and then a traceback from Optuna, after the sweep dir was made."""
    from cnnbench.config import OBJECTIVES, ConfigError, search_probes, validate_search

    params = {"optimizer.lr": "tag(log, interval(0.005, 2.0))", "data.batch_size": "choice(64, 128, 256)"}
    assert search_probes(["trainer=smoke"], params) == [
        ["optimizer.lr=0.005", "data.batch_size=64", "trainer=smoke"], ["optimizer.lr=2.0", "data.batch_size=64", "trainer=smoke"],
        ["optimizer.lr=0.005", "data.batch_size=128", "trainer=smoke"], ["optimizer.lr=0.005", "data.batch_size=256", "trainer=smoke"]]
    validate_search(["trainer=smoke"], params, 3)
    with pytest.raises(ConfigError, match=r"^the search's settings are not valid, so no trial was started:\n  optimizer.lr=-1.0 is not allowed"):
        validate_search(["trainer=smoke"], params | {"optimizer.lr": "interval(-1.0, 0.5)"}, 3)
    for trials in (0, -1, "many"):
        with pytest.raises(ConfigError, match=rf"^hydra.sweeper.n_trials={trials} is not allowed; a search runs a whole number"):
            validate_search([], params, trials)
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs the [sweeps] extra")
    proc = cnnbench("-m", "+hparams_search=lenet_lr", "hydra.sweeper.n_trials=2", "trainer=smoke", "objective=best_acc",
                    f"hydra.sweep.dir={tmp_path / 'search'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("  objective=best_acc is not a number a task=train run reports (did you mean "
                                                    "best_test_acc?); choose one of: " + ", ".join(OBJECTIVES["train"]))
    assert not (tmp_path / "search").exists()
