"""Training through ``cnnbench.train.run`` with composed configs: learning, outputs, statuses."""
from __future__ import annotations

import json
import math
import os
import re

import pandas as pd
import pytest
import torch
from conftest import sigterm_after_step
from variants import KNOB_VARIANTS, smoke_side

from cnnbench.config import CONF_DIR, model_knobs
from cnnbench.metrics import COLUMNS
from cnnbench.models import list_models
from cnnbench.train import run


def read_run(out):
    return pd.read_csv(out / "metrics.csv"), json.loads((out / "summary.json").read_text())


def test_loss_goes_down_on_a_small_subset(make_cfg, real_data, tmp_path, caplog):
    caplog.set_level("INFO", logger="cnnbench")
    cfg = make_cfg("data.subset=2048", "data.test_subset=1024", "data.batch_size=64", "trainer.max_epochs=4",
                   "optimizer.momentum=0.9", "optimizer.lr=0.05", "trainer.plot=true")
    summary = run(cfg, tmp_path)
    metrics, saved = read_run(tmp_path)
    assert summary["status"] == saved["status"] == "completed"
    assert list(metrics.columns) == COLUMNS
    assert metrics["epoch"].tolist() == [1, 2, 3, 4]
    assert metrics["train_loss"].iloc[-1] < 0.7 * metrics["train_loss"].iloc[0]
    assert metrics["test_acc"].iloc[-1] > 0.7  # ten classes: chance is 0.1
    assert saved["final_test_acc"] == pytest.approx(metrics["test_acc"].iloc[-1], abs=1e-6)
    assert saved["best_test_acc"] == pytest.approx(metrics["test_acc"].max(), abs=1e-6)
    assert saved["params"] == 44_878 and saved["flops"] > 0 and saved["device"] == "cpu" and saved["precision"] == "fp32"
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert "2,048 training images an epoch, batch 64, on cpu in fp32" in caplog.text  # the run says what auto became


def test_same_seed_same_metrics(make_cfg, tiny_data, tmp_path):
    overrides = (f"data.root={tiny_data}", "trainer.max_epochs=2", "data.batch_size=16", "data.hflip=true", "data.crop_padding=2")
    a = run(make_cfg(*overrides), tmp_path / "a")
    b = run(make_cfg(*overrides), tmp_path / "b")
    assert a["status"] == b["status"] == "completed"
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    pd.testing.assert_frame_equal(read_run(tmp_path / "a")[0][cols], read_run(tmp_path / "b")[0][cols])


def test_divergence_is_recorded(make_cfg, tiny_data, tmp_path):
    cfg = make_cfg("model=lenet", f"data.root={tiny_data}", "optimizer.lr=1e38", "trainer.max_epochs=5", "data.batch_size=16")
    summary = run(cfg, tmp_path)
    metrics, saved = read_run(tmp_path)
    assert summary["status"] == saved["status"] == "diverged"
    assert "training loss became nan in epoch 1" in saved["error"]
    assert len(metrics) == 1 and math.isnan(metrics["train_loss"][0])  # the epoch that diverged, then stop


def test_a_finite_blow_up_counts_as_diverged(make_cfg, tiny_data, tmp_path):
    # BN-LeNet at lr=1e30 keeps a finite loss near 1e31: only the threshold catches it
    overrides = (f"data.root={tiny_data}", "optimizer.lr=1e30", "trainer.max_epochs=3", "data.batch_size=16")
    summary = run(make_cfg(*overrides), tmp_path / "a")
    assert summary["status"] == "diverged" and summary["epochs_completed"] == 1
    assert re.search(r"training loss became [0-9.]+e\+\d+ \(above trainer.diverge_loss=1000\) in epoch 1", summary["error"])
    assert run(make_cfg(*overrides, "trainer.diverge_loss=0"), tmp_path / "b")["status"] == "completed"


@pytest.mark.parametrize(
    "scheduler, expected",
    [
        ("scheduler=step scheduler.step_size=2 scheduler.gamma=0.5", [0.1, 0.1, 0.05, 0.05]),
        ("scheduler=cosine", [0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05, 0.1 * (1 + math.cos(3 * math.pi / 4)) / 2]),
    ],
)
def test_schedulers_set_the_epoch_learning_rate(make_cfg, tiny_data, tmp_path, scheduler, expected):
    # 96 images in batches of 24: four steps per epoch, so cosine is evaluated at quarter points
    cfg = make_cfg(f"data.root={tiny_data}", "trainer.max_epochs=4", "data.batch_size=24", *scheduler.split())
    assert run(cfg, tmp_path)["status"] == "completed"
    assert read_run(tmp_path)[0]["lr"].tolist() == pytest.approx(expected, rel=1e-4)


def test_onecycle_adam_label_smoothing_and_clipping(make_cfg, tiny_data, tmp_path):
    cfg = make_cfg(f"data.root={tiny_data}", "optimizer=adamw", "scheduler=onecycle", "trainer.label_smoothing=0.1",
                   "trainer.grad_clip=1.0", "trainer.max_epochs=2", "data.batch_size=16", "data.normalize=true")
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    lrs = read_run(tmp_path)[0]["lr"].tolist()
    assert lrs[0] < 0.001 and lrs[1] > lrs[0]  # warming up towards optimizer.lr


# The CUDA default path (bf16 autocast, channels_last), exercised on the CPU by CPU autocast: every
# registered model, every variant config and every documented knob variant trains with it, at
# its smallest input (at least 32 px), for the smoke preset's two epochs of three small batches,
# each evaluated on one batch, without the plots. (After a single step the deepest ResNets'
# running batch-norm statistics are still far off: their test loss overflows, in fp32 too.)
CUDA_DEFAULTS = ["trainer=smoke", "trainer.precision=bf16", "trainer.channels_last=true",
                 "trainer.limit_test_batches=1", "trainer.plot=false"]


def smoke_size(make_cfg, overrides) -> str:
    return f"data.resize={smoke_side(make_cfg(*overrides))}"


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_on_the_cuda_default_path(make_cfg, tiny_data, tmp_path, name):
    overrides = [f"model={name}", *CUDA_DEFAULTS, f"data.root={tiny_data}"]
    summary = run(make_cfg(*overrides, smoke_size(make_cfg, overrides)), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    metrics = read_run(tmp_path)[0]
    assert len(metrics) == 2 and metrics[["train_loss", "test_loss"]].notna().all().all()


VARIANT_CONFIGS = sorted({p.stem for p in (CONF_DIR / "model").glob("*.yaml")} - set(list_models()))
SMOKE_VARIANTS = [[f"model={name}"] for name in VARIANT_CONFIGS] + [
    [f"model={option}", *(f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in knobs.items())]
    for option, knobs in KNOB_VARIANTS
]


@pytest.mark.parametrize("overrides", SMOKE_VARIANTS, ids=[" ".join(o) for o in SMOKE_VARIANTS])
def test_every_documented_variant_trains_on_the_cuda_default_path(make_cfg, tiny_data, tmp_path, overrides):
    overrides = [*overrides, *CUDA_DEFAULTS, f"data.root={tiny_data}"]
    summary = run(make_cfg(*overrides, smoke_size(make_cfg, overrides)), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert len(read_run(tmp_path)[0]) == 2


# The same on a real GPU (CUDA's defaults: bf16 autocast, channels_last, cudnn.benchmark), eager: a
# CUDA-only failure in any model or variant shows here in about a second a model. The compiled step
# is the graphed test's and the GPU session's book runs' (benchmarks/gpu_session.py).
ON_CUDA = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
EVERY_MODEL_AND_VARIANT = [[f"model={name}"] for name in list_models()] + SMOKE_VARIANTS


@pytest.mark.parametrize("overrides", [pytest.param(o, marks=ON_CUDA) for o in EVERY_MODEL_AND_VARIANT],
                         ids=[" ".join(o) for o in EVERY_MODEL_AND_VARIANT])
def test_every_model_and_variant_trains_on_cuda(make_cfg, tiny_data, tmp_path, overrides):
    overrides = [*overrides, "trainer=smoke", "trainer.device=cuda", "trainer.compile=false",
                 "trainer.limit_test_batches=1", f"data.root={tiny_data}"]
    summary = run(make_cfg(*overrides, smoke_size(make_cfg, overrides)), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert summary["device"].startswith("cuda")
    metrics = read_run(tmp_path)[0]
    assert len(metrics) == 2 and metrics[["train_loss", "test_loss"]].notna().all().all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model, compiled", [("resnet18", False), ("bn_lenet", True)])
def test_cuda_steps_and_the_per_class_tally_never_wait_for_the_gpu(make_cfg, tiny_data, model, compiled):
    """The GPU path's one host sync per epoch: a training step (bf16, channels_last, fused SGD, a
    per-step schedule, clipping; eager, or graphed once captured) and the per-class tally issue none.
    CUDA's sync debug mode raises at the first call that would wait."""
    from cnnbench.confusion import Tally
    from cnnbench.data import DeviceLoader, load
    from cnnbench.engine import build_trainer

    cfg = make_cfg(f"data.root={tiny_data}", f"model={model}", "trainer.device=cuda", f"trainer.compile={compiled}",
                   "scheduler=onecycle", "trainer.grad_clip=1.0")
    device = torch.device("cuda")
    train, test = (split.to(device) for split in load(str(tiny_data)))
    trainer = build_trainer(cfg, device, (32, 32), model_knobs(cfg), steps_per_epoch=8)
    batches = list(DeviceLoader(train, 16, (32, 32), shuffle=True))[:6]
    test_batches = list(DeviceLoader(test, 16, (32, 32)))
    for x, y in batches[:3]:  # cuDNN autotuning; compilation and graph capture
        trainer.step(x, y)
    torch.cuda.synchronize()
    tally = Tally(test)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches[3:]:
            trainer.step(x, y)
        trainer.model.eval()
        for x, y in test_batches:
            tally.add(trainer.predict(x), y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(tally.errors().confusion.sum()) == len(test)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bench_measures_inference_without_the_training_steps_memory(make_cfg, tiny_data, tmp_path):
    summary = run(make_cfg("task=bench", "model=resnet18", "data.resize=64", "trainer.device=cuda", "bench.batch_sizes=[32]",
                           f"data.root={tiny_data}"), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    peak = pd.read_csv(tmp_path / "bench.csv").set_index("mode")["peak_mem_mb"]
    weights_mb = summary["params"] * 4 / 2**20
    assert peak["train"] > 2 * weights_mb  # weights and their gradients at least
    assert peak["infer"] < 2 * weights_mb  # no gradients, optimizer state or graphs left over from training


# fp16 autocast with its gradient scaler, where CPU autocast supports it (slow on a CPU: a few models
# that cover the from-scratch batch norm, residual sums and grouped convolutions; RegNetX has both,
# so ResNet-18, 20 s of emulated fp16, runs in the slow suite).
@pytest.mark.parametrize("name", ["bn_lenet_scratch", pytest.param("resnet18", marks=pytest.mark.slow), "regnetx32"])
def test_fp16_with_loss_scaling_trains(make_cfg, tiny_data, tmp_path, name):
    overrides = [f"model={name}", "trainer=smoke", "trainer.precision=fp16", "trainer.channels_last=true",
                 "trainer.max_epochs=1", f"data.root={tiny_data}"]
    summary = run(make_cfg(*overrides, smoke_size(make_cfg, overrides)), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert math.isfinite(summary["final_train_loss"])


def test_the_cpu_default_is_fp32_without_channels_last_or_compilation(make_cfg, tiny_data, tmp_path):
    from cnnbench.engine import build_trainer

    cfg = make_cfg(f"data.root={tiny_data}")
    trainer = build_trainer(cfg, torch.device("cpu"), (28, 28), model_knobs(cfg), 1)
    assert trainer.amp_dtype is None and not trainer.channels_last and not trainer.compile


def test_every_run_sets_the_backend_switches_afresh(make_cfg, tiny_data, tmp_path):
    """A deterministic job must not leave deterministic algorithms on (and cuDNN autotuning off)
    for the next job of a sweep in the same process."""
    base = [f"data.root={tiny_data}", "trainer=smoke", "trainer.max_epochs=1"]
    default_threads = torch.get_num_threads()
    first = run(make_cfg(*base, "trainer.deterministic=true", "trainer.matmul_precision=highest", "trainer.threads=1"),
                tmp_path / "a")
    assert first["status"] == "completed" and first["cpu_threads"] == 1
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    assert torch.get_float32_matmul_precision() == "highest" and torch.get_num_threads() == 1
    second = run(make_cfg(*base), tmp_path / "b")
    assert second["status"] == "completed" and second["cpu_threads"] == default_threads
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert torch.get_float32_matmul_precision() == "high" and torch.get_num_threads() == default_threads


def test_a_gpu_index_under_torchrun_is_refused(make_cfg, monkeypatch):
    from cnnbench.config import ConfigError, validate

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match=r"trainer.device='cuda:1' is not allowed under torchrun: each rank takes the GPU of its local rank"):
        validate(make_cfg("trainer.device=cuda:1"))


def test_evaluation_has_its_own_batch_and_time(make_cfg, tiny_data, tmp_path, monkeypatch):
    from cnnbench import engine

    sizes = []
    predict = engine.Trainer.predict
    monkeypatch.setattr(engine.Trainer, "predict", lambda self, x: sizes.append(len(x)) or predict(self, x))
    summary = run(make_cfg(f"data.root={tiny_data}", "data.batch_size=8", "data.test_batch_size=16", "trainer.max_epochs=1"), tmp_path)
    assert summary["status"] == "completed"
    assert sizes == [16, 16]  # the 32 test images in two batches of data.test_batch_size, not of 8
    metrics = read_run(tmp_path)[0]
    assert list(metrics.columns[-1:]) == ["eval_time_s"] and metrics["eval_time_s"].iloc[0] > 0
    assert make_cfg().data.test_batch_size == 1000 and 10_000 % 1000 == 0


def test_summary_reports_fixed_costs_and_a_steady_epoch_time(make_cfg, tiny_data, tmp_path):
    summary = run(make_cfg(f"data.root={tiny_data}", "trainer.max_epochs=3", "data.batch_size=16"), tmp_path)
    metrics = read_run(tmp_path)[0]
    assert summary["setup_s"] > 0 and summary["teardown_s"] > 0 and summary["training_s"] > 0
    assert summary["setup_s"] + summary["training_s"] + summary["teardown_s"] == pytest.approx(summary["wall_time_s"])
    assert summary["steady_epoch_time_s"] == pytest.approx(metrics["epoch_time_s"].iloc[1:].median())


# The compiled step (torch.compile; CUDA graphs on a GPU) against the eager one. On the CPU
# torch.compile generates C++ kernels: the first compilation of a model takes a minute, later ones
# come from the on-disk cache (CNNBENCH_CACHE). 96 images in batches of 20: the last batch of each
# epoch (16 images) runs eagerly, which must neither recompile nor be dropped.
COMPILE_CASES = {
    "cosine+clip": ["scheduler=cosine", "trainer.grad_clip=0.5", "optimizer.momentum=0.9"],
    "onecycle+adamw+smoothing": ["scheduler=onecycle", "optimizer=adamw", "trainer.label_smoothing=0.1"],
    "step+bf16": ["scheduler=step", "scheduler.step_size=1", "trainer.precision=bf16"],
}


# Inductor's first compilation on a fresh cache takes 45 s on 2 cores (20 s of it its one-off C++
# toolchain probing, whatever the graph), so the default suite compiles with the "aot_eager" backend:
# the same tracing (dynamo, AOT autograd's forward and backward graphs, the batch norm's buffer
# updates inside them, guards and recompilation) without generating code. The slow suite, which CI
# runs, compiles every case with inductor as a run does.
BACKENDS = [pytest.param("aot_eager", id="traced"), pytest.param("inductor", id="inductor", marks=pytest.mark.slow)]


def compile_with(monkeypatch, backend: str) -> None:
    """Make the trainer's torch.compile use ``backend`` (inductor is its own default)."""
    if backend != "inductor":
        compile_ = torch.compile
        monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compile_(fn, **kwargs, backend=backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [c if c == "cosine+clip" else pytest.param(c, marks=pytest.mark.slow) for c in COMPILE_CASES])
def test_compiled_step_matches_the_eager_step(make_cfg, tiny_data, tmp_path, monkeypatch, case, backend):
    overrides = ["model=bn_lenet", f"data.root={tiny_data}", "data.batch_size=20", "trainer.max_epochs=2",
                 "trainer.progress=false", *COMPILE_CASES[case]]
    compile_with(monkeypatch, backend)
    eager = run(make_cfg(*overrides, "trainer.compile=false"), tmp_path / "eager")
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = run(make_cfg(*overrides, "trainer.compile=true"), tmp_path / "compiled")
    assert eager["status"] == compiled["status"] == "completed", compiled.get("error")
    assert compiled["compile_s"] > 0 and eager["compile_s"] is None
    if backend == "inductor":  # the compiled artefacts are kept under cnnbench's cache dir (not inductor's /tmp default)
        from cnnbench.data import cache_dir

        assert any((cache_dir() / "inductor" / "fxgraph").iterdir())
    # one frame compiled into one graph: no graph break, no recompilation for the last batch
    assert counters["frames"]["total"] == counters["stats"]["unique_graphs"] == 1
    a, b = read_run(tmp_path / "eager")[0], read_run(tmp_path / "compiled")[0]
    tol = 2e-2 if "bf16" in case else 1e-4
    for col in ("train_loss", "test_loss", "lr"):
        assert b[col].tolist() == pytest.approx(a[col].tolist(), rel=tol), col
    assert b["train_acc"].tolist() == pytest.approx(a["train_acc"].tolist(), abs=0.05)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_run_stopped_mid_epoch_resumes_exactly(make_cfg, tiny_data, tmp_path, monkeypatch, backend):
    overrides = ["model=bn_lenet", f"data.root={tiny_data}", "data.batch_size=20", "trainer.max_epochs=3",
                 "trainer.compile=true", "scheduler=cosine", "trainer.progress=false"]
    compile_with(monkeypatch, backend)
    run(make_cfg(*overrides), tmp_path / "full")
    sigterm_after_step(monkeypatch, 7)  # during epoch 2's second step
    with pytest.raises(KeyboardInterrupt):
        run(make_cfg(*overrides), tmp_path / "cut")
    monkeypatch.undo()
    compile_with(monkeypatch, backend)  # (undo took it back with the step's patch)
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "in epoch 2 after step 2" in summary["error"]
    assert run(make_cfg(*overrides, f"trainer.resume={tmp_path / 'cut'}"), tmp_path / "cut")["status"] == "completed"
    cols = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr"]
    pd.testing.assert_frame_equal(read_run(tmp_path / "cut")[0][cols], read_run(tmp_path / "full")[0][cols])


BAD_INPUTS = [
    ("model.name=resnet19", r"model.name='resnet19' is not a registered model \(did you mean resnet18 or .*\); available: alexnet, alexnet28"),
    ("model=alexnet data.resize=64", r"data.resize=64 \(64x64\) is too small for model alexnet: the smallest input it accepts is 65x65"),
    ("data.resize=[28,0]", r"data.resize=\[28, 0\] is not allowed; give a side in pixels from 1 to 4096"),
    ("optimizer.lr=0", r"optimizer.lr=0 is not allowed; the learning rate must be a positive number"),
    ("optimizer.lr=-0.1", r"optimizer.lr=-0.1 is not allowed"),
    ("data.batch_size=0", r"data.batch_size=0 is not allowed; it must be in \[1, 65536\]"),
    ("trainer.max_epochs=0", r"trainer.max_epochs=0 is not allowed; it must be in \[1, 1000000\]"),
    ("model.norm=group", r"model.norm='group' is not allowed; choose one of: none, batch, scratch, mean_only, variance_only"),
    ("+model.depth=3", r"model.depth is not a knob of model bn_lenet; its knobs are: norm, norm_at, norm_affine, bias"),
    ("model.norm_at=head", r"model.norm_at='head' is not allowed; choose one of: none, conv, dense, all"),
    ("model=resnet50 model.groups=3", r"model.groups=3: the block's inner width 64 \(= 256 x bottleneck_ratio 0.25\) must be"),
    # values in a knob's range that still leave a layer with no channel name that knob
    ("model=resnet50 model.bottleneck_ratio=1e-9", r"model.bottleneck_ratio=1e-09 leaves the block's inner width at 0 .* above 0.00195"),
    ("model=densenet model.compression=1e-9", r"model.compression=1e-09 keeps no channel of the 192 after dense block 1"),
    ("+optimizer.momentun=0.9", r"optimizer.momentun is not an argument of SGD \(did you mean optimizer.momentum\?\); allowed: lr, momentum"),
    ("optimizer.momentum=-1", r"optimizer: SGD rejects its arguments: Invalid momentum value: -1"),
    ("optimizer.momentum=fast", r"optimizer.momentum='fast' is not allowed; SGD takes a finite number"),
    ("optimizer.nesterov=1", r"optimizer.nesterov=1 is not allowed; SGD takes true or false"),
    ("optimizer._target_=torch.nn.Linear", r"optimizer._target_='torch.nn.Linear' is not a torch.optim optimizer class"),
    ("trainer.diverge_loss=-1", r"trainer.diverge_loss=-1.0 is not allowed; it must be in \[0, inf\) \(0: only NaN/inf\)"),
    ("trainer.label_smoothing=1.5", r"trainer.label_smoothing=1.5 is not allowed; it must be in \[0, 1\)"),
    ("trainer.device=tpu", r"trainer.device='tpu' is not allowed; choose auto, cpu, cuda or cuda:N"),
    ("optimizer.momentum=1.5", r"optimizer.momentum=1.5 is not allowed; momentum must be in \[0, 1\)"),
    ("scheduler=cosine scheduler.min_lr=5", r"scheduler.min_lr=5.0 is not allowed with optimizer.lr=0.1: the cosine"),
    ("objective=best_test_accc", r"objective=best_test_accc is not a number a task=train run reports \(did you mean best_test_acc\?\)"),
    ("task=bench objective=test_acc", r"objective=test_acc is not a number a task=bench run reports; choose one of: best_train_images_per_s"),
    ("trainer.resume=/nonexistent", r"trainer.resume='/nonexistent': no checkpoint at /nonexistent \(a run dir with last.pt"),
    ("task=evaluate trainer.resume=/etc/hostname", r"/etc/hostname is not a checkpoint \(torch.save writes a zip archive"),
    ("task=bench", r"data.root='/nonexistent' is not a directory"),  # every other setting is fine
    ("model=vgg11 model.arch=[[1,64],M]", r"model.arch=\[\[1, 64\], 'M'\]: each stage is \[convolutions, channels\], two positive"),
    ("model=vgg11 model.hidden=[foo]", r"model vgg11 with model.hidden=\['foo'\] accepts no input up to 4096x4096 \(building or "
                                       r"running it fails with TypeError"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append(("trainer.device=cuda", r"trainer.device='cuda': CUDA is not available on this machine"))


@pytest.mark.parametrize("overrides, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_fails_before_training(make_cfg, tmp_path, overrides, message):
    summary = run(make_cfg(*overrides.split(), "data.root=/nonexistent"), tmp_path)
    assert summary["status"] == "failed" and summary["bad_input"]
    assert re.search(message, summary["error"]), summary["error"]
    assert not (tmp_path / "metrics.csv").exists()  # nothing trained
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_drop_last_with_fewer_images_than_a_batch_is_refused(make_cfg, tiny_data, tmp_path):
    """It trained on nothing and died dividing by zero images."""
    summary = run(make_cfg(f"data.root={tiny_data}", "data.drop_last=true", "data.subset=50", "data.batch_size=128"), tmp_path)
    assert summary["status"] == "failed" and summary["bad_input"]
    assert summary["error"] == ("data.drop_last=true leaves no training batch: data.batch_size=128 is more than the 50 training "
                                "images (data.subset=50); lower data.batch_size, or set data.drop_last=false")
    assert not (tmp_path / "metrics.csv").exists()


def test_tasks_that_read_no_data_ignore_data_root(make_cfg, tmp_path):
    from cnnbench.config import validate

    validate(make_cfg("task=min_size", "data.root=/nonexistent"))  # no error: min_size and a CPU summary read no data
    validate(make_cfg("task=summary", "data.root=/nonexistent"))


def test_bad_data_root_fails_before_training(make_cfg, tmp_path):
    summary = run(make_cfg(f"data.root={tmp_path}", "data.download=false"), tmp_path / "run")
    assert summary["status"] == "failed" and "lacks train-images-idx3-ubyte" in summary["error"]
    assert not (tmp_path / "run" / "metrics.csv").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["auto", "fp16"])
def test_gpu_run_with_mixed_precision_and_channels_last(make_cfg, real_data, tmp_path, precision):
    cfg = make_cfg("model=resnet18", "data.resize=64", "trainer=smoke", "trainer.device=cuda",
                   f"trainer.precision={precision}", "trainer.channels_last=true")
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert summary["device"].startswith("cuda") and summary["peak_mem_mb"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_graphed_step_matches_eager_and_resizes_once(make_cfg, real_data, tmp_path):
    overrides = ["model=resnet18", "data.resize=64", "data.subset=2000", "data.test_subset=1000", "data.batch_size=128",
                 "trainer.max_epochs=2", "trainer.device=cuda", "scheduler=cosine", "trainer.grad_clip=1.0"]
    eager = run(make_cfg(*overrides, "trainer.compile=false"), tmp_path / "eager")
    graphed = run(make_cfg(*overrides), tmp_path / "graphed")  # compile: on by default on CUDA
    assert eager["status"] == graphed["status"] == "completed", graphed.get("error")
    assert graphed["compile_s"] > 0
    a, b = read_run(tmp_path / "eager")[0], read_run(tmp_path / "graphed")[0]
    assert b["train_loss"].tolist() == pytest.approx(a["train_loss"].tolist(), rel=5e-2)


def test_a_new_run_in_an_old_dir_starts_fresh_files(make_cfg, tiny_data, tmp_path):
    cfg = make_cfg(f"data.root={tiny_data}", "trainer.max_epochs=2", "data.batch_size=32")
    run(cfg, tmp_path)
    run(make_cfg(f"data.root={tiny_data}", "trainer.max_epochs=1", "data.batch_size=32"), tmp_path)
    metrics, summary = read_run(tmp_path)
    assert metrics["epoch"].tolist() == [1] and summary["epochs_completed"] == 1


def test_every_objective_a_task_offers_is_a_number_in_its_summary(make_cfg, tiny_data, tmp_path):
    from cnnbench.config import OBJECTIVES

    common = [f"data.root={tiny_data}", "trainer=smoke"]
    tasks = {
        "train": ["trainer.checkpoint=true"],
        "evaluate": [f"trainer.resume={tmp_path / 'train'}"],  # the run above's checkpoint
        "bench": ["bench.batch_sizes=[8]", "bench.warmup_steps=0", "bench.steps=1"],
        "summary": [],
        "min_size": [],
    }
    assert set(tasks) == set(OBJECTIVES)
    for task, overrides in tasks.items():
        summary = run(make_cfg(f"task={task}", *common, *overrides), tmp_path / task)
        assert summary["status"] == "completed", (task, summary.get("error"))
        for name in OBJECTIVES[task]:
            value = summary.get(name)
            assert isinstance(value, (int, float)) and not isinstance(value, bool), (task, name, value)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's /proc/self/clear_refs")
def test_the_cpus_peak_memory_is_each_runs_own():
    """A CPU process's peak resident memory only grows: without a reset, a sweep's later jobs (and
    a bench's smaller batches) reported an earlier job's peak."""
    from cnnbench.engine import peak_memory_mb, reset_peak_memory

    cpu = torch.device("cpu")
    reset_peak_memory(cpu)
    big = torch.ones(2**28, dtype=torch.uint8)  # 256 MB, touched
    with_it = peak_memory_mb(cpu)
    del big
    reset_peak_memory(cpu)
    assert peak_memory_mb(cpu) < with_it - 200


def tiny_loader(batch_size: int, n: int = 50):
    from cnnbench import data

    gen = torch.Generator().manual_seed(0)
    split = data.Split(torch.randint(0, 256, (n, 4, 4), dtype=torch.uint8, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    return data.DeviceLoader(split, batch_size, (4, 4), shuffle=True)


def tiny_trainer(amp_dtype=None, **optimizer):
    from cnnbench.engine import Trainer

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, **optimizer), torch.device("cpu"),
                   amp_dtype=amp_dtype, progress=False)


def test_a_resume_on_an_epochs_last_partial_batch_keeps_the_compiled_step_for_full_batches():
    """The compiled step is specialised to the loader's full batch, not to the first batch it
    sees: a run resumed just before an epoch's last, partial batch trained every later epoch
    eagerly (on CUDA: no CUDA graphs for the rest of the run)."""
    trainer, sizes = tiny_trainer(), []

    def compiled(x, y):  # stands in for torch.compile's function: which batches take it
        sizes.append(len(y))
        return trainer._forward(x, y)

    trainer._compiled = compiled
    loader = tiny_loader(20)  # 50 images: batches of 20, 20, 10
    loader.load_state_dict({**loader.state_dict(), "batches_done": 2})
    trainer.train_one_epoch(loader, partial={"batches_done": 2})  # the resumed epoch: its partial batch alone
    trainer.train_one_epoch(loader)
    assert sizes == [20, 20], "the partial batch runs eagerly, every full one compiled"
    assert tiny_loader(3, n=2).step_batch == 2  # a split smaller than a batch: its one step is the full one


def test_a_resume_keeps_the_optimizer_kernels_of_the_machine_it_runs_on():
    """On CUDA the optimizer is fused. A checkpoint written with a plain one (on the CPU, say)
    switched that off in the resumed run, and with fp16 loss scaling its first step failed:
    "Expected grad_scale and found_inf to be None"."""
    from cnnbench import engine

    loader, written = tiny_loader(10), tiny_trainer(torch.float16)
    written.train_one_epoch(loader)
    state = {"model": written.model.state_dict(), "optimizer": written.optimizer.state_dict(), "scheduler": None,
             "scaler": written.scaler.state_dict(), "loader": loader.state_dict(), "rng": {"torch": torch.get_rng_state(), "cuda": []}}
    resumed = tiny_trainer(torch.float16, fused=True)
    engine.restore(state, resumed, loader, "last.pt")
    assert resumed.optimizer.param_groups[0]["fused"] is True
    assert resumed.optimizer.param_groups[0]["momentum"] == 0.9 and resumed.optimizer.state  # the rest is the checkpoint's
    assert math.isfinite(resumed.train_one_epoch(loader)["train_loss"])


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_is_bf16_where_the_gpu_computes_in_it(monkeypatch, native, expected):
    """Before Ampere (a T4, a V100) bf16 is only emulated: slow, where fp16 has tensor cores."""
    from cnnbench.engine import autocast_dtype

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0) if native else (7, 5))
    assert autocast_dtype("auto", torch.device("cuda", 1)) == expected
    assert autocast_dtype("bf16", torch.device("cuda")) == torch.bfloat16  # as chosen
    assert autocast_dtype("auto", torch.device("cpu")) is None


def test_cuda_peak_memory_leaves_out_the_dataset_held_on_the_gpu(monkeypatch):
    """At 224 px the resized dataset takes 3.5 GB of the GPU: not what the model needs."""
    from cnnbench import data, engine

    train = tiny_loader(10)
    test = data.DeviceLoader(data.Split(train.split.images[:20], train.split.labels[:20]), 10, (4, 4))  # views: counted once
    assert data.held_on(torch.device("cpu"), train, test) == 50 * 16 + 50 * 8  # uint8 images, int64 labels
    assert data.held_on(torch.device("cuda"), train, test) == 0
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**20)
    monkeypatch.setattr(engine, "held_on", lambda device, *loaders: data.held_on(torch.device("cpu"), *loaders))
    assert engine.peak_memory_mb(torch.device("cuda"), train, test) == pytest.approx(3 - 1200 / 2**20)


def test_cublas_gets_its_deterministic_workspace_before_any_run():
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once per process: set at a deterministic job's start,
    after an earlier job had used cuBLAS, it changed nothing. So importing cnnbench sets it."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    code = "import os, cnnbench.engine; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == ":4096:8"


def test_the_compiled_step_uses_cuda_graphs_on_one_gpu_and_not_under_ddp(monkeypatch):
    """DistributedDataParallel with CUDA graph trees has open upstream bugs (pytorch#113809,
    #139207): under torchrun the step is compiled without graphs. Built only: no GPU runs here."""
    from cnnbench import distributed, engine

    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, **kwargs: modes.append(mode) or fn)

    def trainer(device: str, world=distributed.World(), compile=True):
        model = torch.nn.Linear(2, 2)
        return engine.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device(device), world=world, compile=compile)

    assert trainer("cuda")._graphs and modes == ["reduce-overhead"]
    assert not trainer("cuda", distributed.World(rank=1, local_rank=1, size=2, distributed=True))._graphs and modes[-1] is None
    assert not trainer("cpu")._graphs and modes[-1] is None
    assert not trainer("cuda", compile=False)._graphs and len(modes) == 3


def test_a_busy_machine_is_told_about_trainer_threads_once(monkeypatch, caplog):
    """A newcomer's run beside a test suite trained 20x slower with a thread per core, and nothing said why."""
    from cnnbench import engine

    def machine(load: float, others: int) -> None:
        monkeypatch.setattr(engine, "_busy_told", [])
        monkeypatch.setattr(engine, "_load", lambda: (load, others))
        caplog.clear()

    monkeypatch.setattr(engine, "_default_threads", [2])
    machine(1.6, 2)
    engine.tell_if_busy(1, "cpu")  # threads chosen: nothing to say
    engine.tell_if_busy(None, "cpu")
    engine.tell_if_busy(None, "cpu")  # once per process: a sweep's later jobs say it no more
    assert caplog.text.count("other work keeps this machine busy (load average 1.6 over the last minute, 2 other threads "
                             "runnable, 2 cores)") == 1
    assert "trainer.threads=1 can train several times faster" in caplog.text
    for idle in ((0.3, 2), (1.6, 0)):  # an idle machine; one whose load is the run that has just ended
        machine(*idle)
        engine.tell_if_busy(None, "cpu")
        assert "busy" not in caplog.text
    load, others = engine._load()  # read from this machine: a load average and a count
    assert load >= 0 and others >= 0


def test_a_diverged_epoch_is_not_a_steady_one():
    """Its time (NaN arithmetic, no evaluation) would stand for the run's epoch time in the table."""
    from cnnbench.tasks import _results

    rows = [{"epoch": e, "epoch_time_s": t, "test_acc": acc, "train_loss": 1.0, "train_acc": 0.5, "peak_mem_mb": 1.0}
            for e, t, acc in ((1, 3.0, 0.5), (2, 1.2, 0.6), (3, 1.4, 0.7), (4, 0.04, math.nan))]
    assert _results(rows)["steady_epoch_time_s"] == pytest.approx(1.3)  # epochs 2 and 3, not 0.04
    assert _results(rows[3:])["steady_epoch_time_s"] == pytest.approx(0.04)  # nothing else to go by
