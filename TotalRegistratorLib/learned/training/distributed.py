"""Data-parallel set-up: join torchrun's process group (gloo on CPU, nccl on GPU), pick the device, sum across ranks.

Without torchrun (``WORLD_SIZE`` unset or 1) every helper works on the single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ...optimization.optimizer import resolve_device


@dataclass(frozen=True)
class Context:
    """This process's rank, the number of processes, and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the process that writes."""
        return self.rank == 0


def start(device: str = "auto") -> Context:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1); pick the device."""
    cuda = resolve_device(device).type == "cuda"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Context(rank, world, torch.device(f"cuda:{local}" if cuda else "cpu"))


def sum_across(ctx: Context, values: list[float]) -> list[float]:
    """``values`` summed over all processes (float64)."""
    if ctx.world == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def barrier(ctx: Context) -> None:
    """Wait for every process (nothing to wait for in a single process)."""
    if ctx.world > 1:
        dist.barrier()
