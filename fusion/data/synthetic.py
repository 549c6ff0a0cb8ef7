"""The built-in demo data: a small dataset in the exact UCF101 layout that needs both streams.

Every video shows a red or blue square sliding up, sliding down or standing still over a grey
texture (wrapping around the edges, so where it is says nothing about where it goes). The class
is the pair (colour, motion): a single RGB frame shows the colour but not the motion, the flow
shows the motion but not the colour. With 2 colours and K/2 motions, RGB alone can reach 2/K
accuracy, flow alone 1/2, and the two together all of it. Motions are vertical because a
horizontal flip, a standard augmentation, must not change the class.

As in UCF101, the videos of a group share a background, and the splits hold out whole groups.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fusion.data.flow import DEFAULT_BOUND, quantize
from fusion.data.imagefiles import write_jpeg

COLOURS = {"Red": (210, 40, 40), "Blue": (40, 70, 220)}
DIRECTIONS = {"Up": (0, -1), "Down": (0, 1), "Still": (0, 0)}
SQUARE = 20


def class_names(num_classes: int) -> list[str]:
    """`num_classes` = 2 colours x num_classes / 2 motions, e.g. RedUp, RedDown, BlueUp, ..."""
    if num_classes % 2 or not 4 <= num_classes <= 2 * len(DIRECTIONS):
        raise ValueError(f"synthetic classes must be even, 4 .. {2 * len(DIRECTIONS)}, "
                         f"got {num_classes}")
    directions = list(DIRECTIONS)[:num_classes // 2]
    return [colour + direction for colour in COLOURS for direction in directions]


def split_class(name: str) -> tuple[str, str]:
    colour = next(c for c in COLOURS if name.startswith(c))
    return colour, name[len(colour):]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth grey texture: upsampled noise, so it has edges but no colour."""
    coarse = rng.uniform(50, 140, size=(height // 8 + 2, width // 8 + 2))
    rows = np.linspace(0, coarse.shape[0] - 1.001, height)
    cols = np.linspace(0, coarse.shape[1] - 1.001, width)
    r0, c0 = rows.astype(int), cols.astype(int)
    fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
    grey = (coarse[r0][:, c0] * (1 - fr) * (1 - fc) + coarse[r0 + 1][:, c0] * fr * (1 - fc)
            + coarse[r0][:, c0 + 1] * (1 - fr) * fc + coarse[r0 + 1][:, c0 + 1] * fr * fc)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _square_mask(height: int, width: int, x: float, y: float) -> np.ndarray:
    """Pixels covered by the square with top-left (x, y), wrapping around the frame."""
    rows = (np.arange(height) - round(y)) % height < SQUARE
    cols = (np.arange(width) - round(x)) % width < SQUARE
    return rows[:, None] & cols[None, :]


def render_video(colour: str, direction: str, *, frames: int, height: int, width: int,
                 background: np.ndarray, rng: np.random.Generator):
    """RGB frames (frames x H x W x 3) and flow (frames - 1 x H x W x 2, in pixels)."""
    dx, dy = DIRECTIONS[direction]
    speed = rng.uniform(3.0, 5.0)
    vx, vy = dx * speed, dy * speed
    # Columns near the centre, so that a centre crop sees the square; rows anywhere.
    x0 = rng.uniform((width - SQUARE) / 2 - width / 8, (width - SQUARE) / 2 + width / 8)
    y0 = rng.uniform(0, height)
    rgb = np.empty((frames, height, width, 3), np.float32)
    flow = rng.normal(0, 0.2, size=(frames - 1, height, width, 2)).astype(np.float32)
    for k in range(frames):
        mask = _square_mask(height, width, x0 + k * vx, y0 + k * vy)
        rgb[k] = background
        rgb[k][mask] = COLOURS[colour]
        if k < frames - 1:  # flow frame k: motion of frame k's pixels to frame k + 1
            flow[k][mask] += (vx, vy)
    rgb += rng.normal(0, 3, size=rgb.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8), flow


def make_synthetic(out: str | Path, *, num_classes: int = 4, groups: int = 9,
                   clips_per_group: int = 3, height: int = 72, width: int = 96,
                   min_frames: int = 8, max_frames: int = 28, bound: float = DEFAULT_BOUND,
                   seed: int = 0) -> Path:
    """Write the dataset under `out` in UCF101's layout; returns `out`.

    Split k (1..3) tests on the groups whose (index - 1) % 3 == k - 1, trains on the rest.
    """
    if groups < 3:
        raise ValueError(f"groups must be >= 3 (one per split), got {groups}")
    out = Path(out)
    rng = np.random.default_rng(seed)
    classes = class_names(num_classes)
    lists = out / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    train = {k: [] for k in (1, 2, 3)}
    test = {k: [] for k in (1, 2, 3)}
    for label, name in enumerate(classes, 1):
        colour, direction = split_class(name)
        for g in range(1, groups + 1):
            background = _background(rng, height, width)
            for c in range(1, clips_per_group + 1):
                video = f"v_{name}_g{g:02d}_c{c:02d}"
                frames = int(rng.integers(min_frames, max_frames + 1))
                rgb, flow = render_video(colour, direction, frames=frames, height=height,
                                         width=width, background=background, rng=rng)
                folders = [out / "jpegs_256" / video, out / "tvl1_flow" / "u" / video,
                           out / "tvl1_flow" / "v" / video]
                for folder in folders:
                    folder.mkdir(parents=True, exist_ok=True)
                for k in range(frames):
                    write_jpeg(folders[0] / f"frame{k + 1:06d}.jpg", rgb[k])
                q = quantize(flow, bound)
                for k in range(frames - 1):
                    write_jpeg(folders[1] / f"frame{k + 1:06d}.jpg", q[k, :, :, 0])
                    write_jpeg(folders[2] / f"frame{k + 1:06d}.jpg", q[k, :, :, 1])
                for split in (1, 2, 3):
                    entry = f"{name}/{video}.avi"
                    if (g - 1) % 3 == split - 1:
                        test[split].append(entry)
                    else:
                        train[split].append(f"{entry} {label}")
    # The official files use Windows line endings; so do these, to keep the parser honest.
    (lists / "classInd.txt").write_text(
        "".join(f"{i} {name}\r\n" for i, name in enumerate(classes, 1)))
    for split in (1, 2, 3):
        (lists / f"trainlist0{split}.txt").write_text("".join(f"{e}\r\n" for e in train[split]))
        (lists / f"testlist0{split}.txt").write_text("".join(f"{e}\r\n" for e in test[split]))
    return out


def still_images(root: str | Path, out: str | Path, every: int = 4) -> Path:
    """Still images cut from the synthetic videos under `root` (every `every`-th RGB frame), as
    the images dataset reads them: `out/<class>/<video>_<frame>.jpg`. A recipe's quick run uses
    them where the full run reads a still-image dataset (seed 001's Stanford 40). Written once;
    returns `out`."""
    root, out = Path(root), Path(out)
    done = out / ".complete"
    if done.is_file():
        return out
    import shutil
    for video in sorted((root / "jpegs_256").iterdir()):
        name = video.name.split("_")[1]  # v_<Class>_gXX_cYY
        (out / name).mkdir(parents=True, exist_ok=True)
        for frame in sorted(video.glob("*.jpg"))[::every]:
            shutil.copyfile(frame, out / name / f"{video.name}_{frame.stem}.jpg")
    done.write_text("")
    return out
