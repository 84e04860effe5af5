"""Training throughput of the book's nine runs: the book's pipeline, cnnbench's, and pure compute.

For each ``d2l_<model>`` recipe (the book's model, resolution, batch size 128, SGD at the book's
learning rate), in one process and on one device:

- ``book``: the book's pipeline: torchvision's dataset with a per-image ``Resize`` + ``ToTensor``,
  a DataLoader with ``--workers`` workers, an fp32 model, a host sync every step (d2l's trainer
  reads every step's loss to plot it);
- ``cnnbench``: the run's own pipeline and trainer, as ``cnnbench experiment=d2l_<model>``
  trains (device-resident uint8 data, on-device resize; precision, channels_last and compile
  from the trainer config, overridable on the command line);
- ``synthetic``: the same trainer fed one batch already on the device, over and over: the
  model's pure compute, which the real pipeline can at best reach.

Each pipeline trains ``--epochs`` epochs after one warm-up epoch (timed apart: it includes
compilation and autotuning); clocks are read after synchronising the device; the table
quotes medians. ``--limit-batches`` shortens every epoch (for CPUs). Model FLOP utilisation
is the training FLOPs (3x the forward FLOPs from torch's FLOP counter) per second against the
GPU's dense bf16 peak.

    python benchmarks/chapter_speed.py                            # all nine, on the GPU if any
    python benchmarks/chapter_speed.py --models bn_lenet,resnet18 --limit-batches 20
    python benchmarks/chapter_speed.py trainer.compile=true trainer.channels_last=true
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from cnnbench import data
from cnnbench.analysis import count_flops
from cnnbench.config import model_knobs, resolution
from cnnbench.engine import autocast_dtype, build_trainer, resolve_device, synchronize
from cnnbench.models import create_model
from cnnbench.train import CONF_DIR

BOOK_RUNS = ["alexnet", "vgg11", "nin", "googlenet", "bn_lenet_scratch", "bn_lenet", "resnet18", "densenet", "regnetx32"]
# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets, by device-name substring.
BF16_PEAK = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


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


def cnnbench_pipelines(cfg, device: torch.device, size):
    """The run's trainer on its real loader, and on one device-resident batch repeated."""
    train_split, test_split = data.load(cfg.data.root, cfg.data.download)
    loader, _ = data.build_loaders(cfg, train_split, test_split, size, device)
    trainer = build_trainer(cfg, device, size, model_knobs(cfg), len(loader))
    x, y = next(iter(loader))
    fixed = [(x, y)] * len(loader)  # what train_one_epoch iterates: the same batch, len(loader) times

    def on(batches):
        def epoch() -> tuple[float, float]:
            stats = trainer.train_one_epoch(batches)
            return stats["epoch_time_s"], stats["train_images_per_s"]
        return epoch

    return on(loader), on(fixed)


def measure(name: str, overrides: list[str], args) -> list[dict]:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        limit = [f"trainer.limit_train_batches={args.limit_batches}"] if args.limit_batches else []
        cfg = compose("config", overrides=[f"experiment=d2l_{name}", "trainer.progress=false", *limit, *overrides])
    device = resolve_device(cfg.trainer.device)
    size = resolution(cfg)
    train_flops = 3 * count_flops(cfg.model.name, size, **model_knobs(cfg))
    peak = bf16_peak(device)
    real, synthetic = cnnbench_pipelines(cfg, device, size)
    pipelines = {"cnnbench": real, "synthetic": synthetic,
                 "book": book_pipeline(cfg, device, size, args.workers, args.limit_batches)}
    rows = []
    for pipeline, epoch in pipelines.items():
        (warm_s, _), steady = epoch(), [epoch() for _ in range(args.epochs)]
        seconds = statistics.median(s for s, _ in steady)
        images_per_s = statistics.median(rate for _, rate in steady)
        rows.append({
            "model": name, "pipeline": pipeline, "resolution": size[0], "batch_size": cfg.data.batch_size,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
            "precision": "fp32" if pipeline == "book" else str(autocast_dtype(cfg.trainer.precision, device) or "fp32"),
            "channels_last": pipeline != "book" and cfg.trainer.channels_last,
            "compile": pipeline != "book" and cfg.trainer.compile,
            "torch": torch.__version__, "first_epoch_s": warm_s, "epoch_s": seconds, "images_per_s": images_per_s,
            "mfu": images_per_s * train_flops / peak if peak else None,
        })
        print(f"{name:16s} {pipeline:9s} first epoch {warm_s:7.2f} s   median epoch {seconds:7.2f} s   "
              f"{images_per_s:9.0f} img/s", flush=True)
    return rows


def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """One row per model: the three throughputs, cnnbench's speed-up over the book's pipeline,
    the share of pure compute the real pipeline reaches, and the MFU."""
    wide = df.pivot(index="model", columns="pipeline", values="images_per_s")
    out = pd.DataFrame({
        "book_img_s": wide["book"], "cnnbench_img_s": wide["cnnbench"], "synthetic_img_s": wide["synthetic"],
        "speedup": wide["cnnbench"] / wide["book"], "pipeline_share": wide["cnnbench"] / wide["synthetic"],
    })
    first = df[df.pipeline == "cnnbench"].set_index("model")
    out["first_epoch_s"] = first["first_epoch_s"]
    out["epoch_s"] = first["epoch_s"]
    out["mfu"] = first["mfu"]
    return out.reindex([m for m in BOOK_RUNS if m in out.index])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(BOOK_RUNS), help="comma-separated book runs (d2l_<model>)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per pipeline, after one warm-up epoch")
    parser.add_argument("--limit-batches", type=int, default=None, help="batches per epoch (default: all)")
    parser.add_argument("--workers", type=int, default=4, help="the book pipeline's DataLoader workers")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/chapter_speed.csv"))
    parser.add_argument("overrides", nargs="*", help="config overrides for cnnbench's runs, e.g. trainer.compile=true")
    args = parser.parse_args()
    models = args.models.split(",")
    unknown = set(models) - set(BOOK_RUNS)
    if unknown:
        parser.error(f"--models: {sorted(unknown)} are not book runs; choose from {', '.join(BOOK_RUNS)}")

    rows = [row for name in models for row in measure(name, args.overrides, args)]
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    summary = summarise(df)
    summary.to_csv(args.out.with_name(args.out.stem + "_summary.csv"))
    print(f"\n{df.device.iloc[0]}, torch {torch.__version__}, overrides: {' '.join(args.overrides) or '(none)'}")
    print(summary.to_string(float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
