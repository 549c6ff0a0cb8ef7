"""Multi-process training with PyTorch's own engine: `torchrun --nproc_per_node=N
scripts/train_fusion.py ...` starts N processes; each finds its rank in the environment that
torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). gloo on the CPU, nccl on GPUs.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Only the main process writes logs and checkpoints."""
        return self.rank == 0


def setup(device_name: str) -> tuple[Context, torch.device]:
    """Join the process group when started by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(), device_for(device_name)
    context = Context(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = device_for(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return context, device


@contextlib.contextmanager
def session(device_name: str):
    """`with session(config.device) as (context, device):` joins the process group (under
    torchrun) for the block and leaves it however the block ends."""
    context, device = setup(device_name)
    try:
        yield context, device
    finally:
        cleanup(context)


def device_for(name: str) -> torch.device:
    """auto: the GPU when there is one; a CUDA device without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config key device: {name!r} asked for, but CUDA is not available")
    return device


def sum_across(values: list[float], context: Context, device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all processes (the values themselves when alone)."""
    if not context.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def from_main(value, context: Context):
    """Rank 0's `value` (anything picklable and small) on every rank."""
    if not context.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(context: Context) -> None:
    if context.enabled:
        dist.barrier()


def cleanup(context: Context) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
