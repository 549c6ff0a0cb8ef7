"""Reading and writing image files through OpenCV (libjpeg-turbo): the project's one codec on the
CPU (decode = device decodes on the device: `fusion.data.device_decode`).

OpenCV rather than torchvision.io: torchvision deprecated its codec in 0.29, and reading with
Python's `open` and decoding with `cv2.imdecode` skips torchvision's per-call Python wrappers,
which cost a tenth of a clip's loading time at 21 frames per clip. EXIF orientation is ignored:
frames extracted from video carry none, and photos stay as their pixels are stored.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from fusion.data import packs
from fusion.data.packs import MARK, read_member

_FLAGS = {True: cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION,
          False: cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION}
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


class DecodeError(ValueError):
    """A file that is missing, empty, truncated or not an image."""


def read_bytes(path: str) -> bytes:
    """A frame file's bytes, as stored (the one place frame files are read, decoded here or
    on the device): a loose file, or a file inside a pack, `<root>/packs/<video>.tar/<member>`
    (`fusion.data.packs`, one positioned read). Missing, empty and truncated JPEG files, and
    damaged packs, are a `DecodeError`."""
    try:
        data = read_member(path) if MARK in path else None
        if data is None:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as err:
        raise DecodeError(err.strerror or str(err)) from err
    if not data:
        raise DecodeError("empty file")
    # libjpeg decodes a truncated JPEG with a warning and grey rows; OpenCV passes that on as a
    # valid image. The end-of-image marker cannot occur inside entropy-coded data (0xFF is
    # stuffed there), so a JPEG without one was cut short.
    if data.startswith(_JPEG_START) and data.rfind(_JPEG_END) < 0:
        raise DecodeError("the JPEG is truncated (no end-of-image marker)")
    return data


def read_ahead(folders: Iterable[tuple[str, Sequence[str]]]) -> None:
    """Say which frame files `read_bytes` is about to be asked for (a clip's: each folder with
    its file names): packed ones are read at once, a pack's in as few positioned reads as
    their places allow (`packs.read_ahead`); loose ones are read as asked, one by one."""
    packs.read_ahead(folders)


def read_image(path: str, *, gray: bool) -> np.ndarray:
    """H x W (gray) or H x W x 3 (RGB) uint8."""
    image = cv2.imdecode(np.frombuffer(read_bytes(path), np.uint8), _FLAGS[gray])
    if image is None:
        raise DecodeError("not a decodable image")
    return image


# Start-of-frame markers (baseline, extended, progressive, lossless; not DHT C4, JPG C8, DAC CC)
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's frame header, without decoding it; a file that is not a
    JPEG, or whose header is cut or damaged, is a `DecodeError`."""
    if not data.startswith(_JPEG_START):
        raise DecodeError("not a JPEG (decoding on the device reads JPEG frames only)")
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker in _SOF and at + 9 <= len(data):
            height = int.from_bytes(data[at + 5:at + 7], "big")
            width = int.from_bytes(data[at + 7:at + 9], "big")
            if height and width:
                return height, width
            break
        if marker == 0xDA or length < 2:  # start of scan before any frame header
            break
        at += 2 + length
    raise DecodeError("not a decodable image (no JPEG frame header)")


def _write_encoded(path: Path, image: np.ndarray, extension: str, params: list[int]) -> None:
    """Encode in memory, then write with Python's own file calls: cv2.imwrite reports only
    False, where a failed write should keep the OS's reason (ENOSPC: no space left)."""
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(extension, image, params)
    if not ok:
        raise ValueError(f"could not encode {path} (image of shape {image.shape})")
    with open(path, "wb") as f:
        f.write(data.tobytes())


def write_png(path: Path, image: np.ndarray) -> None:
    """H x W x 3 RGB uint8 -> a lossless PNG file (flow colour images)."""
    _write_encoded(path, image, ".png", [])


def write_jpeg(path: Path, image: np.ndarray, quality: int = 95) -> None:
    """H x W (gray) or H x W x 3 (RGB) uint8 -> a JPEG file."""
    _write_encoded(path, image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])
