"""Where and how the model computes: autocast dtype, NHWC weights, moving inputs, CPU threads.

Used by the training loop, the test protocol, prediction and the benchmark alike.
"""
from __future__ import annotations

import contextlib
import os

import torch


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16/fp16 on GPUs that support it, none on the CPU unless asked."""
    if mode == "none" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def to_channels_last(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """NHWC weights for faster convolutions with AMP: "auto" on GPUs, "on" anywhere (the CPU
    suite then takes the GPU's path), "off". Applied per module, because one memory format
    cannot serve every weight: 4-D conv weights get channels_last, the 5-D weights of a
    `conv3d` fusion channels_last_3d (`model.to(memory_format=torch.channels_last)` refuses
    5-D tensors)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return model
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.to(memory_format=torch.channels_last_3d)
        elif isinstance(module, torch.nn.Conv2d):
            module.to(memory_format=torch.channels_last)
    return model


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def move(x: torch.Tensor | None, device) -> torch.Tensor | None:
    """`x.to(device)`, letting a switched-off modality (None) through."""
    return None if x is None else x.to(device, non_blocking=True)


def resolve_device(device: str) -> torch.device:
    """auto (a GPU when there is one) | cpu | cuda | cuda:N, or an error naming the option."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device!r}: this machine has no CUDA GPU (use cpu or auto)")
    return resolved


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, which cgroup cpusets, Slurm and
    taskset narrow, rather than the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity call on this OS (macOS)
        return os.cpu_count() or 1


@contextlib.contextmanager
def cpu_threads(workers: int):
    """Split the usable CPUs between the main process and the loader workers for the block;
    yields the split in words for the run's log.

    Each DataLoader worker runs one intra-op thread (torch sets that in every worker); the main
    process gets the CPUs left, at least one, shared with the other processes torchrun started
    on this node (LOCAL_WORLD_SIZE). Without this, the main process's default of a thread per
    core and the workers oversubscribe the cores, and OpenMP threads spin waiting for one
    another: on 2 cores with one busy elsewhere, training ran 7 to 14 times slower.
    OMP_NUM_THREADS, when set, is the user's choice and stays."""
    cpus = usable_cpus()
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if "OMP_NUM_THREADS" in os.environ:
        threads = torch.get_num_threads()
        why = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    else:
        threads = max(1, cpus // processes - workers)
        why = f"{cpus} usable CPUs" + (f" / {processes} processes" if processes > 1 else "") + \
            (f" - {workers} loader workers" if workers else "")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield f"CPU threads: {threads} in the main process ({why}), " + \
            (f"1 in each of the {workers} loader workers" if workers else
             "which also loads the data (no loader workers)")
    finally:
        torch.set_num_threads(before)
