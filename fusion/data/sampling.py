"""Which frames a clip takes from a video (TSN segments, flow and RGB stacks, test clips).

A snippet starts at position s: it takes the flow frames s .. s+L-1, which span the RGB frames
s .. s+L (flow frame k is the motion k -> k + 1), and the L_rgb RGB frames centred in that span,
s + (L + 1 - L_rgb) // 2 onwards (s + 5 for L = 10, L_rgb = 1: frame 5 of 0 .. 10). `centred_start`
is the one rule for centring, used here and by the model when a stream takes the middle frames
of a longer RGB input. Positions run over 0 .. num_positions - 1,
where num_positions = frames - span + 1; shorter videos loop (seed 002), so every index returned
by `snippet_indices` is already wrapped into the video.

`spread-around-middle` (seed 001) spans L + 1 frames that are not consecutive: the middle frame
and L / 2 frames either side of it (`spread_around_middle`). Its flow frames 0 .. L-1 are the
motion between consecutive frames of that selection, extracted for it (extract_frames.py
--flow-pairs spread-around-middle), and its RGB frames are taken from the selection.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fusion.choices import FRAME_TYPES, resolve_name

# Single-frame choices for the spatial stream (seed 001's study), as a fraction of the video.
FRAME_POLICIES = {"first": 0.0, "first-middle": 0.25, "middle": 0.5, "middle-last": 0.75,
                  "last": 1.0}
SPREAD = "spread-around-middle"
POLICIES = ("tsn", "random", *FRAME_POLICIES, SPREAD)
FLOW_PAIRS = ("consecutive", SPREAD)  # which frames a stored flow frame joins


@dataclass(frozen=True)
class ClipSpec:
    """What a sample reads from a video: its modalities (RGB, flow), T `segments` of snippets
    of `flow_stack` flow and `rgb_stack` RGB frames, the `frame_policy` ("tsn", or a
    single-frame choice for T = 1), and `num_clips` clips per video in the test protocol.

    One object from the config (`fusion.build.clip_spec`) to `VideoDataset`, handed through
    the dataset factories untouched, so a sampling option is added here and in the config,
    nothing in between."""

    modalities: Sequence[str] = FRAME_TYPES
    segments: int = 1
    flow_stack: int = 10
    rgb_stack: int = 1
    frame_policy: str = "tsn"
    num_clips: int = 25  # the test protocol's; other modes read one clip

    def __post_init__(self):
        # a tuple: the spec is immutable (and hashable), a config's list is neither
        object.__setattr__(self, "modalities", tuple(self.modalities))
        resolve_name(self.frame_policy, POLICIES, "frame_policy")
        for m in self.modalities:
            resolve_name(m, FRAME_TYPES, "modality")
        if not self.modalities:
            raise ValueError("at least one modality (rgb, flow) must be on")
        if self.frame_policy != "tsn" and self.segments != 1:
            raise ValueError(f"frame_policy {self.frame_policy!r} picks one snippet: use "
                             f"segments=1")

    @property
    def use_rgb(self) -> bool:
        return "rgb" in self.modalities

    @property
    def use_flow(self) -> bool:
        return "flow" in self.modalities


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
    if policy == "middle":
        # seed 001's notebooks take frame_count // 2 (the later of two middles; round() would
        # round half to even and pick the earlier one for 98 of the lengths 9 .. 399)
        return max(num_positions, 1) // 2
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


def spread_around_middle(frames: int, flow_stack: int) -> list[int]:
    """Seed 001's frames: the middle frame m, L / 2 frames before it at steps of m / L (the last
    L / 2 of the L + 1 points from frame 0 to m, m excluded) and L / 2 after it at steps of
    (last - m) / L (the first L / 2 of the points from m to the last frame), rounded down;
    L = 8 gives the report's 9 frames at eighths. m is the `middle` policy's frame, so a
    spatial stream trained on middle frames sees the same frame here. A video shorter than
    L + 1 frames repeats frames (zero flow between the repeats)."""
    if flow_stack < 2 or flow_stack % 2:
        raise ValueError(f"{SPREAD} needs an even flow_stack >= 2, got {flow_stack}")
    if frames < 1:
        raise ValueError(f"a video needs at least one frame, got {frames}")
    half, last = flow_stack // 2, frames - 1
    middle = policy_start(frames, "middle")
    before = [middle * k // flow_stack for k in range(flow_stack - half, flow_stack)]
    after = [middle + (last - middle) * k // flow_stack for k in range(1, half + 1)]
    return before + [middle] + after


def centred_start(span: int, length: int) -> int:
    """Offset of `length` frames centred in `span` frames (the earlier of the two middles when
    the parities differ; negative when `length` is the longer)."""
    return (span - length) // 2


def snippet_indices(start: int, length: int, frames: int) -> list[int]:
    """`length` consecutive frame indices from `start`, looping over a video of `frames`."""
    return [(start + i) % frames for i in range(length)]


def snippet_frames(starts: list[int], *, flow_stack: int, rgb_stack: int, flow_frames: int,
                   rgb_frames: int, use_flow: bool, use_rgb: bool):
    """Frame indices of the snippets at `starts`: (rgb indices, flow indices), None when off.

    RGB frames sit centred in the span of the flow window: flow frames s .. s+L-1 are the
    motion across RGB frames s .. s+L, so the RGB frames start at s + centred_start(L + 1, L_rgb).
    """
    flow = rgb = None
    if use_flow:
        flow = [i for s in starts for i in snippet_indices(s, flow_stack, flow_frames)]
    if use_rgb:
        offset = centred_start(flow_stack + 1, rgb_stack) if use_flow else 0
        # a window wider than the flow span starts before it, but never before the video
        rgb = [i for s in starts
               for i in snippet_indices(max(s + offset, 0), rgb_stack, rgb_frames)]
    return rgb, flow


def positions(*, flow_stack: int, rgb_stack: int, flow_frames: int, rgb_frames: int,
              use_flow: bool) -> int:
    """Number of snippet starts that need no looping (may be < 1 for short videos)."""
    return flow_frames - flow_stack + 1 if use_flow else rgb_frames - rgb_stack + 1


def clip_frames(*, mode: str, policy: str, segments: int, clips: int, flow_stack: int,
                rgb_stack: int, flow_frames: int, rgb_frames: int, use_flow: bool,
                use_rgb: bool):
    """The one decision of which frames a clip reads, for the dataset and for `predict.py`:
    (RGB indices, flow indices), clips x segments x stack of each, None when off.

    mode "train": random TSN segments (or the policy's frame); "val": the segments' centres;
    "test": `clips` clips of the protocol. A single-frame `policy` (seed 001) picks its frame
    instead of TSN segments; "random" becomes "middle" outside training. With
    `spread-around-middle` the flow frames are the video's stored ones, 0 .. L-1 (see the
    module docstring), and the RGB frames the selection's centred ones, in every clip.
    """
    if policy == SPREAD:
        flow = list(range(flow_stack)) * clips if use_flow else None
        if not use_rgb:  # a flow stream alone knows no RGB frame count
            return None, flow
        selection = spread_around_middle(rgb_frames, flow_stack)
        offset = centred_start(flow_stack + 1, rgb_stack)
        if offset < 0:
            raise ValueError(f"{SPREAD} selects {flow_stack + 1} frames; an RGB stack of "
                             f"{rgb_stack} does not fit in them")
        return selection[offset:offset + rgb_stack] * clips, flow
    n = positions(flow_stack=flow_stack, rgb_stack=rgb_stack, flow_frames=flow_frames,
                  rgb_frames=rgb_frames, use_flow=use_flow)
    if policy != "tsn":
        if policy == "random" and mode != "train":
            policy = "middle"  # evaluation stays deterministic
        starts = [[policy_start(n, policy)]] * clips
    elif mode == "test":
        starts = protocol_clip_starts(n, segments, clips)
    else:
        starts = [segment_starts(n, segments, train=mode == "train")]
    return snippet_frames([s for clip in starts for s in clip], flow_stack=flow_stack,
                          rgb_stack=rgb_stack, flow_frames=flow_frames, rgb_frames=rgb_frames,
                          use_flow=use_flow, use_rgb=use_rgb)
