"""Writing files so that a crash never leaves half of one (write beside it, then rename), and
reading the tensors files the project loads (weights, checkpoints) with one-line errors."""
from __future__ import annotations

import json
import os
import urllib.error
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:  # torch is imported where it is used: writing packs and JSON needs none
    import torch


def write_atomic(path: Path, write: Callable[[BinaryIO], None], *,
                 previous: Path | None = None) -> None:
    """Call `write` on a temporary file in `path`'s folder, sync it, and rename it to `path`:
    readers see the old file or the new one. The temporary file is removed on failure. With
    `previous`, the file being replaced is kept under that name (renamed only once the new one
    is complete, just before it takes its place)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
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
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ... by the file's kind
        damage = damaged(path)
        if damage:
            raise CorruptFile(f"{what} {path} is corrupt or truncated ({damage})") from None
        raise ValueError(f"{what} {path} is not a PyTorch state dict (torch.load with "
                         f"weights_only=True refused it: {type(err).__name__}); save it with "
                         f"torch.save(model.state_dict(), path)") from None


class CorruptFile(ValueError):
    """A file in torch.save's format that was cut short or damaged."""


def damaged(path: Path) -> str | None:
    """What is wrong with a file in torch.save's format (a zip archive) that torch cannot
    read: cut short (the archive's directory, written last, is missing) or a member whose
    checksum fails; None for a sound archive or another kind of file."""
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return None
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError):
        return f"{path.stat().st_size:,} bytes, the end of the file is missing"
    return f"{bad} fails its checksum" if bad else None


def read_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """A plain state dict (name -> tensor) from a file (torch.save's, or .safetensors as on
    Hugging Face), or a one-line error naming it."""
    if Path(path).suffix == ".safetensors" and Path(path).is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as err:
            raise ValueError(f"{what} {path} is not a readable safetensors file ({err})") from None
    import torch

    state = load_tensors(path, what)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what} {path} must hold a plain state dict (name -> tensor), got "
                         f"{type(state).__name__}")
    return state


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor],
                     source: str) -> None:
    """Fail naming the first key that is missing, unexpected, or of the wrong shape."""
    for key, tensor in expected.items():
        if key not in given:
            raise ValueError(f"{source}: missing key {key!r} (shape {tuple(tensor.shape)})")
        if given[key].shape != tensor.shape:
            raise ValueError(f"{source}: key {key!r} has shape {tuple(given[key].shape)}, "
                             f"expected {tuple(tensor.shape)}")
    for key in given:
        if key not in expected:
            raise ValueError(f"{source}: unexpected key {key!r}")


def download_weights(weights, what: str, option: str) -> dict[str, torch.Tensor]:
    """The state dict of a torchvision weights enum (downloaded once into torch's cache); offline,
    an error naming the file to fetch and the `option` that takes its local path instead."""
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except (urllib.error.URLError, OSError) as err:
        raise RuntimeError(
            f"could not download {what} from {weights.url} ({err}). Without network access, "
            f"download that file elsewhere and pass its path instead: "
            f"{option}='/path/to/{Path(weights.url).name}'") from err
