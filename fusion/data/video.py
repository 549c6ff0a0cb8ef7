"""Decoding videos into frames with OpenCV, resized the way the datasets store them."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np


class VideoError(RuntimeError):
    """A file that cannot be opened or decoded as a video; the message names it."""


def resize_short_side(frame: np.ndarray, short_side: int) -> np.ndarray:
    """Resize so that the shorter side is `short_side` (0 keeps the frame as it is)."""
    import cv2

    h, w = frame.shape[:2]
    if short_side <= 0 or min(h, w) == short_side:
        return frame
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def open_video(path: str | Path):
    """An opened cv2.VideoCapture and its frame rate; a VideoError if it is not a video."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video {path} does not exist")
    # one decoding thread: parallelism comes from processes (extract_frames.py --workers), and
    # FFmpeg's default of a thread per core would oversubscribe the cores they run on
    capture = cv2.VideoCapture(str(path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, 1])
    if not capture.isOpened():
        raise VideoError(f"{path} is not a readable video")
    return capture, capture.get(cv2.CAP_PROP_FPS)


def declared_frame_count(path: str | Path) -> int:
    """The number of frames the container declares (0 where it declares none); a truncated
    file decodes fewer."""
    import cv2

    capture, _ = open_video(path)
    count = capture.get(cv2.CAP_PROP_FRAME_COUNT)
    capture.release()
    return max(int(count), 0) if count == count else 0  # NaN: none declared


def pad_to_square(frame: np.ndarray) -> np.ndarray:
    """H x W x 3 -> S x S x 3, S = max(H, W): the frame centred on zeros (seed 001)."""
    import torch

    from fusion.data.images import pad_square

    return pad_square(torch.from_numpy(frame).permute(2, 0, 1)).permute(1, 2, 0).numpy()


def iter_frames(path: str | Path, short_side: int = 0,
                square: bool = False) -> Iterator[np.ndarray]:
    """RGB uint8 frames (H x W x 3) of a video, zero-padded to squares if `square`, then
    resized; a VideoError if it has none."""
    import cv2

    capture, _ = open_video(path)
    count = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            count += 1
            frame = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            yield resize_short_side(pad_to_square(frame) if square else frame, short_side)
    finally:
        capture.release()
    if count == 0:
        raise VideoError(f"{path} holds no decodable frames")
