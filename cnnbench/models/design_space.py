"""Design spaces (d2l 8.8; Radosavovic et al., "Designing Network Design Spaces", 2020).

A design space is a set of AnyNet networks (a stem, four stages of ResNeXt blocks, a pooled
head) given by constraints on each stage's depth d, width w, group width g and bottleneck
ratio. ``anynet_sample`` draws one network from a named space by a sample index; the draw is
deterministic given (space, index, compute band, input size), so a study is a sweep over
indices (``experiment=ds_anynet``) and every run can be rebuilt from its summary.json.

The spaces, each a subset of the one before:

- ``anynetx_a``: every stage free.
- ``anynetx_b``: one bottleneck ratio shared by all stages.
- ``anynetx_c``: ... and one group width shared by all stages.
- ``anynetx_d``: ... and widths that do not shrink from stage to stage.
- ``anynetx_e``: ... and depths that do not shrink from stage to stage.
- ``regnetx``: widths and depths from the quantized linear rule (depth, w0, wa, wm), with
  one bottleneck ratio and one group width.

The ranges are the paper's scaled down to 28x28 Fashion-MNIST on a CPU (docs/design_spaces.md
says why); the compute band (``min_mflops`` to ``max_mflops`` forward MFLOPs per image at the
run's resolution, counted on the meta device) redraws networks outside it, so the spaces are
compared at equal cost, as the paper compares them at 360-400 MF.

Bottleneck ratios are written as this project writes them (``anynet``'s ``arch`` table and
d2l's ``bot_mul``): inner width / width, so the paper's b in {1, 2, 4} is a ratio in
{1, 0.5, 0.25}.
"""
from __future__ import annotations

import functools
import math
import random
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import torch
from torch import nn

from .layers import Channels, Ratio, Stride, pair
from .registry import ModelError, Range, add_model, did_you_mean
from .regnet import anynet

Space = Literal["anynetx_a", "anynetx_b", "anynetx_c", "anynetx_d", "anynetx_e", "regnetx"]
SPACES: tuple[str, ...] = typing.get_args(Space)

# The paper's ranges (ImageNet, 224 px, 400 MF) scaled to 28 px Fashion-MNIST on a CPU.
NUM_STAGES = 4                      # the paper's four stages
STAGE_DEPTHS = range(1, 7)          # d_i in 1..6 (paper: 1..16)
WIDTHS = range(8, 129, 8)           # w_i in 8..128, multiples of 8 (paper: 8..1024)
BOTTLENECK_RATIOS = (1.0, 0.5, 0.25)  # inner width / width: the paper's b in {1, 2, 4}
GROUP_WIDTHS = (1, 2, 4, 8, 16)     # g_i (paper: 1, 2, 4, ..., 32)
REGNET_DEPTHS = range(4, 25)        # total depth d (paper: d <= 64)
REGNET_W0 = range(8, 65, 8)         # initial width w0 (paper: 8..256)
REGNET_WA = (0.0, 64.0)             # slope wa (paper: 0..256)
REGNET_WM = (1.5, 3.0)              # width multiplier wm (paper's range)
QUANTUM = 8                         # RegNet widths are multiples of 8

# What each AnyNetX space adds to the one before it (the paper's Section 3.2).
CONSTRAINTS = {
    "anynetx_a": set(),
    "anynetx_b": {"shared_ratio"},
    "anynetx_c": {"shared_ratio", "shared_group"},
    "anynetx_d": {"shared_ratio", "shared_group", "widths_grow"},
    "anynetx_e": {"shared_ratio", "shared_group", "widths_grow", "depths_grow"},
    # by construction; not depths_grow: the rule often leaves a short last stage (regnet_x_3_2gf: 2, 6, 15, 2)
    "regnetx": {"shared_ratio", "shared_group", "widths_grow"},
}
MAX_PROPOSALS = 100_000  # constraint checks are free; a space that never fits is a bug
MAX_COUNTS = 48  # FLOP counts per draw (each one a meta-device forward pass)


def compatible(width: int, ratio: float, group_width: int) -> tuple[int, int]:
    """(width, group width) such that the group width divides the inner width: the group
    width is capped at the inner width, and the inner width rounded (half up) to a multiple
    of it, as pycls and torchvision adjust RegNet widths."""
    inner = max(1, int(round(width * ratio)))
    group_width = min(group_width, inner)
    inner = max(group_width, int(inner / group_width + 0.5) * group_width)
    return int(round(inner / ratio)), group_width


def quantized_linear(depth: int, w0: float, wa: float, wm: float, quantum: int = QUANTUM) -> list[tuple[int, int]]:
    """RegNet's rule: block j has the continuous width u_j = w0 + wa * j, snapped to
    w0 * wm^s_j with s_j = round(log(u_j / w0) / log(wm)) and rounded to a multiple of
    ``quantum``; consecutive blocks of equal width form a stage. Returns [(depth, width)]."""
    if depth < 1 or w0 <= 0 or wa < 0 or wm <= 1:
        raise ModelError(f"RegNet rule: need depth >= 1, w0 > 0, wa >= 0 and wm > 1 (got depth={depth}, w0={w0}, "
                         f"wa={wa}, wm={wm})")
    widths = []
    for j in range(depth):
        s = round(math.log((w0 + wa * j) / w0) / math.log(wm))
        widths.append(int(round(w0 * wm**s / quantum)) * quantum)
    stages: list[tuple[int, int]] = []
    for w in widths:
        if stages and stages[-1][1] == w:
            stages[-1] = (stages[-1][0] + 1, w)
        else:
            stages.append((1, w))
    return stages


def regnet_stages(depth: int, w0: float, wa: float, wm: float, group_width: int, bottleneck_ratio: float = 1.0) -> list[list]:
    """The AnyNet stage table [[depth, width, group_width, bottleneck_ratio], ...] of a RegNet."""
    table = []
    for d, w in quantized_linear(depth, w0, wa, wm):
        w, g = compatible(w, bottleneck_ratio, group_width)
        table.append([d, w, g, bottleneck_ratio])
    return table


def build_anynet(stages: list[list], num_classes: int, in_channels: int, stem_channels: int, stem_stride: int,
                 bias: bool):
    """The one call into ``regnet.anynet`` (its keyword names live here only)."""
    return anynet(num_classes=num_classes, in_channels=in_channels, stem_channels=stem_channels, arch=stages,
                  block="bottleneck", init="pytorch", stem_stride=stem_stride, bias=bias)


@dataclass(frozen=True)
class Draw:
    """One network drawn from a design space, with what it took to draw it."""
    space: str
    sample: int
    stages: tuple[tuple[int, int, int, float], ...]  # (depth, width, group_width, bottleneck_ratio)
    flops: int  # forward FLOPs per image at the band's input size
    proposals: int  # networks proposed, the first ones rejected by the space's constraints or the band
    rule: dict[str, float] = field(default_factory=dict)  # RegNetX: depth, w0, wa, wm, group_width, bottleneck_ratio

    def table(self) -> list[list]:
        return [list(s) for s in self.stages]

    def record(self) -> dict[str, Any]:
        """What summary.json keeps: the stage table and the drawn quantities (``drawn``), and
        scalar ``ds_*`` columns that reach results.csv."""
        depths, widths, groups, ratios = (list(x) for x in zip(*self.stages))
        drawn = {"space": self.space, "sample": self.sample, "stages": self.table(), "depths": depths,
                 "widths": widths, "group_widths": groups, "bottleneck_ratios": ratios, "flops": self.flops,
                 "proposals": self.proposals, **self.rule}
        scalars = {
            "ds_depth": sum(depths), "ds_max_width": max(widths), "ds_min_width": min(widths),
            "ds_group_width": sum(groups) / len(groups), "ds_bottleneck_ratio": sum(ratios) / len(ratios),
            "ds_proposals": self.proposals,
            **{f"ds_d{i + 1}": d for i, d in enumerate(depths)}, **{f"ds_w{i + 1}": w for i, w in enumerate(widths)},
            **{f"ds_g{i + 1}": g for i, g in enumerate(groups)}, **{f"ds_b{i + 1}": b for i, b in enumerate(ratios)},
            **{f"ds_{k}": v for k, v in self.rule.items() if k in ("w0", "wa", "wm")},
        }
        return {"drawn": drawn, **scalars}


def propose(space: str, rng: random.Random) -> tuple[list[list], dict[str, float]] | None:
    """One network of ``space`` from ``rng``, or None when it breaks the space's constraints."""
    ratio, group = rng.choice(BOTTLENECK_RATIOS), rng.choice(GROUP_WIDTHS)  # the shared ones, drawn always
    if space == "regnetx":
        rule = {"depth": rng.choice(REGNET_DEPTHS), "w0": rng.choice(REGNET_W0),
                "wa": round(rng.uniform(*REGNET_WA), 2), "wm": round(rng.uniform(*REGNET_WM), 3),
                "group_width": group, "bottleneck_ratio": ratio}
        table = regnet_stages(**rule)
        if len(table) != NUM_STAGES or max(w for _, w, _, _ in table) > WIDTHS[-1]:
            return None  # the same four stages and width range as the AnyNetX spaces
        return table, rule
    rules = CONSTRAINTS[space]
    depths = [rng.choice(STAGE_DEPTHS) for _ in range(NUM_STAGES)]
    widths = [rng.choice(WIDTHS) for _ in range(NUM_STAGES)]
    ratios = [ratio if "shared_ratio" in rules else rng.choice(BOTTLENECK_RATIOS) for _ in range(NUM_STAGES)]
    groups = [group if "shared_group" in rules else rng.choice(GROUP_WIDTHS) for _ in range(NUM_STAGES)]
    if "widths_grow" in rules and widths != sorted(widths) or "depths_grow" in rules and depths != sorted(depths):
        return None
    table = []
    for d, w, g, r in zip(depths, widths, groups, ratios):
        w, g = compatible(w, r, g)
        table.append([d, w, g, r])
    return table, {}


_UNIT_FLOPS: dict[tuple[str, tuple[int, ...]], tuple[int, tuple[int, ...]]] = {}


def count_flops(stages: list[list], size: tuple[int, int], in_channels: int, num_classes: int, stem_channels: int,
                stem_stride: int) -> int:
    """Forward FLOPs for one image as PyTorch's FLOP counter counts them (``cnnbench.analysis.count_flops``,
    which cannot be imported here: it imports the models): 2 per multiply-add of the convolutions
    and linear layers, nothing for normalisation, activations or pooling. An AnyNet has no other
    arithmetic, so forward hooks on the meta device count the same figure about 20x faster than
    the counter's dispatch (a test holds them equal on every space). The network is counted block
    by block, each block once per input shape: sampling meets the same blocks again and again."""
    with torch.device("meta"):
        model = build_anynet(stages, num_classes, in_channels, stem_channels, stem_stride, bias=True).eval()
    units = [m for child in model.features for m in (child if isinstance(child, nn.Sequential) else [child])]
    shape, total = (1, in_channels, *size), 0
    for unit in [*units, model.head]:
        key = (repr(unit), shape)  # a module's repr names all its layers' shapes, strides and groups
        if key not in _UNIT_FLOPS:
            if len(_UNIT_FLOPS) > 200_000:
                _UNIT_FLOPS.clear()
            _UNIT_FLOPS[key] = _unit_flops(unit, shape)
        flops, shape = _UNIT_FLOPS[key]
        total += flops
    return total


def _unit_flops(unit: nn.Module, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(FLOPs, output shape) of one unit (built for counting only) on a meta input of ``shape``."""
    if isinstance(unit, nn.BatchNorm2d):
        return 0, shape
    flops = 0

    def multiply_adds(layer: nn.Module, inputs, out: torch.Tensor) -> None:
        nonlocal flops  # each output element: in_channels/groups x kernel area (a linear layer: in_features)
        flops += 2 * out.numel() * layer.weight[0].numel()

    for parent in list(unit.modules()):  # a throwaway copy: batch norm keeps the shape and counts nothing,
        for name, child in parent.named_children():  # and its meta kernel costs more than the convolution's
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, nn.Identity())
    hooks = [m.register_forward_hook(multiply_adds) for m in unit.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            out = unit(torch.empty(shape, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return flops, tuple(out.shape)


class TooSmall(ValueError):
    """Even the largest networks of the space are under the band at this input size (not a
    ModelError: ``accepts_input`` reads it as "input too small", so min_input_size works)."""


@functools.lru_cache(maxsize=64)
def _extremes(space: str, size: tuple[int, int], in_channels: int, num_classes: int, stem_channels: int,
              stem_stride: int) -> tuple[int, int]:
    """FLOPs of a network below and one above every network of ``space`` at ``size``."""
    big_depths = [STAGE_DEPTHS[-1]] * NUM_STAGES if space != "regnetx" else \
        [REGNET_DEPTHS[-1] - NUM_STAGES + 1] + [1] * (NUM_STAGES - 1)  # the most blocks at the highest resolution
    small = [[1, WIDTHS[0], 1, min(BOTTLENECK_RATIOS)]] * NUM_STAGES
    big = [[d, WIDTHS[-1], max(GROUP_WIDTHS), max(BOTTLENECK_RATIOS)] for d in big_depths]
    args = (size, in_channels, num_classes, stem_channels, stem_stride)
    return count_flops(small, *args), count_flops(big, *args)


@functools.lru_cache(maxsize=4096)
def draw(space: str, sample: int, size: tuple[int, int] = (28, 28), in_channels: int = 1, num_classes: int = 10,
         min_mflops: float = 0.0, max_mflops: float = 0.0, stem_channels: int = 16, stem_stride: int = 1) -> Draw:
    """Network number ``sample`` of ``space``: the first network of the random stream seeded by
    (space, sample) that meets the space's constraints and the compute band (``max_mflops=0``:
    no upper limit). Deterministic: the same arguments give the same network on any machine."""
    if space not in SPACES:
        raise ModelError(f"model.space={space!r} is not allowed{did_you_mean(space, SPACES)}; choose one of: {', '.join(SPACES)}")
    if sample < 0:
        raise ModelError(f"model.sample={sample} is not allowed; it must be 0 or more")
    lo, hi = min_mflops * 1e6, (max_mflops * 1e6 if max_mflops > 0 else math.inf)
    if lo > hi:
        raise ModelError(f"model.min_mflops={min_mflops} is above model.max_mflops={max_mflops}")
    args = (size, in_channels, num_classes, stem_channels, stem_stride)
    smallest, largest = _extremes(space, *args)
    band = f"the band {min_mflops:g}-{max_mflops:g} MFLOPs (model.min_mflops, model.max_mflops)"
    if largest < lo:
        raise TooSmall(f"at {size[0]}x{size[1]} px every network of {space} is under {band}")
    if smallest > hi:
        raise ModelError(f"at {size[0]}x{size[1]} px every network of {space} is over {band}: "
                         f"raise model.max_mflops or lower data.resize")
    rng = random.Random(f"{space}/{sample}")  # str seeds are hashed with SHA-512: the same everywhere
    counts, under = 0, 0
    for proposals in range(1, MAX_PROPOSALS + 1):
        proposed = propose(space, rng)
        if proposed is None:
            continue
        table, rule = proposed
        flops = count_flops(table, *args)
        if lo <= flops <= hi:
            return Draw(space, sample, tuple(tuple(s) for s in table), flops, proposals, rule)
        counts, under = counts + 1, under + (flops < lo)
        if counts >= MAX_COUNTS:
            break
    message = (f"model.space={space} model.sample={sample}: no network in {band} at {size[0]}x{size[1]} px "
               f"after {counts} tries ({under} under, {counts - under} over); widen the band")
    raise TooSmall(message) if under == counts else ModelError(message)


def anynet_sample(
    num_classes=10,
    in_channels=1,
    image_size=28,
    space: Space = "anynetx_a",
    sample: Annotated[int, Range(0, 2**31)] = 0,
    min_mflops: float = 2.0,
    max_mflops: float = 6.0,
    stem_channels: Channels = 16,
    stem_stride: Stride = 1,
    bias: bool = True,
):
    """A network drawn from a design space (AnyNetX A-E, RegNetX) by its sample index, inside a
    compute band of forward MFLOPs per image at the run's resolution."""
    d = draw(space, sample, pair(image_size), in_channels, num_classes, float(min_mflops), float(max_mflops),
             stem_channels, stem_stride)
    return build_anynet(d.table(), num_classes, in_channels, stem_channels, stem_stride, bias)


def regnet(
    num_classes=10,
    in_channels=1,
    depth: Annotated[int, Range(1, 256)] = 13,
    w0: Channels = 24,
    wa: Annotated[float, Range(0, 1024)] = 36.44,
    wm: Annotated[float, Range(1, 16, open_lo=True)] = 2.49,
    group_width: Channels = 8,
    bottleneck_ratio: Ratio = 1.0,
    stem_channels: Channels = 32,
    stem_stride: Stride = 2,
    bias: bool = True,
):
    """RegNetX from its quantized linear rule: ``depth`` blocks, widths w0 + wa * j snapped to
    powers of ``wm`` and to multiples of 8, one group width and bottleneck ratio (inner width /
    width). The defaults are RegNetX-200MF (the paper's appendix). ``bias=false
    in_channels=3 num_classes=1000`` is torchvision's ``regnet_x_*``."""
    return build_anynet(regnet_stages(depth, w0, wa, wm, group_width, bottleneck_ratio), num_classes, in_channels,
                        stem_channels, stem_stride, bias)


def summary_fields(name: str, size: tuple[int, int], in_channels: int = 1, num_classes: int = 10,
                   **knobs: Any) -> dict[str, Any]:
    """For summary.json: the drawn architecture of an ``anynet_sample`` run, the stage table a
    ``regnet`` run's rule built (``stages``, and ``ds_d*``/``ds_w*`` columns for results.csv: what
    ``model.depth=8,13,20`` made of each depth); {} for other models."""
    from .registry import get_spec

    spec = get_spec(name)
    k = {**{n: p.default for n, p in spec.knobs.items()}, **knobs}
    if spec.builder is regnet:
        table = regnet_stages(k["depth"], k["w0"], k["wa"], k["wm"], k["group_width"], k["bottleneck_ratio"])
        return {"stages": table, **{f"ds_d{i + 1}": s[0] for i, s in enumerate(table)},
                **{f"ds_w{i + 1}": s[1] for i, s in enumerate(table)}}
    if spec.builder is not anynet_sample:
        return {}
    d = draw(k["space"], k["sample"], pair(size), in_channels, num_classes, float(k["min_mflops"]),
             float(k["max_mflops"]), k["stem_channels"], k["stem_stride"])
    return d.record()


add_model("anynet_sample", anynet_sample, 28, "A network drawn from a design space (AnyNetX A-E, RegNetX) by index, "
          "in a compute band (d2l 8.8)")
add_model("regnet", regnet, 96, "RegNetX from the quantized linear rule (depth, w0, wa, wm, group width); "
          "RegNetX-200MF by default")
