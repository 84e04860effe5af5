"""A whole one-epoch BN-LeNet run, as a process, timed from the shell: a book-style script
against the ``cnnbench`` command.

Both start a fresh Python process, read Fashion-MNIST at 28 px, train BN-LeNet (the same
network, initialisation, SGD at lr 0.1, batch 128) for one epoch and evaluate it on the 10,000
test images; both pay the same imports of torch. The book-style script is d2l's loop: torchvision's
dataset with a per-image ``Resize`` + ``ToTensor``, DataLoaders with 4 workers, a host sync every
step. cnnbench also writes its metrics, summary.json and learning-curve plot. The two alternate;
the medians of ``--repeats`` runs are compared.

    python benchmarks/whole_run.py [--repeats 3]
    python benchmarks/whole_run.py --book   # the book-style run by itself
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH, LR = 128, 0.1


def book_run(limit: int | None = None) -> None:
    """d2l's pipeline and loop, one epoch (``limit`` steps of it), then the test accuracy."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    from cnnbench import data
    from cnnbench.models import create_model

    root = str(data.locate(None, download=False))
    tf = transforms.Compose([transforms.Resize((28, 28)), transforms.ToTensor()])
    train = DataLoader(datasets.FashionMNIST(root, train=True, transform=tf), BATCH, shuffle=True, num_workers=4)
    test = DataLoader(datasets.FashionMNIST(root, train=False, transform=tf), BATCH, num_workers=4)
    torch.manual_seed(0)
    model = create_model("bn_lenet")
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model.train()
    for step, (x, y) in enumerate(train):
        if step == limit:
            break
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # d2l's trainer plots every step's loss: a host sync
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in test)
    print(f"test accuracy {correct / 10_000:.4f}")


def floor_run(limit: int | None = None) -> None:
    """The least a whole run can cost: imports, tensors in memory, the model's arithmetic, exit."""
    import torch
    from torch import nn

    from cnnbench import data
    from cnnbench.models import create_model

    train, test = data.load(None, download=False)
    torch.manual_seed(0)
    model = create_model("bn_lenet")
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    x_train, x_test = train.images.unsqueeze(1).float() / 255, test.images.unsqueeze(1).float() / 255
    model.train()
    for step, batch in enumerate(torch.randperm(len(train)).split(BATCH)):
        if step == limit:
            break
        loss = nn.functional.cross_entropy(model(x_train[batch]), train.labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in zip(x_test.split(1000), test.labels.split(1000)))
    print(f"test accuracy {correct / 10_000:.4f}")


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--book", action="store_true", help="run the book-style script (what the comparison times)")
    parser.add_argument("--floor", action="store_true", help="run the floor (imports, tensors, the bare loop) by itself")
    parser.add_argument("--limit", type=int, default=None, help="with --book or --floor: training steps (a quick check)")
    args = parser.parse_args()
    if args.book:
        return book_run(args.limit)
    if args.floor:
        return floor_run(args.limit)
    times: dict[str, list[float]] = {"book": [], "cnnbench": [], "floor": []}
    with tempfile.TemporaryDirectory() as out:
        for repeat in range(args.repeats):
            times["book"].append(timed([sys.executable, __file__, "--book"]))
            run_dir = Path(out) / str(repeat)
            times["cnnbench"].append(timed([sys.executable, "-m", "cnnbench", "model=bn_lenet", "data.resize=28",
                                            "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"]))
            times["floor"].append(timed([sys.executable, __file__, "--floor"]))
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    book, ours, floor = (statistics.median(times[k]) for k in ("book", "cnnbench", "floor"))
    print(f"\nwhole process, one BN-LeNet epoch at 28 px + evaluation, median of {args.repeats}: "
          f"book-style {book:.2f} s, cnnbench {ours:.2f} s -> cnnbench is {book / ours:.2f}x faster; "
          f"the floor (imports and the bare loop) {floor:.2f} s -> no pipeline can be more than {book / floor:.2f}x faster")


if __name__ == "__main__":
    main()
