"""The measurement tasks: layer tables, FLOPs, memory, throughput, minimum input size."""
from __future__ import annotations

import json
import logging
import math

import pandas as pd
import pytest
import torch
from torch import nn

from cnnbench import analysis
from cnnbench.models import create_model, get_spec, list_models
from cnnbench.models.registry import accepts_input
from cnnbench.train import run


@pytest.mark.parametrize("name", list_models())
def test_layer_table_adds_up(name):
    side = get_spec(name).resolution
    rows = analysis.layer_table(name, (side, side))
    with torch.device("meta"):  # shapes and counts only
        model = create_model(name)
    assert sum(r["params"] for r in rows) == sum(p.numel() for p in model.parameters())
    assert sum(r["flops"] for r in rows) == analysis.count_flops(name, (side, side))
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    assert sorted(r["layer"] for r in rows) == sorted(leaves)  # every leaf once (rows in forward order)


def test_alexnet_dense_layers_hold_the_parameters_convolutions_the_flops():
    split = analysis.split_by_kind(analysis.layer_table("alexnet", (224, 224)))
    assert split["params_linear"] > 10 * split["params_conv"]  # 43.0M against 3.7M
    assert split["flops_conv"] > 10 * split["flops_linear"]  # 1.79 GFLOPs against 0.09


@pytest.mark.parametrize("name, side", [("alexnet", 224), ("regnetx32", 96), ("googlenet", 96)])
def test_conv_flops_match_the_closed_form(name, side):
    rows = {r["layer"]: r for r in analysis.layer_table(name, (side, side))}
    convs = {n: m for n, m in create_model(name).named_modules() if isinstance(m, nn.Conv2d)}
    assert convs
    for layer, conv in convs.items():
        c_out, h_out, w_out = map(int, rows[layer]["output_shape"].split("x"))
        k = conv.kernel_size[0] * conv.kernel_size[1]
        # 2 * Cin * Cout * k * k * Hout * Wout, with Cin per group for grouped convolutions
        assert rows[layer]["flops"] == 2 * (conv.in_channels // conv.groups) * c_out * k * h_out * w_out, layer


def test_memory_training_exceeds_prediction_and_counts_optimizer_state(make_cfg):
    sgd = make_cfg().optimizer
    plain = analysis.memory_estimate("alexnet", (224, 224), 64, sgd)
    assert plain["train_memory_mb"] > plain["infer_memory_mb"] > plain["params_mb"]
    assert plain["optimizer_state_mb"] == 0
    assert plain["params_mb"] == pytest.approx(46_764_746 * 4 / 2**20)
    momentum = analysis.memory_estimate("alexnet", (224, 224), 64, make_cfg("optimizer.momentum=0.9").optimizer)
    assert momentum["optimizer_state_mb"] == pytest.approx(plain["params_mb"])
    adam = analysis.memory_estimate("alexnet", (224, 224), 64, make_cfg("optimizer=adam").optimizer)
    assert adam["optimizer_state_mb"] == pytest.approx(2 * plain["params_mb"])
    # activations grow linearly with the batch
    double = analysis.memory_estimate("alexnet", (224, 224), 128, sgd)
    assert double["activations_mb"] == pytest.approx(2 * plain["activations_mb"], rel=1e-3)


def test_saved_activations_match_a_real_backward_pass():
    """The meta-device count equals what autograd saves on the CPU for a real batch."""
    model = create_model("bn_lenet").train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.rand(32, 1, 28, 28)).sum().backward()
    sgd = {"_target_": "torch.optim.SGD", "lr": 0.1}
    estimate = analysis.memory_estimate("bn_lenet", (28, 28), 32, sgd)
    assert estimate["activations_mb"] == pytest.approx(sum(saved.values()) / 2**20)


def test_summary_task_writes_layers_csv(make_cfg, tmp_path):
    summary = run(make_cfg("task=summary", "model=alexnet"), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    layers = pd.read_csv(tmp_path / "layers.csv")
    assert list(layers.columns) == ["layer", "type", "kind", "output_shape", "params", "activation_kb", "flops"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["params"] == layers["params"].sum() == 46_764_746
    assert saved["params_conv"] + saved["params_linear"] == saved["params"]
    assert saved["train_memory_mb"] > saved["infer_memory_mb"]
    assert not (tmp_path / "metrics.csv").exists()
    assert not (tmp_path / "layers.png").exists()  # trainer.plot=false (the tests' default)


def test_layers_png_answers_which_layers_dominate(make_cfg, tmp_path):
    from cnnbench.metrics import LAYERS_SHOWN, dominant_layers

    summary = run(make_cfg("task=summary", "model=alexnet", "trainer.plot=true"), tmp_path / "alexnet")
    assert summary["status"] == "completed" and (tmp_path / "alexnet" / "layers.png").stat().st_size > 10_000
    rows = pd.read_csv(tmp_path / "alexnet" / "layers.csv").to_dict("records")
    shown = dominant_layers(rows)  # AlexNet's 8 weighted layers, all shown, in forward order
    assert [r["layer"] for r in shown] == [r["layer"] for r in rows if r["params"] or r["flops"]]
    assert max(shown, key=lambda r: r["params"])["layer"] == "head.0"  # the first dense layer: 56% of the parameters
    deep = analysis.layer_table("resnet50", (96, 96))
    shown = dominant_layers(deep)
    assert len(shown) == LAYERS_SHOWN and shown[-1]["kind"] == "summed"
    assert sum(r["params"] for r in shown) == sum(r["params"] for r in deep)  # nothing lost, the rest summed
    assert sum(r["flops"] for r in shown) == sum(r["flops"] for r in deep)


def test_bench_times_the_training_step_that_train_runs(make_cfg, tiny_data, tmp_path, monkeypatch):
    """task=bench calls Trainer.step, the step task=train runs (clipping and the per-step
    schedule included), once per warm-up and timed step."""
    from cnnbench import engine

    calls = []
    step = engine.Trainer.step
    monkeypatch.setattr(engine.Trainer, "step", lambda self, x, y: calls.append((self.grad_clip, len(y))) or step(self, x, y))
    cfg = make_cfg("task=bench", "model=lenet", f"data.root={tiny_data}", "bench.batch_sizes=[4,8]", "bench.steps=2",
                   "bench.warmup_steps=1", "trainer.grad_clip=0.5", "scheduler=cosine")
    assert run(cfg, tmp_path)["status"] == "completed"
    assert calls == [(0.5, 4)] * 3 + [(0.5, 8)] * 3


def test_bench_task_writes_a_row_per_batch_size_and_mode(make_cfg, tiny_data, tmp_path, caplog):
    cfg = make_cfg("task=bench", "model=lenet", f"data.root={tiny_data}", "bench.batch_sizes=[4,16]", "bench.steps=2", "bench.warmup_steps=1",
                   "trainer.plot=true", "trainer.precision=bf16", "trainer.channels_last=true")
    caplog.set_level(logging.INFO, logger="cnnbench")
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    # what was measured says how it computed: the log, summary.json (and the plot's title)
    assert "on cpu in bf16, channels_last: 1 warm-up and 2 timed steps" in caplog.text
    assert {k: summary[k] for k in ("precision", "channels_last", "compiled", "deterministic")} == \
        {"precision": "bf16", "channels_last": True, "compiled": False, "deterministic": False}
    bench = pd.read_csv(tmp_path / "bench.csv")
    assert list(bench.columns) == ["batch_size", "mode", "images_per_s", "step_time_ms", "peak_mem_mb", "status", "estimated_mem_mb"]
    est = bench.set_index(["batch_size", "mode"]).estimated_mem_mb
    assert est[(16, "train")] > est[(4, "train")] > est[(4, "infer")]
    assert list(zip(bench.batch_size, bench["mode"])) == [(4, "train"), (4, "infer"), (16, "train"), (16, "infer")]
    assert (bench.images_per_s > 0).all() and (bench.status == "completed").all()
    # images/s is the batch over the median step time
    assert bench.images_per_s.tolist() == pytest.approx((bench.batch_size / bench.step_time_ms * 1e3).tolist())
    assert (tmp_path / "bench.png").stat().st_size > 10_000


def test_bench_records_out_of_memory_and_goes_on(make_cfg, tiny_data, tmp_path, monkeypatch):
    from cnnbench import tasks

    real = tasks._bench_one

    def fake(cfg, device, size, knobs, split, batch_size, *args):
        if batch_size == 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(cfg, device, size, knobs, split, batch_size, *args)

    monkeypatch.setattr(tasks, "_bench_one", fake)
    cfg = make_cfg("task=bench", "model=lenet", f"data.root={tiny_data}", "bench.batch_sizes=[4,8,16]", "bench.steps=1", "bench.warmup_steps=0")
    assert run(cfg, tmp_path)["status"] == "completed"
    bench = pd.read_csv(tmp_path / "bench.csv")
    assert bench.status.tolist() == ["completed", "completed", "oom", "oom", "completed", "completed"]
    assert math.isnan(bench.images_per_s[2]) and bench.images_per_s[4] > 0


@pytest.mark.parametrize("name, smallest", [("alexnet", 65), ("vgg11", 32)])
def test_min_size_finds_the_hard_limit(make_cfg, tmp_path, name, smallest):
    summary = run(make_cfg("task=min_size", f"model={name}"), tmp_path)
    assert summary["status"] == "completed", summary.get("error")
    assert summary["min_size"] == smallest
    assert accepts_input(name, smallest) and not accepts_input(name, smallest - 1)
    stages = pd.read_csv(tmp_path / "stages.csv")
    assert stages.stage.iloc[0].startswith("features.0")


def test_min_size_reports_where_googlenet_collapses(make_cfg, tmp_path):
    summary = run(make_cfg("task=min_size", "model=googlenet"), tmp_path)
    # any input works (padding keeps every map at least 1x1), but below 33 px the last stage is 1x1
    assert summary["min_size"] == 1 and summary["no_collapse_size"] == 33
    stages = pd.read_csv(tmp_path / "stages.csv")
    assert stages.shape_at_no_collapse_size.iloc[-1] == "1024x2x2"
    assert stages.shape_at_min_size.iloc[-1] == "1024x1x1"
    assert analysis.min_size_report("googlenet")[0]["no_collapse_size"] == 33
    last = analysis.meta_model("googlenet", (32, 32)).features
    assert last(torch.empty(1, 1, 32, 32, device="meta")).shape[-2:] == (1, 1)


@pytest.mark.parametrize("measured, lines", [(True, ["train, measured peak", "train, estimate", "infer, measured peak", "infer, estimate"]),
                                             (False, ["train, estimate", "infer, estimate"])])
def test_bench_png_draws_a_measured_peak_only_where_it_means_the_batch(tmp_path, monkeypatch, measured, lines):
    # a CPU's peak resident memory is the whole process's and only grows: there the estimate stands alone
    from cnnbench import metrics

    drawn = {}
    monkeypatch.setattr(metrics, "save_figure", lambda fig, path: drawn.update(fig=fig))
    rows = [{"batch_size": b, "mode": m, "images_per_s": 1.0, "peak_mem_mb": 800.0, "estimated_mem_mb": b / 10, "status": "completed"}
            for b in (4, 8) for m in ("train", "infer")]
    metrics.plot_bench(rows, tmp_path / "bench.png", "t", measured=measured)
    memory = drawn["fig"].axes[1]
    assert [line.get_label() for line in memory.get_lines()] == lines
    assert memory.get_title() == ("memory" if measured else "estimated memory")
