"""Tiny datasets on disk in the official layouts, with frames whose pixels encode their index,
and hand-written references the tests compare the code against.

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


def fake_ucf101(root, train_groups, test_groups, bad=()):
    """Classes A, B, C with groups of one clip (8 frames) each, in UCF101's layout; every RGB
    frame of the videos in `bad` is corrupt."""
    videos, train, test = {}, [], []
    for label, cls in enumerate("ABC", 1):
        for g in sorted(train_groups[cls] + test_groups[cls]):
            videos[f"v_{cls}_g{g:02d}_c01"] = (8, 7)
        train += [f"{cls}/v_{cls}_g{g:02d}_c01.avi {label}" for g in train_groups[cls]]
        test += [f"{cls}/v_{cls}_g{g:02d}_c01.avi" for g in test_groups[cls]]
    write_ucf101(root, videos, list("ABC"), train, test)
    for name in bad:
        for frame in (root / "jpegs_256" / name).iterdir():
            frame.write_bytes(b"\xff\xd8 not a jpeg")
    return root


def by_hand(stream, frames, mean, std):
    """Independent reference: normalise each segment by hand, run the stream, average logits."""
    logits = []
    for t in range(frames.shape[1]):
        x = frames[:, t].float() / 255
        x = (x - torch.tensor(mean).repeat(x.shape[1] // len(mean)).view(-1, 1, 1)) / \
            torch.tensor(std).repeat(x.shape[1] // len(std)).view(-1, 1, 1)
        logits.append(stream(x))
    return torch.stack(logits).mean(0)
