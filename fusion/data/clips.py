"""A video as frame folders, reading its frames, and the Dataset that turns videos into clips.

Every dataset yields a `Sample` `(rgb, flow, label, video_id, counted, skipped)`:
    rgb   uint8 T x 3*L_rgb x H x W   (None when RGB is switched off)
    flow  uint8 T x 2*L x H x W       (u1, v1, u2, v2, ...; None when flow is switched off), or
          T x 3*L x H x W with flow stored as colour images (flow_format "rgb")
In the test protocol (mode="test") both get a leading axis of V = clips x crops views.
With decode="device" it yields an `EncodedSample` instead: the same frames' JPEG bytes and the
same drawn crop, decoded and augmented a batch at a time on the device (`device_decode`).

    train = VideoDataset(videos, classes, mode="train",
                         clip=ClipSpec(segments=3, flow_stack=10))
(`fusion.data.splits` makes the videos of UCF101, HMDB51 and folder datasets.)
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from einops import rearrange
from torch.utils.data import Dataset

from fusion.choices import DECODE_PLACES, MODES, ON_BAD, resolve_name
from fusion.data.imagefiles import DecodeError, jpeg_size, read_ahead, read_bytes, read_image
from fusion.data.packs import MARK
from fusion.data.loader import (ClipLayout, EncodedFrames, EncodedSample, FrameError, Sample,
                                read_sample, seeded)
from fusion.data.sampling import SPREAD, ClipSpec, clip_frames
from fusion.data.transforms import (EvalTransform, TrainTransform, device_unsupported,
                                    single_view)

FRAME_TEMPLATE = "frame{:06d}.jpg"  # 1-based, as in Feichtenhofer's jpegs_256 / tvl1_flow
COLOUR_FLOW_TEMPLATE = "frame{:06d}.png"  # flow_format rgb: lossless colour images


def flow_components(flow_format: str) -> tuple[str, ...]:
    """The folders a video's flow is stored in, by flow format: u and v, or rgb, the colour
    images (named flow_rgb inside a folder-layout video, rgb beside u and v in tvl1_flow/)."""
    return ("rgb",) if flow_format == "rgb" else ("u", "v")

# Seed report 001's 12 HMDB51 classes (matched to 12 Stanford 40 actions).


@dataclass
class Video:
    """A video's frame folders and how its files are named: frame k (0-based) of a folder is
    `template.format(first + k)`. Flow u and v may share one folder (MMAction2's rawframes:
    flow_x_00001.jpg, flow_y_00001.jpg beside img_00001.jpg)."""

    video_id: str
    label: int
    # folders: Paths, or strings under a packed root (`<root>/packs/v_X.tar/jpegs_256/v_X`)
    rgb_dir: str | Path | None = None
    flow_dirs: tuple[str | Path, ...] | None = None  # u, v; or one folder of colour images
    rgb_frames: int = 0
    flow_frames: int = 0
    rgb_template: str = FRAME_TEMPLATE
    flow_templates: tuple[str, ...] = (FRAME_TEMPLATE, FRAME_TEMPLATE)
    rgb_first: int = 1
    flow_first: int = 1
    total_frames: int = 0  # what a list file says (MMAction2's rawframes), 0: not given


def frame_path(folder: str, template: str, first: int, i: int) -> str:
    """The file of 0-based frame i of a folder."""
    return os.path.join(folder, template.format(first + i))


def _folders(folders: str | Path | Sequence[str | Path], templates: str | Sequence[str]):
    # one folder (a Path, or a string: a packed store's folders are strings) or several
    single = isinstance(folders, (str, os.PathLike))
    folders = [os.fspath(folders)] if single else [os.fspath(f) for f in folders]
    templates = [templates] * len(folders) if isinstance(templates, str) else list(templates)
    return folders, templates


def read_clip_ahead(video: Video, rgb_idx: Sequence[int] | None,
                    flow_idx: Sequence[int] | None) -> None:
    """The files of a clip's RGB and flow frames, read ahead where that saves reads: a packed
    video's (a clip's frames lie in one stretch of its pack: one positioned read for them all,
    `packs.read_ahead`); loose files are read one by one anyway."""
    wanted = []
    if flow_idx is not None:
        wanted.append((video.flow_dirs, video.flow_templates, video.flow_first, flow_idx))
    if rgb_idx is not None:
        wanted.append(((video.rgb_dir,), (video.rgb_template,), video.rgb_first, rgb_idx))
    folders = []
    for dirs, templates, first, indices in wanted:
        for folder, template in zip(dirs, templates):
            folder = os.fspath(folder)
            if MARK in folder:
                folders.append((folder, [template.format(first + i)
                                         for i in dict.fromkeys(indices)]))
    if folders:
        read_ahead(folders)


def read_frames(folders: str | Path | Sequence[str | Path], indices: Sequence[int], *, gray: bool,
                video_id: str, templates: str | Sequence[str] = FRAME_TEMPLATE,
                first: int = 1) -> torch.Tensor:
    """Decode the frames at 0-based `indices` -> N x C x H x W uint8; frame i of a folder is
    its file `template.format(first + i)` (one template, or one per folder).

    RGB (one folder, C = 3) comes back channels-last in memory, as decoded: torch's uint8
    resize is fastest on that layout. Grayscale frames from several folders (flow u and v)
    come back as planes, one channel per folder, interleaved per frame (u1, v1, u2, v2, ...),
    which the transform resizes four at a time. Each file is decoded once, even where a looping
    snippet repeats it, straight into the output.
    """
    folders, templates = _folders(folders, templates)
    if not gray and len(folders) != 1:
        raise ValueError("RGB frames come from one folder")
    out = None
    first_at: dict[int, int] = {}
    for n, i in enumerate(indices):
        if i in first_at:
            out[n] = out[first_at[i]]
            continue
        first_at[i] = n
        for c, (folder, template) in enumerate(zip(folders, templates)):
            path = frame_path(folder, template, first, i)
            try:
                image = read_image(path, gray=gray)
            except DecodeError as err:
                raise FrameError(f"cannot read frame {path} of video {video_id}: {err}") from err
            if out is None:
                size = image.shape[:2]
                shape = (len(folders), *size) if gray else image.shape
                out = np.empty((len(indices), *shape), dtype=np.uint8)
            if image.shape[:2] != size:
                raise FrameError(f"frame {path} of video {video_id} is {image.shape[:2]}, "
                                 f"the video's first frame {size}")
            if gray:
                out[n, c] = image
            else:
                out[n] = image
    frames = torch.from_numpy(out)
    return frames if gray else frames.permute(0, 3, 1, 2)


def read_encoded(folders: str | Path | Sequence[str | Path], indices: Sequence[int], *, video_id: str,
                 templates: str | Sequence[str] = FRAME_TEMPLATE,
                 first: int = 1) -> EncodedFrames:
    """`read_frames` without decoding, for decoding on the device: the same files' bytes, each
    read once, checked as far as the bytes and JPEG headers tell (missing, empty, truncated,
    not a JPEG, another size than the first frame: a `FrameError` naming the file)."""
    folders, templates = _folders(folders, templates)
    distinct: dict[int, int] = {}
    order = [distinct.setdefault(i, len(distinct)) for i in indices]
    chunks, names, size = [], [], None
    for i in distinct:
        for folder, template in zip(folders, templates):
            path = frame_path(folder, template, first, i)
            try:
                data = read_bytes(path)
                shape = jpeg_size(data)
            except DecodeError as err:
                raise FrameError(f"cannot read frame {path} of video {video_id}: {err}") from err
            size = size or shape
            if shape != size:
                raise FrameError(f"frame {path} of video {video_id} is {shape}, the video's "
                                 f"first frame {size}")
            chunks.append(data)
            names.append(path)
    data = torch.frombuffer(bytearray(b"".join(chunks)), dtype=torch.uint8)
    return EncodedFrames(data, [len(c) for c in chunks], names, len(folders), order, size)


def match_flow_size(rgb: torch.Tensor | None, flow: torch.Tensor | None) -> torch.Tensor | None:
    """Flow frames resized to the RGB frames' size where the two differ (`... x H x W`)."""
    if rgb is not None and flow is not None and flow.shape[-2:] != rgb.shape[-2:]:
        return TF.resize(flow, list(rgb.shape[-2:]), antialias=True)
    return flow


def arrange_frames(x: torch.Tensor | None, stack: int, *, views: bool, segments: int,
                   single_view: bool) -> torch.Tensor | None:
    """One modality's transformed frames -> model input, for a sample or a batch (leading
    axes ...): ... N x C x H x W (training) -> ... T x (L C) x H x W; with `views` (evaluation)
    ... V x N x C x H x W -> ... (V clips) x T x (L C) x H x W, or its first view with
    `single_view`."""
    if x is None:
        return None
    if not views:
        return rearrange(x, "... (t l) c h w -> ... t (l c) h w", l=stack)
    # views and clips both become one axis
    clips = x.shape[-4] // (segments * stack)
    x = rearrange(x, "... v (k t l) c h w -> ... (v k) t (l c) h w", k=clips, l=stack)
    return x.select(-5, 0) if single_view else x


def arrange_sample(rgb: torch.Tensor | None, flow: torch.Tensor | None, transform, *,
                   segments: int, rgb_stack: int, flow_stack: int, single_view: bool):
    """Decoded snippet frames (N x C x H x W, N = clips x T x L) -> transformed model input:
    T x (L C) x H x W, or V x T x (L C) x H x W with views x clips first in the test protocol."""
    rgb, flow = transform(rgb, match_flow_size(rgb, flow))
    views = (rgb if rgb is not None else flow).dim() == 5  # V x N x C x H x W
    args = dict(views=views, segments=segments, single_view=single_view)
    return arrange_frames(rgb, rgb_stack, **args), arrange_frames(flow, flow_stack, **args)


class VideoDataset(Dataset):
    """Clips from a list of videos: segment / stack sampling, then one transform per sample.

    mode: "train" (random segments, `TrainTransform`), "val" (centred segments, one view:
        the whole frame when `crops` is "full", else the centre crop) or
        "test" (`clip.num_clips` clips x `crops` views per video).
    clip: what a sample reads (`ClipSpec`): modalities, segments, stacks and the frame
        policy, "tsn" (segments), or a single-frame choice for T = 1: middle, first, last,
        first-middle, middle-last, random, spread-around-middle (seed 001; its flow frames
        are extracted for it, see `fusion.data.sampling`).
    on_bad: "raise" (a bad frame is an error naming the file) or "skip" (the sample is replaced
        by the next readable one, which counts in no metric, and counted in `skipped`).
    decode: "cpu" (decoded and augmented here) or "device" (`EncodedSample`s: bytes and the
        drawn crop, for `device_decode.decode_batch`; only for transforms it reproduces).
    """

    def __init__(self, videos: list[Video], classes: list[str], *, mode: str = "train",
                 clip: ClipSpec = ClipSpec(), image_size: int = 224, transform=None,
                 crops: str = "center", on_bad: str = "raise", decode: str = "cpu"):
        resolve_name(mode, MODES, "mode")
        resolve_name(on_bad, ON_BAD, "on_bad")
        resolve_name(decode, DECODE_PLACES, "decode")
        if not videos:
            raise ValueError("the split holds no videos")
        self.videos, self.classes = videos, classes
        self.mode, self.on_bad, self.clip = mode, on_bad, clip
        self.num_clips = clip.num_clips if mode == "test" else 1
        if transform is None:
            transform = (TrainTransform(image_size) if mode == "train" else
                         EvalTransform(image_size, crops if mode == "test" else single_view(crops)))
        self.transform = transform
        self.decode = decode
        if decode == "device":
            unsupported = device_unsupported(transform)
            if unsupported:
                raise ValueError(f"decode 'device' cannot reproduce the {mode} transform's "
                                 f"{', '.join(unsupported)} exactly; decode on the CPU")
            if clip.use_flow and any(v.flow_dirs and len(v.flow_dirs) == 1 for v in videos):
                raise ValueError("decode 'device' decodes JPEG frames; flow stored as colour "
                                 "images (PNG, flow_format 'rgb') is decoded on the CPU")
            augment = (transform.rgb, transform.flow) if isinstance(transform, TrainTransform) \
                else ("none", "none")
            self.layout = ClipLayout(transform.image_size, clip.segments, clip.rgb_stack,
                                     clip.flow_stack, single_view=mode != "test", on_bad=on_bad,
                                     augment=augment)
        self.skipped = 0
        self.notes: list[str] = []  # what reading the dataset found, for the run's log

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def labels(self) -> list[int]:
        return [v.label for v in self.videos]

    @property
    def views_per_video(self) -> int:
        """Model inputs per video: clips x crops in the test protocol, else 1."""
        return self.num_clips * self.transform.views if self.mode == "test" else 1

    def frame_indices(self, video: Video):
        """(RGB indices, flow indices) of the video's clip: `clip_frames` (draws in training)."""
        c = self.clip
        if c.frame_policy == SPREAD and c.use_flow and video.flow_frames != c.flow_stack:
            raise FrameError(
                f"video {video.video_id} has {video.flow_frames} flow frames in "
                f"{video.flow_dirs[0]}; frame_policy {SPREAD} reads exactly flow_stack = "
                f"{c.flow_stack}, the flow between its spread frames (extract with "
                f"extract_frames.py --flow-pairs {SPREAD} --flow-stack {c.flow_stack})")
        return clip_frames(
            mode=self.mode, policy=c.frame_policy, segments=c.segments, clips=self.num_clips,
            flow_stack=c.flow_stack, rgb_stack=c.rgb_stack, flow_frames=video.flow_frames,
            rgb_frames=video.rgb_frames, use_flow=c.use_flow, use_rgb=c.use_rgb)

    def load(self, video: Video) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        rgb_idx, flow_idx = self.frame_indices(video)
        read_clip_ahead(video, rgb_idx, flow_idx)
        rgb = flow = None
        if flow_idx is not None:  # N x 2 x H x W (u, v), or N x 3 x H x W (colour images)
            colour = len(video.flow_dirs) == 1
            flow = read_frames(video.flow_dirs[0] if colour else video.flow_dirs, flow_idx,
                               gray=not colour, video_id=video.video_id,
                               templates=video.flow_templates[0] if colour
                               else video.flow_templates, first=video.flow_first)
        if rgb_idx is not None:
            rgb = read_frames(video.rgb_dir, rgb_idx, gray=False, video_id=video.video_id,
                              templates=video.rgb_template, first=video.rgb_first)
        return arrange_sample(rgb, flow, self.transform, segments=self.clip.segments,
                              rgb_stack=self.clip.rgb_stack, flow_stack=self.clip.flow_stack,
                              single_view=self.mode != "test")

    def encode(self, video: Video):
        """`load` up to decoding: (RGB, flow) `EncodedFrames` and the view, the crop and flip
        drawn as `load` draws them (training) or the evaluation transform."""
        rgb_idx, flow_idx = self.frame_indices(video)
        read_clip_ahead(video, rgb_idx, flow_idx)
        rgb = flow = None
        if flow_idx is not None:
            flow = read_encoded(video.flow_dirs, flow_idx, video_id=video.video_id,
                                templates=video.flow_templates, first=video.flow_first)
        if rgb_idx is not None:
            rgb = read_encoded(video.rgb_dir, rgb_idx, video_id=video.video_id,
                               templates=video.rgb_template, first=video.rgb_first)
        if not isinstance(self.transform, TrainTransform):
            return rgb, flow, self.transform
        rgb_size = None if rgb is None else rgb.size
        flow_size = None if flow is None else rgb_size or flow.size  # resized to RGB's first
        return rgb, flow, self.transform.draw(rgb_size, flow_size)

    def __getitem__(self, key) -> Sample:
        """`dataset[i]`, or `dataset[(seed, i, counted)]` from `SeededSampler`: the sample's
        random crops and flips then come from that seed alone, whichever worker or rank loads
        it (`read_sample`)."""
        return read_sample(self, key)

    def sample(self, seed: int | None, i: int) -> Sample:
        video = self.videos[i]
        if self.decode == "device":
            rgb, flow, view = seeded(seed, self.encode, video)
            return EncodedSample(rgb, flow, video.label, video.video_id, view, self.layout)
        rgb, flow = seeded(seed, self.load, video)
        return Sample(rgb, flow, video.label, video.video_id)

    def item_id(self, i: int) -> str:
        return self.videos[i].video_id
