"""Data-parallel training under ``torchrun``: one process per device, DistributedDataParallel.

``torchrun --nproc_per_node=N -m cnnbench ...`` starts N copies of the command with RANK,
LOCAL_RANK and WORLD_SIZE set. Each rank holds the whole dataset on its own device and trains
on its share of every batch: ``data.batch_size`` is the *global* batch (split evenly across the
ranks) and ``optimizer.lr`` applies to it, so N processes train as one process with the same
batch would (batch norm aside: its statistics are per rank, as with plain DDP). Only rank 0
writes files and logs; the other ranks' run dirs are temporary and deleted.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1
    distributed: bool = False  # started by torchrun (even as its only process): a process group

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (in place; a no-op in one process)."""
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def agreed_signal(self, signum: int | None, device: torch.device) -> int | None:
        """The stop signal any rank has received (the highest number if several), else None. A
        collective (and a host sync): every rank calls it at the same point."""
        if not self.distributed:
            return signum
        flag = torch.tensor([signum or 0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None


def from_env() -> World:
    """The process's place in a torchrun launch (one process: rank 0 of 1)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)), "WORLD_SIZE" in env)


def init(device_name: str, timeout_s: float = 600.0) -> World:
    """Join the process group when launched by torchrun: nccl for CUDA devices, gloo for the CPU.
    A collective that waits longer than ``timeout_s`` (a rank died) raises instead of hanging."""
    world = from_env()
    if world.distributed and not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(world.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(seconds=timeout_s))
    return world


def where(device: torch.device, share: int) -> str:
    """Where a run trains, for its first log line: "cpu", or under torchrun "cpu, 2 processes
    (gloo), 64 images each per step" (``share``: this rank's images in a full step; the device
    type, since each rank has its own device)."""
    world = from_env()
    if not (world.distributed and dist.is_initialized()):
        return str(device)
    return f"{device.type}, {world.size} processes ({dist.get_backend()}), {share} images each per step"


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
