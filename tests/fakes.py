"""Tiny datasets on disk in the official layouts, with frames whose pixels encode their index.

RGB frame k (1-based on disk) is filled with the value 10 * k in every channel, flow frame k with
u = 100 + k and v = 200 - k, so a test can read back exactly which frames a sample took.
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

H, W = 24, 32


def write_frame(path: Path, value: int, channels: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # PIL writes, OpenCV reads: the test data does not come from the codec under test
    image = np.full((H, W, channels) if channels == 3 else (H, W), value, dtype=np.uint8)
    Image.fromarray(image).save(path, quality=100)


def write_video(rgb_dir: Path, flow_u: Path, flow_v: Path, rgb_frames: int,
                flow_frames: int) -> None:
    for k in range(1, rgb_frames + 1):
        write_frame(rgb_dir / f"frame{k:06d}.jpg", 10 * k % 256, 3)
    for k in range(1, flow_frames + 1):
        write_frame(flow_u / f"frame{k:06d}.jpg", 100 + k, 1)
        write_frame(flow_v / f"frame{k:06d}.jpg", 200 - k, 1)


def write_ucf101(root: Path, videos: dict[str, tuple[int, int]], classes: list[str],
                 train: list[str], test: list[str]) -> Path:
    """videos: folder name -> (rgb frames, flow frames); train/test: official list lines."""
    for name, (n_rgb, n_flow) in videos.items():
        write_video(root / "jpegs_256" / name, root / "tvl1_flow" / "u" / name,
                    root / "tvl1_flow" / "v" / name, n_rgb, n_flow)
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)))
    (lists / "trainlist01.txt").write_text("".join(f"{line}\r\n" for line in train))
    (lists / "testlist01.txt").write_text("".join(f"{line}\r\n" for line in test))
    return root


def rgb_index(frame: torch.Tensor) -> int:
    """0-based frame index from an RGB frame written by `write_video`."""
    return round(frame.float().mean().item() / 10) - 1


def flow_index(u: torch.Tensor) -> int:
    return round(u.float().mean().item()) - 101
