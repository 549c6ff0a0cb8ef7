"""Which frames a clip takes from a video (TSN segments, flow and RGB stacks, test clips).

A snippet starts at position s: it takes the flow frames s .. s+L-1 and the RGB frames centred in
that window, s + (L - L_rgb) // 2 .. + L_rgb - 1. Positions run over 0 .. num_positions - 1,
where num_positions = frames - span + 1; shorter videos loop (seed 002), so every index returned
by `snippet_indices` is already wrapped into the video.
"""
from __future__ import annotations

import torch

# Single-frame choices for the spatial stream (seed 001's study), as a fraction of the video.
FRAME_POLICIES = {"first": 0.0, "first-middle": 0.25, "middle": 0.5, "middle-last": 0.75,
                  "last": 1.0}
POLICIES = ("tsn", "random", *FRAME_POLICIES)


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (1,), generator=generator).item())


def segment_starts(num_positions: int, segments: int, *, train: bool,
                   generator: torch.Generator | None = None) -> list[int]:
    """TSN: split the positions into `segments` equal parts, one snippet in each (random
    within its part in training, the part's centre at evaluation)."""
    if segments < 1:
        raise ValueError(f"segments must be >= 1, got {segments}")
    if num_positions < 1:
        return [0] * segments
    if not train:  # the centre of segment i, in integers to avoid float truncation
        return [(2 * i + 1) * num_positions // (2 * segments) for i in range(segments)]
    length = num_positions // segments
    if length > 0:
        return [i * length + _randint(length, generator) for i in range(segments)]
    # Fewer positions than segments: random positions, in order, repeating as needed.
    return sorted(_randint(num_positions, generator) for _ in range(segments))


def policy_start(num_positions: int, policy: str, *,
                 generator: torch.Generator | None = None) -> int:
    """One snippet chosen by a single-frame policy (`middle`, `first`, ..., `random`)."""
    if policy == "random":
        return _randint(max(num_positions, 1), generator)
    fraction = FRAME_POLICIES[policy]
    return round(fraction * max(num_positions - 1, 0))


def protocol_clip_starts(num_positions: int, segments: int, clips: int) -> list[list[int]]:
    """The test protocol's N clips: clip i puts its T segments at phase (i + 1/2) / N of each
    segment, so with T = 1 the clips are N uniformly spaced snippets (Simonyan: 25)."""
    if clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    if num_positions < 1:
        return [[0] * segments for _ in range(clips)]
    # floor(num_positions / segments * (t + (i + 1/2) / clips)), in integers
    return [[(2 * t * clips + 2 * i + 1) * num_positions // (2 * segments * clips)
             for t in range(segments)] for i in range(clips)]


def snippet_indices(start: int, length: int, frames: int) -> list[int]:
    """`length` consecutive frame indices from `start`, looping over a video of `frames`."""
    return [(start + i) % frames for i in range(length)]


def snippet_frames(starts: list[int], *, flow_stack: int, rgb_stack: int, flow_frames: int,
                   rgb_frames: int, use_flow: bool, use_rgb: bool):
    """Frame indices of the snippets at `starts`: (rgb indices, flow indices), None when off.

    RGB frames sit centred in the flow window (flow frame k is the motion k -> k + 1).
    """
    flow = rgb = None
    if use_flow:
        flow = [i for s in starts for i in snippet_indices(s, flow_stack, flow_frames)]
    if use_rgb:
        offset = max((flow_stack - rgb_stack) // 2, 0) if use_flow else 0
        rgb = [i for s in starts for i in snippet_indices(s + offset, rgb_stack, rgb_frames)]
    return rgb, flow


def positions(*, flow_stack: int, rgb_stack: int, flow_frames: int, rgb_frames: int,
              use_flow: bool) -> int:
    """Number of snippet starts that need no looping (may be < 1 for short videos)."""
    return flow_frames - flow_stack + 1 if use_flow else rgb_frames - rgb_stack + 1
