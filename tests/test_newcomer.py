"""What a newcomer trips over: every mistake is an error that names the key, the value and the
nearest real option, before anything runs; a run says where its files went."""
from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest


def cnnbench(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnbench", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["experiment=nosuch", "trainer=smoke"], "experiment=nosuch is not an option of experiment; choose one of: d2l_alexnet"),
    (["--cfg", "job", "experiment=ex_bn_lrr"], "experiment=ex_bn_lrr is not an option of experiment (did you mean ex_bn_lr?)"),
    (["experiment=ex_bn_lrr"], "(did you mean ex_bn_lr?)"),
    (["model=resnet"], "model=resnet is not an option of model (did you mean resnet50?)"),
    (["optimizer=sgdd"], "optimizer=sgdd is not an option of optimizer (did you mean sgd?); choose one of: adam, adamw, sgd"),
    (["trainer.max_epoch=3"], "trainer.max_epoch is not a key of trainer (did you mean trainer.max_epochs?)"),
    (["+trainer.max_epoch=3"], "trainer.max_epoch is not a key of trainer (did you mean trainer.max_epochs?)"),
    (["+data.batchsize=3"], "data.batchsize is not a key of data (did you mean data.batch_size?)"),
    (["+bench.step=3"], "bench.step is not a key of bench (did you mean bench.steps?)"),
    (["+scheduler.gama=0.5"], "scheduler.gama is not a key of scheduler (did you mean scheduler.gamma?)"),
    (["+sed=3"], "sed is not a top-level key (did you mean seed?)"),
    (["-m", "model=resnet18,resnet19"], "model=resnet19 is not an option of model (did you mean resnet18?)"),
    (["data.batch_sise=64"], "data.batch_sise is not a key of data (did you mean data.batch_size?)"),
    (["data.batch_size=many"], "data.batch_size=many is not allowed; data.batch_size takes a whole number in [1, 65536]"),
    (["trainer.plot=maybe"], "trainer.plot=maybe is not allowed; trainer.plot takes true or false"),
    (["trainer=smoke", "optimizer.lr=0.01,0.1"],
     "optimizer.lr=0.01,0.1 lists several values, a sweep: run it with -m (cnnbench -m optimizer.lr=0.01,0.1 ...)"),
    (["-m", "optimizer.lr=0.01;0.1"], "optimizer.lr=0.01;0.1 is not an override Hydra can read (at ';'): KEY=VALUE, a list KEY=[A,B]"),
    (["experiment=ex_bn_lr", "hydra.sweeper.params.optimizer.lr=0.1"],
     "hydra.sweeper.params.optimizer.lr: a sweep's axis is set by its key itself, optimizer.lr=0.1"),
    (["-m", "--cfg", "job", "optimizer.lr=0.1,0.2"], "-m and --cfg do not go together: --cfg looks at one job"),
    (["--cfg=job", "-m", "trainer=smoke"], "-m and --cfg do not go together: --cfg looks at one job"),
    (["--cfg", "job", "optimizer.lr=0.1,0.2"], "optimizer.lr=0.1,0.2 lists several values, a sweep: give one value"),
    (["data.root=/tmp/a,b"], "a value that holds a comma goes in Hydra's quotes inside the shell's: \"KEY='A,B'\""),
    (["trainer=smoke", "trainer.resume="], "trainer.resume= is empty; give a run dir or a .pt file, or leave trainer.resume out"),
    (["trainer.deterministic=2"], "trainer.deterministic=2 is not allowed; trainer.deterministic takes true or false"),
    (["-m", "data.hflip=false,2"], "data.hflip=2 is not allowed; data.hflip takes true or false"),
    (["data.normalize=Yes"], "data.normalize=Yes is not allowed; data.normalize takes true or false"),
    (["trainer.checkpoint=1"], "trainer.checkpoint=1 is not allowed; trainer.checkpoint takes true or false"),
    (["trainer.compile=0.5"], "trainer.compile=0.5 is not allowed; trainer.compile takes true, false or null"),
    (["bench.batch_sizes=32"], "bench.batch_sizes=32 is not allowed; bench.batch_sizes takes a list, e.g. bench.batch_sizes=[32,64]"),
    (["trainer.precision=fp8"], "trainer.precision=fp8 is not allowed; choose one of: auto, fp32, bf16, fp16"),
    (["model=resnet19"], "model=resnet19 is not an option of model (did you mean resnet18?)"),
    (["data.batch_size=128", "data.batch_size=64"], "data.batch_size is given twice (data.batch_size=128, then data.batch_size=64)"),
    (["hydra.run.dri=/tmp/x"], "hydra.run.dri is not a key of Hydra's config (did you mean hydra.run.dir?)"),
    (["-m", "optimizer.lr=0.1,0.2", "hydra.sweep.dri=/tmp/x"], "hydra.sweep.dri is not a key of Hydra's config (did you mean hydra.sweep.dir?)"),
    (["model.name=resnet18"], "model.name=resnet18 sets the name alone, keeping the default model's knobs; choose the model with model=resnet18"),
    (["+hparams_search=lenet_lr", "trainer=smoke"], "hparams_search=lenet_lr is a search: run it with -m (cnnbench -m +hparams_search=lenet_lr ...)"),
    (["logger.mlflow.experiment=x"], "logger.mlflow.experiment sets an option of the mlflow tracker, which this command does not choose: add logger=mlflow"),
    (["logger=mlflow", "logger.mlflow.experimnt=x"], "logger.mlflow.experimnt is not an option of the mlflow tracker (did you mean logger.mlflow.experiment?)"),
    (["task=evaluate", "trainer.resume=outputs/run", "model=resnet18", "model.norm=none"],
     "model=resnet18 model.norm=none: task=evaluate takes the model, its knobs and how it was trained from the checkpoint"),
    (["task=evaluate", "trainer.resume=outputs/run", "optimizer.lr=0.5", "trainer.max_epochs=9", "data.subset=10", "data.test_subset=20"],
     "optimizer.lr=0.5 trainer.max_epochs=9 data.subset=10: task=evaluate takes the model, its knobs and how it was trained"),
    (["model.norm=bach"], "model.norm='bach' is not allowed (did you mean batch?); choose one of: none, batch, scratch"),
    (["model=anynet_sample", "model.space=AnyNetXB"], "model.space='AnyNetXB' is not allowed (did you mean anynetx_b?)"),
    (["logger.mlfow.experiment=x"], "logger.mlfow.experiment: mlfow is not a tracker (did you mean mlflow?)"),
    (["logger=csv,tensorboard"], "or give one value; several trackers in one run: 'logger=[csv,tensorboard]'"),
    # a key in the wrong section, or none: where it is
    (["trainer.lr=0.1"], "trainer.lr is not a key of trainer (did you mean optimizer.lr?); its keys are: max_epochs,"),
    (["lr=0.1"], "lr is not a top-level key (did you mean optimizer.lr?)"),
    (["data.max_epochs=3"], "data.max_epochs is not a key of data (did you mean trainer.max_epochs?)"),
    # words that are no override: one line, not Hydra's parser error or its usage text
    (["model", "resnet18"], "cnnbench: model resnet18: cnnbench takes overrides KEY=VALUE (e.g. model=resnet18; a sweep: -m KEY=A,B)"),
    (["--model", "resnet18"], "cnnbench: --model resnet18: cnnbench takes overrides KEY=VALUE (e.g. model=resnet18;"),
    (["help"], "cnnbench: help: cnnbench takes overrides KEY=VALUE (e.g. model=resnet18;"),
    (["-m", "hydra/launcher=local_paralel", "optimizer.lr=0.1,0.2"],
     "hydra/launcher=local_paralel is not an option of hydra/launcher (did you mean local_parallel?); choose one of: basic, "
     "local_parallel, slurm, submitit_local, submitit_slurm"),
])
def test_mistakes_are_refused_with_the_nearest_real_name(tmp_path, monkeypatch, capsys, args, message):
    # the command's own entry point, in this process: the check comes before Hydra starts
    from cnnbench import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["cnnbench", *args])
    monkeypatch.setattr(train, "hydra_main", lambda: pytest.fail("the mistake reached Hydra"))
    with pytest.raises(SystemExit) as stop:
        train.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err, err
    assert not (tmp_path / "outputs").exists()  # refused before anything ran


def test_a_mistake_on_the_command_line_exits_2_before_anything_runs(tmp_path):
    proc = cnnbench("model=resnet", "trainer.max_epoch=3", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "model=resnet is not an option of model (did you mean resnet50?)" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "outputs").exists()


def test_hydras_own_errors_exit_2_like_every_bad_input(tmp_path):
    proc = cnnbench("trainer.max_epochs=abc", cwd=tmp_path)
    assert proc.returncode == 2 and "max_epochs" in proc.stderr


def test_an_unknown_key_added_by_any_route_is_refused(make_cfg):
    from omegaconf import open_dict

    from cnnbench.config import ConfigError, validate

    cfg = make_cfg()
    with open_dict(cfg.trainer):
        cfg.trainer.max_epoch = 3  # as a recipe or a `+` override could
    with pytest.raises(ConfigError, match=r"trainer.max_epoch is not a key of trainer \(did you mean trainer.max_epochs\?\)"):
        validate(cfg)


def test_a_sweep_checks_every_job_before_launching_any(tiny_data, tmp_path):
    proc = cnnbench("-m", "optimizer.lr=0.1,abc,-1", "trainer=smoke", f"data.root={tiny_data}", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 2
    assert "2 of the sweep's 3 jobs are not valid, so none was started" in proc.stderr
    assert "job 1 (optimizer.lr=abc" in proc.stderr and "job 2 (optimizer.lr=-1" in proc.stderr
    assert not (tmp_path / "0").exists()


def test_a_knob_of_the_swept_models_applies_to_each_job(tmp_path):
    # Hydra composes a multirun's first config without its sweeps, with the default model
    # (bn_lenet has no width): the knob must still reach every job's model
    proc = cnnbench("-m", "task=summary", "trainer.plot=false", "model=vgg11,vgg13", "model.width=0.25", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    from cnnbench.analysis import meta_counts

    results = pd.read_csv(tmp_path / "results.csv").set_index("model")
    for name in ("vgg11", "vgg13"):
        assert results.loc[name, "params"] == meta_counts(name, (224, 224), width=0.25)[0] < meta_counts(name, (224, 224))[0]
    assert results["model.width"].tolist() == [0.25, 0.25]


def test_a_command_line_value_replaces_a_recipes_sweep_of_that_key(make_cfg):
    from cnnbench.config import multirun_requested, one_value_sweeps, sweep_jobs

    args = ["experiment=ds_anynet", "model.sample=5", "model.name=x", "model.depth=null", "trainer.max_epochs=1"]
    assert multirun_requested(args) and multirun_requested(["-m", "model.width=1"]) and not multirun_requested(args[1:])
    assert one_value_sweeps(args) == ["experiment=ds_anynet", "model.sample=choice(5)", "model.name=choice(x)",
                                      "++model.depth=null", "trainer.max_epochs=1"]  # null cannot be a choice
    params = make_cfg("experiment=ds_anynet", hydra=True).hydra.sweeper.params
    jobs = sweep_jobs(one_value_sweeps(args[:2]), params)
    assert jobs == [["model.sample=5", f"model.space={space}", "experiment=ds_anynet"] for space in ("anynetx_a", "anynetx_e", "regnetx")]
    # numbered as Hydra's grid sweeper numbers them: the recipe's key keeps its place, first (a study grows at its end)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    grown = ["experiment=ds_anynet", "model.sample=range(0,3)"]
    hydras = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + grown), None)[0]
    assert sweep_jobs(grown, params) == [list(job) for job in hydras] and sweep_jobs(grown, params)[1][:2] == ["model.sample=0", "model.space=anynetx_e"]


def test_a_glob_over_a_groups_options_is_a_sweep_of_the_options_it_matches():
    from cnnbench.config import ConfigError, sweep_jobs
    from cnnbench.train import checked_args

    # Hydra's glob choice sweep: every job checked as for a list (it was a traceback, "ConfigLoader is not set")
    assert checked_args(["-m", "model=glob(bn_*)", "trainer=smoke"]) == ["-m", "model=glob(bn_*)", "trainer=smoke"]
    assert sweep_jobs(["model=glob(*lenet*,exclude=[lenet,google*])", "optimizer.lr=0.1,0.2"], None) == [
        [f"model={m}", f"optimizer.lr={lr}"] for m in ("bn_lenet", "bn_lenet_scratch") for lr in ("0.1", "0.2")]
    with pytest.raises(ConfigError, match=r"^model=glob\(nosuch\*\) matches none of model's options; choose from: alexnet, "):
        checked_args(["-m", "model=glob(nosuch*)"])
    with pytest.raises(ConfigError, match=r"^optimizer.lr=glob\(\*\): glob\(\) chooses among a group's options and optimizer.lr "
                                          r"is not a group \(the groups: model, data, "):
        checked_args(["-m", "optimizer.lr=glob(*)"])


def test_what_hydra_gets_from_the_command_line():
    from cnnbench.config import ConfigError
    from cnnbench.train import checked_args

    assert checked_args(["-m", "model=vgg11,vgg13", "model.width=0.25"]) == ["-m", "model=vgg11,vgg13", "model.width=choice(0.25)"]
    # -m anywhere: Hydra's parser took it only first ("unrecognized arguments: optimizer.lr=choice(0.1)")
    assert checked_args(["trainer=smoke", "-m", "optimizer.lr=0.1"]) == ["-m", "trainer=smoke", "optimizer.lr=choice(0.1)"]
    # a misspelt section is named with the nearest, not Hydra's "use +tranier.max_epochs=3"
    with pytest.raises(ConfigError, match=r"^tranier.max_epochs: tranier is not a section of the config \(did you mean trainer\?\)"):
        checked_args(["tranier.max_epochs=3"])
    assert checked_args(["experiment=ex_bn_lr", "optimizer.lr=0.5"]) == ["experiment=ex_bn_lr", "optimizer.lr=choice(0.5)"]
    # --cfg, --help and --info compose one run: no sweep syntax, even for a sweeping recipe
    for flags in (["--cfg", "job"], ["--help"], ["--info", "all"], ["-cjob"]):
        assert checked_args([*flags, "experiment=ex_bn_lr", "optimizer.lr=0.5"]) == [*flags, "experiment=ex_bn_lr", "optimizer.lr=0.5"]
    # a value a sweep cannot carry as typed (null; a quoted 'true' would come back a bool): set or add
    assert checked_args(["-m", "model=vgg11,vgg13", "model.name='true'", "model.dropout=null"])[-2:] == [
        "++model.name='true'", "++model.dropout=null"]
    # a value that only a run resolves is left to Hydra and the run, not a traceback here
    assert checked_args(["model=vgg11", "model.width=${hydra:job.name}"]) == ["model=vgg11", "model.width=${hydra:job.name}"]
    with pytest.raises(ConfigError, match="model=resnet19 is not an option"):
        checked_args(["model=resnet19"])
    # a single run's values too, in cnnbench's words (not Hydra's object types), before any dir is made
    with pytest.raises(ConfigError, match=r"^task=sumary is not allowed \(did you mean summary\?\); choose one of: train, summary"):
        checked_args(["task=sumary"])
    with pytest.raises(ConfigError, match=r"^trainer.max_epochs=two is not allowed; trainer.max_epochs takes a whole number in \[1, 1000000\]"):
        checked_args(["trainer.max_epochs=two"])
    with pytest.raises(ConfigError, match=r"^data.resize=28 \(28x28\) is too small for model alexnet"):
        checked_args(["model=alexnet", "data.resize=28"])
    with pytest.raises(ConfigError, match=r"^seed=1e3 is not allowed; seed takes a whole number"):  # the value as typed, not as converted
        checked_args(["seed=1e3"])
    # a switch as Hydra reads it: quoted, in any case, or an interpolation; a sweep however the mode is set
    assert checked_args(["trainer=smoke", "trainer.deterministic='true'", "trainer.plot=False", "trainer.checkpoint=${trainer.plot}"])
    assert checked_args(["++hydra.mode=RunMode.MULTIRUN", "trainer=smoke", "optimizer.lr=0.1,0.2"])[-1] == "optimizer.lr=0.1,0.2"
    # a malformed override: which one, where Hydra's parser stopped, and how to quote (not Hydra's lexer name and a link)
    with pytest.raises(ConfigError, match=r"^data.root=~/data is not an override Hydra can read \(at '~'\): KEY=VALUE"):
        checked_args(["trainer=smoke", "data.root=~/data"])
    # a sweep's dir is hydra.sweep.dir: Hydra ignored hydra.run.dir and started ds_anynet's 96 jobs in outputs/sweeps/
    for args, why in ((["experiment=ds_anynet", "trainer=smoke"], "experiment=ds_anynet"), (["-m", "optimizer.lr=0.1,1"], "-m")):
        with pytest.raises(ConfigError, match=rf"^hydra.run.dir=out/a is a single run's dir, and this command is a sweep \({why}\), "
                                              r"whose jobs go into numbered dirs under hydra.sweep.dir: give hydra.sweep.dir=out/a$"):
            checked_args([*args, "hydra.run.dir=out/a"])
    # another primary config or config dir: the run's own check judges its values
    assert checked_args(["--config-name", "mine", "task=sumary"]) == ["--config-name", "mine", "task=sumary"]


def test_a_misspelt_knob_or_optimizer_argument_is_named_with_what_is_allowed(tmp_path):
    from cnnbench.config import ConfigError, check_choice_keys, one_value_sweeps, validate_sweep

    with pytest.raises(ConfigError, match=r"^model.widht is not a knob of model vgg11 \(did you mean model.width\?\); its knobs are: arch, width, "):
        check_choice_keys(["model=vgg11", "model.widht=0.5", "trainer.max_epochs=2", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(ConfigError, match=r"^optimizer.lrr is not an argument of SGD \(did you mean optimizer.lr\?\); allowed: lr, momentum"):
        check_choice_keys(["optimizer.lrr=0.1"])
    check_choice_keys(["model=vgg11", "model.width=0.5", "optimizer.lr=0.1"])
    # in a sweep, each job's model: cnnbench's message, not Hydra's "not in struct" (the sweep's
    # check runs before any job: test_a_sweep_checks_every_job_before_launching_any)
    with pytest.raises(ConfigError, match=r"1 of the sweep's 2 jobs is not valid, so none was started:\n  job 1 "
                                          r"\(model=lenet model.width=0.5\): model.width is not a knob of model lenet;"):
        validate_sweep(one_value_sweeps(["model=vgg11,lenet", "model.width=0.5"]), None)
    # a typed value in a sweep's job: cnnbench's message too, as in a single run
    with pytest.raises(ConfigError, match=r"job 1 \(task=sumary\): task=sumary is not allowed \(did you mean summary\?\)"):
        validate_sweep(["task=train,sumary"], None)


def test_the_smoke_preset_shortens_bench_recipes_and_bench_writes_every_row(make_cfg, tiny_data, tmp_path, monkeypatch):
    from cnnbench import tasks
    from cnnbench.train import run

    cfg = make_cfg("experiment=ex_alexnet_bench", "trainer=smoke", f"data.root={tiny_data}", "data.resize=65")
    assert list(cfg.bench.batch_sizes) == [2, 4] and cfg.bench.steps == 2
    written = []
    real = tasks.write_csv
    monkeypatch.setattr(tasks, "write_csv", lambda path, rows: written.append(len(rows)) or real(path, rows))
    assert run(cfg, tmp_path)["status"] == "completed"
    assert written == [2, 4]  # bench.csv after each batch size
    assert pd.read_csv(tmp_path / "bench.csv")["batch_size"].tolist() == [2, 2, 4, 4]


def test_help_lists_the_tasks_and_every_recipe_once(tmp_path):
    from cnnbench.config import TASK_HELP, group_options

    proc = cnnbench("--help", cwd=tmp_path)
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    for task, text in TASK_HELP.items():
        assert f"  {task:10} {text}" in lines
    for recipe in group_options("experiment"):
        assert sum(line.startswith(f"  {recipe} ") for line in lines) == 1, recipe
    # a long description is wrapped, not cut: ds_anynet's ends with what the study compares
    assert "…" not in proc.stdout and any(line.strip() == "their test errors" for line in lines)


def test_interrupted_advice_is_a_command_to_paste(make_cfg, tiny_data, tmp_path, monkeypatch):
    import os
    import shlex
    import signal

    from cnnbench import engine
    from cnnbench.train import run

    step, calls = engine.Trainer.step, []

    def step_then_sigint(self, x, y):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return step(self, x, y)

    monkeypatch.setattr(engine.Trainer, "step", step_then_sigint)
    overrides = [f"data.root={tiny_data}", "data.batch_size=16", "model.padding=1"]
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*overrides), tmp_path / "my run", overrides)
    error = __import__("json").loads((tmp_path / "my run" / "summary.json").read_text())["error"]
    command = shlex.split(error.split("resume with: ", 1)[1])
    assert command == ["cnnbench", *overrides, f"hydra.run.dir={tmp_path / 'my run'}", f"trainer.resume={tmp_path / 'my run'}"]


def test_cfg_job_shows_the_resolution_the_model_will_use(tmp_path):
    proc = cnnbench("--cfg", "job", "model=resnet18", cwd=tmp_path)
    assert proc.returncode == 0 and "  resize: 96\n" in proc.stdout
    proc = cnnbench("--cfg", "job", "model=resnet18", "data.resize=64", cwd=tmp_path)
    assert "  resize: 64\n" in proc.stdout


def test_a_sweep_over_recipes_that_are_sweeps_themselves_is_refused():
    """-m experiment=A,B runs each recipe once, with the command's sweeper settings: the recipes'
    own axes would be dropped without a word."""
    from cnnbench.config import ConfigError, validate_sweep

    with pytest.raises(ConfigError, match=r"ex_bn_bias sweeps model\.bias=true,false; ex_lenet_modern sweeps "
                                          r"model\.activation=sigmoid,relu, model\.pool=avg,max\. .* run each on its own"):
        validate_sweep(["experiment=ex_bn_bias,ex_lenet_modern", "trainer=smoke"], None)
    validate_sweep(["experiment=d2l_bn_lenet,d2l_bn_lenet_scratch", "trainer=smoke"], None)  # one run each: fine
    validate_sweep(["experiment=ex_bn_bias", "trainer=smoke"], None)  # one recipe: its own sweep


def test_a_reason_shared_by_many_jobs_of_a_sweep_is_said_once():
    from cnnbench.config import OBJECTIVES, ConfigError, number_ranges, validate_sweep

    with pytest.raises(ConfigError) as err:
        validate_sweep(["optimizer.lr=0.1,abc", "model.norm=none,batch", "trainer=smoke"], None)
    assert str(err.value).splitlines() == ["2 of the sweep's 4 jobs are not valid, so none was started:",
                                           "  jobs 2-3: optimizer.lr='abc' is not allowed; SGD takes a finite number"]
    with pytest.raises(ConfigError) as err:
        validate_sweep(["optimizer.lr=0.1,0.2,0.3", "objective=best_acc"], None)
    assert str(err.value).splitlines()[1:] == ["  all jobs: objective=best_acc is not a number a task=train run reports (did "
                                               "you mean best_test_acc?); choose one of: " + ", ".join(OBJECTIVES["train"])]
    assert number_ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8" and number_ranges([4]) == "4"
