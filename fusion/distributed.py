"""Multi-process training with PyTorch's own engine: `torchrun --nproc_per_node=N
scripts/train_fusion.py ...` starts N processes; each finds its rank in the environment that
torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK). gloo on the CPU, nccl on GPUs. Many nodes are one
torchrun per node (static --node-rank or a c10d rendezvous); ranks are global, and global rank
0 alone writes.

A lost process (killed, its node down) fails the collectives of the others: at once when its
sockets close, else after the process group's timeout (config key dist_timeout). The survivors
then leave the group and take a census in torchrun's store, and each stops with `RankLost`
naming the ranks that did not answer, instead of hanging.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    # the gloo group `barrier` waits on, with a timeout of its own (BARRIER_S)
    barrier_group: object = field(default=None, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Only the main process writes logs and checkpoints."""
        return self.rank == 0


CENSUS_S = 30.0  # longest wait for the other survivors to answer the census
BARRIER_S = 24 * 3600.0  # longest wait in `barrier` (the others wait there for rank 0's test)


class RankLost(RuntimeError):
    """Another process of the run stopped answering (killed, or its node is gone)."""


def setup(device_name: str, timeout_s: float = 600.0) -> tuple[Context, torch.device]:
    """Join the process group when started by torchrun; pick this process's device. A
    collective waits at most `timeout_s` seconds for the other processes (gloo and NCCL)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(), device_for(device_name)
    context = Context(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = device_for(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=BARRIER_S))
    return dataclasses.replace(context, barrier_group=group), device


@contextlib.contextmanager
def session(device_name: str, timeout_s: float = 600.0):
    """`with session(config.device, config.dist_timeout) as (context, device):` joins the
    process group (under torchrun) for the block and leaves it however the block ends. When
    the group fails (a peer gone, a collective timed out), the block ends in `RankLost` naming
    the ranks that are gone."""
    context, device = setup(device_name, timeout_s)
    try:
        yield context, device
    except Exception as err:
        if not (context.enabled and group_failed(err)):
            raise
        cleanup(context)  # closes this process's connections: peers blocked on it fail now
        lost = census(context, min(timeout_s, CENSUS_S))
        raise RankLost(lost_message(lost, context, timeout_s, err)) from err
    finally:
        cleanup(context)


def group_failed(err: BaseException) -> bool:
    """An error of the process group (a peer gone, a collective timed out), not of this
    process's own work: torch's distributed errors, and gloo's, which arrive as RuntimeError
    naming gloo's source."""
    return isinstance(err, dist.DistError) or (isinstance(err, RuntimeError)
                                               and "/gloo/" in str(err))


def census(context: Context, wait_s: float) -> list[int] | None:
    """The ranks that do not check in within `wait_s` seconds: each survivor writes its rank to
    torchrun's store (its TCPStore, MASTER_ADDR:MASTER_PORT, held by the first node's agent)
    and waits for the others. None if the store itself is gone (the first node is down)."""
    prefix = (f"fusion/census/{os.environ.get('TORCHELASTIC_RUN_ID', '')}/"
              f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}")
    try:
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                              is_master=False, timeout=datetime.timedelta(seconds=wait_s),
                              wait_for_workers=False)
        store.set(f"{prefix}/{context.rank}", "here")
        deadline = time.monotonic() + wait_s
        while True:
            lost = [r for r in range(context.world) if not store.check([f"{prefix}/{r}"])]
            if not lost or time.monotonic() > deadline:
                return lost
            time.sleep(0.2)
    except (KeyError, ValueError, RuntimeError):  # no store address, or the store is gone
        return None


def lost_message(lost: list[int] | None, context: Context, timeout_s: float,
                 err: BaseException) -> str:
    if lost is None:
        what = (f"lost the first node: torchrun's store at {os.environ.get('MASTER_ADDR')}:"
                f"{os.environ.get('MASTER_PORT')} is gone")
    elif lost:
        what = (f"lost rank{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of "
                f"{context.world}: no answer (process ended or killed, or node unreachable: "
                f"see that node's log)")
    else:
        what = (f"every rank is alive, but a collective failed or waited longer than "
                f"dist_timeout ({timeout_s:g} s): a rank busy alone that long needs a longer "
                f"--dist-timeout")
    first = (str(err).strip() or type(err).__name__).splitlines()[0]
    return (f"rank {context.rank}: {what}. The run stopped; last.pt holds its last finished "
            f"epoch: continue with --resume. Process group error: {first}")


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
    """Every process waits here for all the others, however long they take (up to BARRIER_S,
    not the collectives' dist_timeout): the others wait here while rank 0 alone tests the
    model. A process that dies closes its connections, which ends the wait at once."""
    if context.enabled:
        dist.barrier(group=context.barrier_group)


def cleanup(context: Context) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
