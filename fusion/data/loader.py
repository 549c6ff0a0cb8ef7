"""The sample contract between datasets and the loop: `Sample`, `Batch` and its collate, the
seeded (and padded) distributed sampler, and reading an item with the skip policy.

    loader = DataLoader(dataset, batch_size=8, sampler=SeededSampler(len(dataset), shuffle=True),
                        collate_fn=collate_clips)

A dataset that leaves decoding to the device (`VideoDataset(decode="device")`) yields
`EncodedSample`s instead, collated into an `EncodedBatch` that
`fusion.data.device_decode.decode_batch` turns into a `Batch` on the device.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
from torch.utils.data import Sampler


class FrameError(RuntimeError):
    """A frame that is missing or cannot be decoded; the message names the file and the video."""


@dataclass(frozen=True)
class Skipped:
    """A sample that a dataset with on_bad="skip" could not read, and why."""

    video_id: str
    reason: str


class Sample(NamedTuple):
    """One dataset item. `counted` is False for a stand-in that fills a place without counting
    in any metric: a distributed shard's padding duplicate, or the readable video that takes
    the place of an unreadable one (named in `skipped`)."""

    rgb: torch.Tensor | None
    flow: torch.Tensor | None
    label: int
    video_id: str
    counted: bool = True
    skipped: Skipped | None = None


@dataclass(frozen=True)
class EncodedFrames:
    """One modality of a clip as stored, for decoding on the device: the bytes of each distinct
    frame file (a looping snippet repeats files), and which of them each frame takes.

    data: the files' bytes one after another (uint8, 1-D), `lengths` bytes each; names: the
        files (for errors). A frame is `planes` consecutive files (RGB: 1, flow: 2, u and v).
    order: frame n (clips x segments x stack, as `clip_frames` lists them) -> distinct frame.
    size: (height, width) of every file, from their JPEG headers.
    """

    data: torch.Tensor
    lengths: list[int]
    names: list[str]
    planes: int
    order: list[int]
    size: tuple[int, int]


@dataclass(frozen=True)
class ClipLayout:
    """How a dataset arranges its samples, for decoding on the device: the input side, TSN
    segments and stacks, one view (train, val) or views x clips (test), what a bad frame does,
    and the training augmentation of RGB and flow ("tsn": the drawn crop, "none": the whole
    frame)."""

    image_size: int
    segments: int
    rgb_stack: int
    flow_stack: int
    single_view: bool
    on_bad: str
    augment: tuple[str, str] = ("tsn", "tsn")


class EncodedSample(NamedTuple):
    """A `Sample` not yet decoded: its frames' JPEG bytes and how to crop them, `view`: the
    drawn `CropFlip` in training (None: no stream cropped), else the dataset's
    `EvalTransform`."""

    rgb: EncodedFrames | None
    flow: EncodedFrames | None
    label: int
    video_id: str
    view: object
    layout: ClipLayout
    counted: bool = True
    skipped: Skipped | None = None


class Batch(NamedTuple):
    rgb: torch.Tensor | None
    flow: torch.Tensor | None
    label: torch.Tensor
    video_id: list[str]
    skipped: list[Skipped]
    counted: torch.Tensor  # bool per sample: counts in the metrics


class EncodedBatch(NamedTuple):
    """A batch of `EncodedSample`s; `decode_batch` makes it a `Batch`."""

    samples: list[EncodedSample]
    label: torch.Tensor
    video_id: list[str]
    skipped: list[Skipped]
    counted: torch.Tensor


def collate_clips(samples: list[Sample] | list[EncodedSample]) -> Batch | EncodedBatch:
    """Stack samples, listing the unreadable ones that stand-ins replaced; encoded samples
    stay a list (they are decoded as a batch on the device)."""
    if isinstance(samples[0], EncodedSample):
        return EncodedBatch(_one_storage(samples),
                            torch.tensor([s.label for s in samples], dtype=torch.long),
                            [s.video_id for s in samples],
                            [s.skipped for s in samples if s.skipped],
                            torch.tensor([s.counted for s in samples], dtype=torch.bool))

    def stack(i):
        return None if samples[0][i] is None else torch.stack([s[i] for s in samples])
    return Batch(stack(0), stack(1), torch.tensor([s.label for s in samples], dtype=torch.long),
                 [s.video_id for s in samples], [s.skipped for s in samples if s.skipped],
                 torch.tensor([s.counted for s in samples], dtype=torch.bool))


def _one_storage(samples: list[EncodedSample]) -> list[EncodedSample]:
    """The samples with their bytes moved into one tensor (each `data` a view of it): a batch
    then travels from a loader worker in one shared-memory block, not one per sample and
    modality."""
    frames = [f for s in samples for f in (s.rgb, s.flow) if f is not None]
    joined = torch.cat([f.data for f in frames])
    moved, at = {}, 0
    for f in frames:
        moved[id(f)] = replace(f, data=joined[at:at + len(f.data)])
        at += len(f.data)
    return [s._replace(rgb=None if s.rgb is None else moved[id(s.rgb)],
                       flow=None if s.flow is None else moved[id(s.flow)]) for s in samples]


def read_sample(dataset, key) -> Sample:
    """`dataset.sample(seed, i)` for a key `i`, `(seed, i)` or `(seed, i, counted)` (from
    `SeededSampler`). With on_bad="skip" an unreadable item is replaced by the next readable
    one, not counted: batches keep their size, so BatchNorm never sees a batch of one and every
    process of a distributed run takes the same steps."""
    seed, i, counted = (key + (True,))[:3] if isinstance(key, tuple) else (None, key, True)
    try:
        return dataset.sample(seed, i)._replace(counted=counted)
    except FrameError as err:
        if dataset.on_bad == "raise":
            raise
        dataset.skipped += 1
        skipped = Skipped(dataset.item_id(i), str(err))
    for step in range(1, len(dataset)):
        try:
            stand_in = dataset.sample(seed, (i + step) % len(dataset))
        except FrameError:
            continue
        return stand_in._replace(counted=False, skipped=skipped)
    raise FrameError(f"no item of the split can be read; the first: {skipped.reason}")


def seeded(seed: int | None, load, *args):
    """`load(*args)` with torch's CPU generator seeded by `seed` and restored afterwards, so a
    sample's random augmentation depends on its seed alone (None: the generator as it is)."""
    if seed is None:
        return load(*args)
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also queue seeds for every
        # accelerator backend, which costs about a millisecond per call
        torch.default_generator.manual_seed(seed)
        return load(*args)


class SeededSampler(Sampler):
    """Sample order and per-sample augmentation seeds fixed by (seed, epoch), sharded over
    ranks like DistributedSampler: the order is padded with its own first items to a multiple
    of the ranks, and rank r takes positions r, r + world, ... So every rank gets the same
    number of samples (and of steps: a rank with one step more would wait forever in the
    gradient all-reduce); the padding duplicates are marked not to count in any metric.
    Yields (sample seed, index, counted) for `VideoDataset`.

    Nothing depends on the worker processes or their state, so persistent workers, any number
    of workers, and a resumed run all see the same samples with the same augmentation.
    """

    def __init__(self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0,
                 world: int = 1):
        if size < 1:
            raise ValueError("cannot sample from an empty dataset")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        base = (self.seed * 1_000_003 + self.epoch) * 1_000_033
        if self.shuffle:
            g = torch.Generator().manual_seed(base)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = len(self) * self.world
        padded = (order * (total // self.size + 1))[:total]
        for position in range(self.rank, total, self.world):
            i = padded[position]
            yield (base + i) % 2**63, i, position < self.size

    def __len__(self) -> int:
        return -(-self.size // self.world)  # ceil: the padded shard
