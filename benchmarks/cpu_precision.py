"""CPU training steps of the book's models in four settings: what ``trainer.precision=auto`` and
the optimizer's ``foreach`` gain on this CPU, and what ``trainer.channels_last`` would.

For each ``d2l_<model>`` recipe (the book's model and resolution; ``--batch`` images a step), one
process builds cnnbench's trainer (``engine.build_trainer``) four ways and times its training step
(``analysis.measure_steps``, the step ``task=train`` runs) on the training images:

- ``fp32 loop``: plain fp32, the optimizer looping over the parameters (torch's CPU default);
- ``fp32``: plain fp32, the optimizer's ``foreach`` step (cnnbench's CPU default; the same numbers);
- ``bf16``: bf16 autocast (``trainer.precision=auto`` on a CPU with AMX);
- ``bf16 + cl``: bf16 autocast with ``trainer.channels_last=true``.

The four alternate for ``--rounds`` rounds of ``--steps`` steps; the table quotes medians and the
speed-up of each over ``fp32 loop``.

    python benchmarks/cpu_precision.py                        # the nine book runs, batch 32
    python benchmarks/cpu_precision.py --models bn_lenet --batch 128 --steps 20
"""
from __future__ import annotations

import argparse
import statistics

import torch

from cnnbench import data
from cnnbench.analysis import measure_steps
from cnnbench.config import compose, model_knobs, resolution
from cnnbench.engine import build_trainer, cpu_computes_bf16, set_backends

BOOK_RUNS = ["alexnet", "vgg11", "nin", "googlenet", "bn_lenet_scratch", "bn_lenet", "resnet18", "densenet", "regnetx32"]
SETTINGS = {
    "fp32 loop": ["trainer.precision=fp32", "+optimizer.foreach=false"],
    "fp32": ["trainer.precision=fp32"],
    "bf16": ["trainer.precision=bf16"],
    "bf16 + cl": ["trainer.precision=bf16", "trainer.channels_last=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(BOOK_RUNS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    set_backends(deterministic=False)
    print(f"CPU: {torch.get_num_threads()} threads, bf16 matrix units (AMX): {cpu_computes_bf16()}, torch {torch.__version__}\n")
    print(f"| model | px | batch | {' | '.join(f'{s} ms/step' for s in SETTINGS)} | {' | '.join(f'{s} speed-up' for s in list(SETTINGS)[1:])} |")
    print("|---|---|---|" + "---|" * (2 * len(SETTINGS) - 1))
    train, _ = data.load(None, download=False)
    for name in args.models.split(","):
        base = [f"experiment=d2l_{name}", f"data.batch_size={args.batch}", "trainer.device=cpu", "trainer.compile=false"]
        cfgs = {label: compose(*base, *extra) for label, extra in SETTINGS.items()}
        size = resolution(cfgs["fp32"])
        images = data.Split(train.images[: args.batch * 4], train.labels[: args.batch * 4])
        loader = data.DeviceLoader(images, args.batch, size, shuffle=True)
        trainers = {label: build_trainer(cfg, torch.device("cpu"), size, model_knobs(cfg), len(loader))
                    for label, cfg in cfgs.items()}
        times: dict[str, list[float]] = {label: [] for label in SETTINGS}
        for _ in range(args.rounds):
            for label, trainer in trainers.items():
                times[label].append(measure_steps(trainer, loader, args.steps, warmup=1, train=True)["step_time_ms"])
        medians = {label: statistics.median(t) for label, t in times.items()}
        base_ms = medians["fp32 loop"]
        print(f"| {name} | {size[0]} | {args.batch} | " + " | ".join(f"{ms:.1f}" for ms in medians.values()) + " | "
              + " | ".join(f"{base_ms / medians[label]:.2f}x" for label in list(SETTINGS)[1:]) + " |", flush=True)


if __name__ == "__main__":
    main()
