"""Writing files so that a crash never leaves half of one (write beside it, then rename), and
reading the tensors files the project loads (weights, checkpoints) with one-line errors."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file in `path`'s folder, sync it, and rename it to `path`:
    readers see the old file or the new one. The temporary file is removed on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data, indent: int | None = 1) -> None:
    write_atomic(path, lambda f: f.write(json.dumps(data, indent=indent).encode()))


def load_tensors(path: str | Path, what: str):
    """`torch.load` of a weights or checkpoint file in the safe mode (tensors and plain Python
    containers only). A file it refuses, whether a pickled model object or not torch's format
    at all, is a one-line error naming the file, instead of torch's page of advice."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ... by the file's kind
        raise ValueError(f"{what} {path} is not a PyTorch state dict (torch.load with "
                         f"weights_only=True refused it: {type(err).__name__}); save it with "
                         f"torch.save(model.state_dict(), path)") from None
