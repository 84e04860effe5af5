"""CPU training steps of the book's models in three settings: fp32 (the CPU default), bf16
autocast (``trainer.precision=bf16``) and bf16 with ``trainer.channels_last=true``: whether this
CPU's bf16 instructions (Intel AMX matrix units, AVX512-BF16 where it has them) make a model
train faster.

For each ``d2l_<model>`` recipe (the book's model and resolution; another model with its own
defaults; ``--resize`` for another resolution; ``--batch`` images a step), one
process builds cnnbench's trainer (``engine.build_trainer``) three ways and times its training step
(``analysis.measure_steps``, the step ``task=train`` runs) on the training images. The three
alternate for ``--rounds`` rounds of ``--steps`` steps (after one warm-up step); the table quotes
medians and the speed-up of each over fp32.

    python benchmarks/cpu_precision.py                        # the nine book runs, batch 32
    python benchmarks/cpu_precision.py --models bn_lenet --batch 128 --steps 20
    python benchmarks/cpu_precision.py --models anynet_sample,resnet18 --resize 28
    python benchmarks/cpu_precision.py --models resnet18 trainer.threads=1   # config overrides for every setting
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from cnnbench import data
from cnnbench.analysis import measure_steps
from cnnbench.config import CONF_DIR, compose, enum_value, model_knobs, resolution
from cnnbench.engine import build_trainer, set_backends

BOOK_RUNS = ["alexnet", "vgg11", "nin", "googlenet", "bn_lenet_scratch", "bn_lenet", "resnet18", "densenet", "regnetx32"]
SETTINGS = {
    "fp32": ["trainer.precision=fp32"],
    "bf16": ["trainer.precision=bf16"],
    "bf16 + cl": ["trainer.precision=bf16", "trainer.channels_last=true"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--models", default=",".join(BOOK_RUNS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--resize", type=int, default=None, help="data.resize for every model (default: its own)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="cnnbench config overrides for every setting")
    args = parser.parse_args()
    def probe(name: str):  # torch's probes (private, hence the guard)
        return getattr(torch.cpu, name, lambda: None)()

    print(f"CPU: {os.cpu_count()} cores, bf16 matrix units (AMX): {probe('_is_amx_tile_supported')}, bf16 vector "
          f"instructions (AVX512-BF16): {probe('_is_avx512_bf16_supported')}, torch {torch.__version__}\n")
    print(f"| model | px | batch | {' | '.join(f'{s} ms/step' for s in SETTINGS)} | {' | '.join(f'{s} speed-up' for s in list(SETTINGS)[1:])} |")
    print("|---|---|---|" + "---|" * (2 * len(SETTINGS) - 1))
    train = None
    for name in args.models.split(","):
        recipe = f"experiment=d2l_{name}" if (CONF_DIR / "experiment" / f"d2l_{name}.yaml").is_file() else f"model={name}"
        base = [recipe, f"data.batch_size={args.batch}", "trainer.device=cpu", "trainer.compile=false",
                *([f"data.resize={args.resize}"] if args.resize else []), *args.overrides]
        cfgs = {label: compose(*base, *extra) for label, extra in SETTINGS.items()}
        if train is None:
            first = cfgs["fp32"].trainer
            train, _ = data.load(cfgs["fp32"].data.root, cfgs["fp32"].data.download)
            set_backends(first.deterministic, str(enum_value(first.matmul_precision)), first.threads)
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
        base_ms = medians["fp32"]
        print(f"| {name} | {size[0]} | {args.batch} | " + " | ".join(f"{ms:.1f}" for ms in medians.values()) + " | "
              + " | ".join(f"{base_ms / medians[label]:.2f}x" for label in list(SETTINGS)[1:]) + " |", flush=True)


if __name__ == "__main__":
    main()
