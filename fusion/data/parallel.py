"""Worker processes shared by extraction (extract.py) and packing (packing.py): splitting the
videos of a job array (`parse_shard`), and workers that end with their parent. Light on
imports: a spawned worker imports this module, not torch.
"""
from __future__ import annotations

import os
import signal
import threading
import time


def die_with_parent(parent: int) -> None:
    """A worker process's initializer: end with the process `parent` that started it, also
    when that one is SIGKILLed (no cleanup runs then, and an orphan would go on extracting
    into a folder a rerun is about to clean). Linux: the kernel's parent-death signal, then a
    check that the parent did not die while this worker was starting; elsewhere a thread that
    notices the parent is gone. Start workers with `initargs=(os.getpid(),)`."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(1, signal.SIGKILL) == 0:  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before the call
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """"K/N" -> (K, N), 1 <= K <= N, or an error naming --shard."""
    if not text:
        return None
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ValueError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 3/8")
    return int(k), int(n)
