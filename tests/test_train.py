"""Training through ``cnnbench.train.run`` with composed configs: learning, outputs, statuses."""
from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
import torch
from variants import KNOB_VARIANTS

from cnnbench.config import model_knobs
from cnnbench.metrics import COLUMNS
from cnnbench.models import list_models, min_input_size
from cnnbench.train import CONF_DIR, run


def read_run(out):
    return pd.read_csv(out / "metrics.csv"), json.loads((out / "summary.json").read_text())


def test_loss_goes_down_on_a_small_subset(make_cfg, real_data, tmp_path):
    cfg = make_cfg("data.subset=2048", "data.test_subset=1024", "data.batch_size=64", "trainer.max_epochs=4",
                   "optimizer.momentum=0.9", "optimizer.lr=0.05")
    summary = run(cfg, tmp_path)
    metrics, saved = read_run(tmp_path)
    assert summary["status"] == saved["status"] == "completed"
    assert list(metrics.columns) == COLUMNS
    assert metrics["epoch"].tolist() == [1, 2, 3, 4]
    assert metrics["train_loss"].iloc[-1] < 0.7 * metrics["train_loss"].iloc[0]
    assert metrics["test_acc"].iloc[-1] > 0.7  # ten classes: chance is 0.1
    assert saved["final_test_acc"] == pytest.approx(metrics["test_acc"].iloc[-1], abs=1e-6)
    assert saved["best_test_acc"] == pytest.approx(metrics["test_acc"].max(), abs=1e-6)
    assert saved["params"] == 44_878 and saved["flops"] > 0 and saved["device"] == "cpu"
    assert (tmp_path / "curves.png").stat().st_size > 10_000


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


# The networks the chapter trains; the smoke preset runs them at the chapter's resolution (VGG-11
# at 224 px is the slowest, about half a minute on 2 cores), every other model at a small size.
BOOK = {"lenet", "bn_lenet", "bn_lenet_scratch", "alexnet", "vgg11", "nin", "googlenet", "resnet18", "densenet", "regnetx32"}


@pytest.mark.parametrize("name", list_models())
def test_every_model_passes_the_smoke_preset(make_cfg, tiny_data, tmp_path, name):
    size = [] if name in BOOK else [f"data.resize={max(32, min_input_size(name))}"]
    summary = run(make_cfg(f"model={name}", "trainer=smoke", f"data.root={tiny_data}", *size), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert len(read_run(tmp_path)[0]) == 2


VARIANT_CONFIGS = sorted({p.stem for p in (CONF_DIR / "model").glob("*.yaml")} - set(list_models()))
SMOKE_VARIANTS = [[f"model={name}"] for name in VARIANT_CONFIGS] + [
    [f"model={option}", *(f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in knobs.items())]
    for option, knobs in KNOB_VARIANTS
]


@pytest.mark.parametrize("overrides", SMOKE_VARIANTS, ids=[" ".join(o) for o in SMOKE_VARIANTS])
def test_every_documented_variant_passes_the_smoke_preset(make_cfg, tiny_data, tmp_path, overrides):
    cfg = make_cfg(*overrides, "trainer=smoke", f"data.root={tiny_data}")
    side = max(32, min_input_size(cfg.model.name, **model_knobs(cfg)))
    summary = run(make_cfg(*overrides, "trainer=smoke", f"data.root={tiny_data}", f"data.resize={side}"), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert len(read_run(tmp_path)[0]) == 2


BAD_INPUTS = [
    ("model.name=resnet19", r"model.name='resnet19' is not a registered model \(did you mean resnet18 or .*\); available: alexnet, alexnet28"),
    ("model=alexnet data.resize=64", r"data.resize=64 \(64x64\) is too small for model alexnet: the smallest input it accepts is 65x65"),
    ("data.resize=[28,0]", r"data.resize=\[28, 0\] is not allowed; give a positive side"),
    ("optimizer.lr=0", r"optimizer.lr=0 is not allowed; the learning rate must be a positive number"),
    ("optimizer.lr=-0.1", r"optimizer.lr=-0.1 is not allowed"),
    ("data.batch_size=0", r"data.batch_size=0 is not allowed; it must be a positive integer"),
    ("trainer.max_epochs=0", r"trainer.max_epochs=0 is not allowed; it must be a positive integer"),
    ("model.norm=group", r"model.norm='group' is not allowed; choose one of: none, batch, scratch, mean_only, variance_only"),
    ("+model.depth=3", r"model.depth is not a knob of model bn_lenet; its knobs are: norm, norm_at, norm_affine, bias"),
    ("model.norm_at=head", r"model.norm_at='head' is not allowed; choose one of: none, conv, dense, all"),
    ("model=resnet50 model.groups=3", r"model.groups=3: the block's inner width 64 \(= 256 x bottleneck_ratio 0.25\) must be"),
    ("+optimizer.momentun=0.9", r"optimizer.momentun is not an argument of SGD; allowed: lr, momentum"),
    ("optimizer.momentum=-1", r"optimizer: SGD rejects its arguments: Invalid momentum value: -1"),
    ("optimizer.momentum=fast", r"optimizer.momentum='fast' is not allowed; SGD takes a finite number"),
    ("optimizer.nesterov=1", r"optimizer.nesterov=1 is not allowed; SGD takes true or false"),
    ("optimizer._target_=torch.nn.Linear", r"optimizer._target_='torch.nn.Linear' is not a torch.optim optimizer class"),
    ("trainer.diverge_loss=-1", r"trainer.diverge_loss=-1.0 is not allowed; use 0 \(only NaN/inf\) or a positive loss"),
    ("trainer.label_smoothing=1.5", r"trainer.label_smoothing=1.5 is not allowed; it must be in \[0, 1\)"),
    ("trainer.device=tpu", r"trainer.device='tpu' is not allowed; choose auto, cpu, cuda or cuda:N"),
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


@pytest.mark.slow
def test_compiled_model_trains(make_cfg, tiny_data, tmp_path):
    cfg = make_cfg("model=lenet", "trainer=smoke", f"data.root={tiny_data}", "trainer.compile=true", "data.drop_last=true")
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed", summary.get("error")


def test_a_new_run_in_an_old_dir_starts_fresh_files(make_cfg, tiny_data, tmp_path):
    cfg = make_cfg(f"data.root={tiny_data}", "trainer.max_epochs=2", "data.batch_size=32")
    run(cfg, tmp_path)
    run(make_cfg(f"data.root={tiny_data}", "trainer.max_epochs=1", "data.batch_size=32"), tmp_path)
    metrics, summary = read_run(tmp_path)
    assert metrics["epoch"].tolist() == [1] and summary["epochs_completed"] == 1
