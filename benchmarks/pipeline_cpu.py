"""One training epoch of BN-LeNet at 28 px: the book's data pipeline against cnnbench's.

The book's pipeline (d2l.FashionMNIST + d2l.Trainer): torchvision's dataset with a
per-sample Resize + ToTensor, a DataLoader with 4 workers, and a host sync every step
(the trainer reads the loss to plot it). cnnbench: the uint8 dataset held as one tensor,
batches sliced from a seeded permutation and converted on the device, one sync per epoch.
Same model, initialisation, optimizer (SGD, lr 0.1) and batch size (128); the two
alternate, and the medians of ``--repeats`` epochs are compared.

    python benchmarks/pipeline_cpu.py [--repeats 3] [--out outputs/bench/pipeline_cpu.csv]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from cnnbench import data
from cnnbench.engine import Trainer
from cnnbench.models import create_model

BATCH, LR, MODEL = 128, 0.1, "bn_lenet"


def book_epoch(model: nn.Module, loader: DataLoader) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # d2l's trainer plots the loss of every step: a host sync
    return time.perf_counter() - start


def cnnbench_epoch(model: nn.Module, loader: data.DeviceLoader) -> float:
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=LR), torch.device("cpu"), progress=False)
    start = time.perf_counter()
    trainer.train_one_epoch(loader)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench/pipeline_cpu.csv"))
    args = parser.parse_args()

    root = data.locate(None, download=False)
    book_ds = datasets.FashionMNIST(str(root), train=True, transform=transforms.Compose([transforms.Resize((28, 28)), transforms.ToTensor()]))
    # torch warns when the workers outnumber the cores, at the loader's creation and every epoch: said once, here
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    book_loader = DataLoader(book_ds, batch_size=BATCH, shuffle=True, num_workers=4)
    print(f"the book's pipeline: 4 DataLoader workers, as d2l.FashionMNIST sets, on {os.cpu_count()} cores")
    train, _ = data.load(None, download=False)
    ours_loader = data.DeviceLoader(train, BATCH, (28, 28), shuffle=True)

    rows = []
    for repeat in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, epoch, loader in (("book", book_epoch, book_loader), ("cnnbench", cnnbench_epoch, ours_loader)):
            torch.manual_seed(0)
            seconds = epoch(create_model(MODEL), loader)
            if repeat:
                rows.append({"pipeline": name, "repeat": repeat, "epoch_s": seconds, "images_per_s": len(train) / seconds})
            print(f"{'warm-up' if not repeat else f'repeat {repeat}'}: {name:8s} {seconds:6.2f} s/epoch")

    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    med = {name: statistics.median(df[df.pipeline == name].epoch_s) for name in ("book", "cnnbench")}
    print(f"\nBN-LeNet, 28 px, batch {BATCH}, CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"median epoch: book pipeline {med['book']:.2f} s, cnnbench {med['cnnbench']:.2f} s "
          f"-> cnnbench is {med['book'] / med['cnnbench']:.2f}x faster ({args.repeats} epochs each)")


if __name__ == "__main__":
    main()
