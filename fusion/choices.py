"""The shared vocabularies, one name each, and the one helper that checks a name against them.

Config keys, dataset arguments and model builders all check their selectors with
`resolve_name`, so a typo fails the same way everywhere: naming what was asked for and
listing what is valid.
"""
from __future__ import annotations

DATASET_NAMES = ("synthetic", "ucf101", "hmdb51", "folder", "rawframes", "images")  # `dataset`
FRAME_TYPES = ("rgb", "flow")  # what a video dataset reads from disk
MODALITIES = ("rgb", "flow", "rgbdiff")  # what a stream takes as input
FLOW_FORMATS = ("uv", "rgb")  # how a flow stream sees a flow frame: u, v or a colour image
MODES = ("train", "val", "test")  # how a dataset samples and transforms
SUBSETS = ("train", "val", "test")  # which part of a split a dataset holds
ON_BAD = ("raise", "skip")  # what an unreadable frame does
DECODE_PLACES = ("cpu", "device")  # where a video dataset's JPEG frames are decoded
FRAME_STORES = ("auto", "loose", "packed")  # how a root keeps its frames: files or packs
FREEZE_MODES = ("none", "streams", "bn")  # what training holds fixed
KEPT_AVERAGES = ("logits", "softmax")  # how kept heads join the fused scores
FUSION_BN = ("auto", "on", "off")  # conv fusions: BatchNorm + ReLU after the conv?


def resolve_name(name: str, valid: tuple[str, ...] | list[str], what: str) -> str:
    """Return `name` if valid, else fail listing the valid names (one helper for every selector)."""
    if name not in valid:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(valid)}")
    return name
