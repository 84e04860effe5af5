"""Training throughput of the book's nine runs: the book's pipeline, cnnbench's eager and graphed
steps, and pure compute; kernel launches per step; compile start-up, cold and warm.

For each ``d2l_<model>`` recipe (the book's model, resolution, batch size 128, SGD at the book's
learning rate), in one process and on one device:

- ``book``: the book's pipeline: torchvision's dataset with a per-image ``Resize`` + ``ToTensor``,
  a DataLoader with ``--workers`` workers, an fp32 model, a host sync every step (d2l's trainer
  reads every step's loss to plot it), PyTorch's default backend switches (no cuDNN autotuning,
  full-fp32 matmuls), whatever cnnbench's own pipelines set;
- ``eager``: cnnbench's pipeline and trainer (device-resident uint8 data resized once, one host
  sync per epoch; precision and channels_last from the trainer config) with ``trainer.compile=false``;
- ``graphed``: the same with ``trainer.compile=true``: the step compiled by torch.compile, replayed
  as CUDA graphs on a GPU (its compilation is in the first, untimed epoch);
- ``synthetic``: the graphed trainer fed one batch already on the device, over and over: the
  model's pure compute, which the real pipeline can at best reach.

Each pipeline trains ``--epochs`` epochs after one warm-up epoch (timed apart); clocks are read
after synchronising the device; the table quotes medians. ``--limit-batches`` shortens every
epoch (for CPUs). Model FLOP utilisation is the training FLOPs (3x the forward FLOPs from torch's
FLOP counter) per second against the GPU's dense bf16 peak. ``launches`` counts, per training
step, the kernel launches the profiler sees (CUDA: runtime launch calls, a CUDA graph replay
counting one; CPU: the leaf operators run, ATen's or the compiled kernels). ``--start`` also
runs ``cnnbench`` twice per model in fresh processes on an empty compile cache: the first
compilation (cold) and the second (warm, from the on-disk cache).

    python benchmarks/chapter_speed.py                            # all nine, on the GPU if any
    python benchmarks/chapter_speed.py --models bn_lenet,resnet18 --limit-batches 20 --start
    python benchmarks/chapter_speed.py trainer.channels_last=false  # config overrides for cnnbench
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from cnnbench import data
from cnnbench.analysis import count_flops
from cnnbench.config import compose, enum_value, model_knobs, resolution
from cnnbench.engine import (
    Trainer,
    autocast_dtype,
    build_trainer,
    resolve_device,
    set_backends,
    synchronize,
)
from cnnbench.models import create_model

BOOK_RUNS = ["alexnet", "vgg11", "nin", "googlenet", "bn_lenet_scratch", "bn_lenet", "resnet18", "densenet", "regnetx32"]
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name substring.
BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def bf16_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK.items() if key in name), None)


def book_pipeline(cfg, device: torch.device, size, workers: int, limit: int | None):
    """One epoch of the book's pipeline; returns a function that trains it and gives its seconds
    and images/s."""
    root = data.locate(cfg.data.root, cfg.data.download)
    dataset = datasets.FashionMNIST(str(root), train=True,
                                    transform=transforms.Compose([transforms.Resize(size), transforms.ToTensor()]))
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model.name, image_size=size, **model_knobs(cfg)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)

    def epoch() -> tuple[float, float]:
        set_backends(deterministic=False)
        torch.backends.cudnn.benchmark = False  # the book's script leaves PyTorch's defaults: no autotuning,
        torch.set_float32_matmul_precision("highest")  # full-fp32 matmuls (convolutions may use TF32)
        torch.backends.cudnn.allow_tf32 = True
        model.train()
        seen = 0
        synchronize(device)
        start = time.perf_counter()
        for step, (x, y) in enumerate(loader):
            if limit is not None and step == limit:
                break
            x, y = x.to(device), y.to(device)
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the book's per-step host sync
            seen += len(y)
        synchronize(device)
        seconds = time.perf_counter() - start
        return seconds, seen / seconds

    return epoch


def on(trainer: Trainer, batches, cfg):
    """An epoch of ``trainer.train_one_epoch`` over ``batches``: (seconds, images/s), with the
    backend switches a cnnbench run sets (the book's epochs set PyTorch's defaults)."""
    def epoch() -> tuple[float, float]:
        set_backends(cfg.trainer.deterministic, enum_value(cfg.trainer.matmul_precision), cfg.trainer.threads)
        stats = trainer.train_one_epoch(batches)
        return stats["epoch_time_s"], stats["train_images_per_s"]
    return epoch


KINETO_LINE = re.compile(r"^(USDT|ERROR|WARNING|INFO):\d{4}-\d\d-\d\d .*\.cpp:\d+\]")  # "USDT:2026-11-29 ... X.cpp:39] profiler_start"


@contextlib.contextmanager
def kineto_lines_dropped():
    """The profiler's C++ side (Kineto) writes start/stop lines and, without a GPU, a device-count
    error straight to file descriptor 2, between the table's rows. Meanwhile fd 2 goes to a file;
    afterwards every other line written there (a warning of the profiled steps) is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not KINETO_LINE.match(line)]
            sys.stderr.write("".join(kept))


def launches_per_step(trainer: Trainer, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> float:
    """Kernel launches per training step, counted by the profiler after the step is warm."""
    from torch.profiler import ProfilerActivity, profile

    trainer.model.train()
    trainer.step(x, y)
    with kineto_lines_dropped(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.step(x, y)
        synchronize(trainer.device)
    events = prof.events()
    if trainer.device.type == "cuda":
        count = sum(e.name in LAUNCHES for e in events)
    else:  # leaf operators: ATen ops that call no other ATen op, and compiled (inductor) kernels
        count = sum((e.name.startswith("aten::") and not any(c.name.startswith("aten::") for c in e.cpu_children))
                    or "cpp_fused" in e.name for e in events)
    return count / steps


def measure(name: str, overrides: list[str], args) -> list[dict]:
    limit = [f"trainer.limit_train_batches={args.limit_batches}"] if args.limit_batches else []
    cfg = compose(f"experiment=d2l_{name}", "trainer.progress=false", *limit, *overrides)
    device = resolve_device(cfg.trainer.device)
    size = resolution(cfg)
    train_flops = 3 * count_flops(cfg.model.name, size, **model_knobs(cfg))
    peak = bf16_peak(device)
    train_split, test_split = data.load(cfg.data.root, cfg.data.download)
    loader, _ = data.build_loaders(cfg, train_split, test_split, size, device)
    x, y = next(iter(loader))
    pipelines, trainers = {"book": book_pipeline(cfg, device, size, args.workers, args.limit_batches)}, {}
    for mode, compiled in (("eager", False), ("graphed", True)):
        cfg.trainer.compile = compiled
        trainers[mode] = build_trainer(cfg, device, size, model_knobs(cfg), len(loader))
        pipelines[mode] = on(trainers[mode], loader, cfg)
    pipelines["synthetic"] = on(trainers["graphed"], [(x, y)] * len(loader), cfg)  # the same batch, len(loader) times
    rows = []
    for pipeline, epoch in pipelines.items():
        (warm_s, _), steady = epoch(), [epoch() for _ in range(args.epochs)]
        seconds = statistics.median(s for s, _ in steady)
        images_per_s = statistics.median(rate for _, rate in steady)
        trainer = trainers["graphed"] if pipeline == "synthetic" else trainers.get(pipeline)  # the book row has none
        rows.append({
            "model": name, "pipeline": pipeline, "resolution": size[0], "batch_size": cfg.data.batch_size,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "precision": "fp32" if pipeline == "book" else str(autocast_dtype(cfg.trainer.precision, device) or "fp32"),
            "channels_last": bool(trainer and trainer.channels_last), "compiled": bool(trainer and trainer.compile),
            "torch": torch.__version__, "first_epoch_s": warm_s, "epoch_s": seconds, "images_per_s": images_per_s,
            "compile_s": trainer.compile_s if trainer else None,
            "launches_per_step": launches_per_step(trainer, x, y) if trainer else None,
            "mfu": images_per_s * train_flops / peak if peak else None,
        })
        print(f"{name:16s} {pipeline:9s} first epoch {warm_s:7.2f} s   median epoch {seconds:7.2f} s   "
              f"{images_per_s:9.0f} img/s", flush=True)
    if args.start:
        for row, (kind, seconds) in zip(rows[:2], start_up(name, overrides).items()):
            row[f"compile_{kind}_s"] = seconds  # on the book and eager rows: one value per model
    return rows


def start_up(name: str, overrides: list[str]) -> dict[str, float]:
    """The compilation time (summary.json's compile_s) of two fresh ``cnnbench`` processes on an
    empty compile cache: the first compiles (cold), the second reads the cache (warm)."""
    out = {}
    # this process's own compilations pointed inductor at the usual cache: the children must not inherit it
    fresh = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHINDUCTOR_", "TRITON_"))}
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as runs:
        for kind in ("cold", "warm"):
            run_dir = Path(runs) / kind
            fixed = [f"experiment=d2l_{name}", "trainer.compile=true", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                     "trainer.limit_test_batches=1", "trainer.plot=false", f"hydra.run.dir={run_dir}"]
            given = {o.lstrip("+~").partition("=")[0] for o in overrides}  # cnnbench refuses a key given twice: the user's wins
            subprocess.run([sys.executable, "-m", "cnnbench", *[f for f in fixed if f.partition("=")[0] not in given], *overrides],
                           env=fresh | {"CNNBENCH_CACHE": cache}, capture_output=True, check=True)
            out[kind] = json.loads((run_dir / "summary.json").read_text())["compile_s"]
    return out


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: the throughputs, the graphed pipeline's speed-up over the book's and
    over eager, the share of pure compute it reaches, launches per step, compile time and MFU."""
    wide = df.pivot(index="model", columns="pipeline", values="images_per_s")
    launches = df.pivot(index="model", columns="pipeline", values="launches_per_step")
    graphed = df[df.pipeline == "graphed"].set_index("model")
    out = pd.DataFrame({
        "book_img_s": wide["book"], "eager_img_s": wide["eager"], "graphed_img_s": wide["graphed"],
        "synthetic_img_s": wide["synthetic"], "speedup": wide["graphed"] / wide["book"],
        "graphed_vs_eager": wide["graphed"] / wide["eager"], "pipeline_share": wide["graphed"] / wide["synthetic"],
        "eager_launches": launches["eager"], "graphed_launches": launches["graphed"],
        "compile_s": graphed["compile_s"], "epoch_s": graphed["epoch_s"], "mfu": graphed["mfu"],
    })
    for col in ("compile_cold_s", "compile_warm_s"):
        if col in df:
            out[col] = df.dropna(subset=[col]).set_index("model")[col]
    return out.reindex([m for m in BOOK_RUNS if m in out.index])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(BOOK_RUNS), help="comma-separated book runs (d2l_<model>)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline, after one warm-up epoch")
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (default: all)")
    parser.add_argument("--workers", type=int, default=4, help="the book pipeline's DataLoader workers")
    parser.add_argument("--start", action="store_true", help="also time cold and warm compilation in fresh processes")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/chapter_speed.csv"))
    parser.add_argument("overrides", nargs="*", help="config overrides for cnnbench's runs, e.g. trainer.channels_last=false")
    args = parser.parse_args()
    models = args.models.split(",")
    unknown = set(models) - set(BOOK_RUNS)
    if unknown:
        parser.error(f"--models: {sorted(unknown)} are not book runs; choose from {', '.join(BOOK_RUNS)}")

    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in models:  # both tables after every model: a run stopped part-way keeps what it measured
        rows += measure(name, args.overrides, args)
        df = pd.DataFrame(rows)
        df.to_csv(args.out, index=False)
        summary = summarise(df)
        summary.to_csv(args.out.with_name(args.out.stem + "_summary.csv"))
    print(f"\n{df.device.iloc[0]}, torch {torch.__version__}, overrides: {' '.join(args.overrides) or '(none)'}")
    print(readable(summary).to_string())


def readable(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as text to read: rates as whole images/s with thousands separators, ratios to
    two decimals, seconds to one, MFU in percent, "-" where nothing was measured."""
    def cell(column: str, value) -> str:
        if value is None or pd.isna(value):
            return "-"
        if column.endswith("img_s") or column.endswith("launches"):
            return f"{value:,.0f}"
        if column == "mfu":
            return f"{100 * value:.1f}%"
        if column.endswith("_s"):
            return f"{value:.1f}" if value >= 1 else f"{value:.2f}"
        return f"{value:.2f}x" if column in ("speedup", "graphed_vs_eager") else f"{value:.2f}"
    return pd.DataFrame({c: [cell(c, v) for v in summary[c]] for c in summary.columns}, index=summary.index)


if __name__ == "__main__":
    main()
