"""UCF101, HMDB51 and folder datasets read in the layouts of the public releases (DESIGN §5).

Every dataset yields a `Sample` `(rgb, flow, label, video_id, counted, skipped)`:
    rgb   uint8 T x 3*L_rgb x H x W   (None when RGB is switched off)
    flow  uint8 T x 2*L x H x W       (u1, v1, u2, v2, ...; None when flow is switched off)
In the test protocol (mode="test") both get a leading axis of V = clips x crops views.

    train = ucf101("/data/ucf101", split=1, subset="train", segments=3, flow_stack=10)
    loader = DataLoader(train, batch_size=8, collate_fn=collate_clips, num_workers=2)
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from einops import rearrange
from torch.utils.data import Dataset, Sampler

from fusion.data.imagefiles import DecodeError, read_image
from fusion.data.index import FrameIndex
from fusion.data.sampling import (POLICIES, policy_start, positions, protocol_clip_starts,
                                  segment_starts, snippet_frames)
from fusion.data.transforms import EvalTransform, TrainTransform
from fusion.streams import resolve_name

MODES = ("train", "val", "test")
ON_BAD = ("raise", "skip")
MODALITIES = ("rgb", "flow")
FRAME_TEMPLATE = "frame{:06d}.jpg"  # 1-based, as in Feichtenhofer's jpegs_256 / tvl1_flow

# Seed report 001's 12 HMDB51 classes (matched to 12 Stanford 40 actions).
HMDB51_SEED001_CLASSES = ("clap", "climb", "drink", "jump", "pour", "ride_bike", "ride_horse",
                          "run", "shoot_bow", "smoke", "throw", "wave")


class FrameError(RuntimeError):
    """A frame that is missing or cannot be decoded; the message names the file and the video."""


@dataclass
class Video:
    video_id: str
    label: int
    rgb_dir: Path | None = None
    flow_dirs: tuple[Path, Path] | None = None
    rgb_frames: int = 0
    flow_frames: int = 0


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


class Batch(NamedTuple):
    rgb: torch.Tensor | None
    flow: torch.Tensor | None
    label: torch.Tensor
    video_id: list[str]
    skipped: list[Skipped]
    counted: torch.Tensor  # bool per sample: counts in the metrics


def collate_clips(samples: list[Sample]) -> Batch:
    """Stack samples, listing the unreadable ones that stand-ins replaced."""
    def stack(i):
        return None if samples[0][i] is None else torch.stack([s[i] for s in samples])
    return Batch(stack(0), stack(1), torch.tensor([s.label for s in samples], dtype=torch.long),
                 [s.video_id for s in samples], [s.skipped for s in samples if s.skipped],
                 torch.tensor([s.counted for s in samples], dtype=torch.bool))


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


def read_frames(folders: Path | Sequence[Path], indices: Sequence[int], *, gray: bool,
                video_id: str, template: str = FRAME_TEMPLATE) -> torch.Tensor:
    """Decode the frames at 0-based `indices` -> N x C x H x W uint8.

    RGB (one folder, C = 3) comes back channels-last in memory, as decoded: torch's uint8
    resize is fastest on that layout. Grayscale frames from several folders (flow u and v)
    come back as planes, one channel per folder, interleaved per frame (u1, v1, u2, v2, ...),
    which the transform resizes four at a time. Each file is decoded once, even where a looping
    snippet repeats it, straight into the output.
    """
    folders = [str(folders)] if isinstance(folders, Path) else [str(f) for f in folders]
    if not gray and len(folders) != 1:
        raise ValueError("RGB frames come from one folder")
    out = None
    first_at: dict[int, int] = {}
    for n, i in enumerate(indices):
        if i in first_at:
            out[n] = out[first_at[i]]
            continue
        first_at[i] = n
        for c, folder in enumerate(folders):
            path = os.path.join(folder, template.format(i + 1))
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


def arrange_sample(rgb: torch.Tensor | None, flow: torch.Tensor | None, transform, *,
                   segments: int, rgb_stack: int, flow_stack: int, single_view: bool):
    """Decoded snippet frames (N x C x H x W, N = clips x T x L) -> transformed model input:
    T x (L C) x H x W, or V x T x (L C) x H x W with views x clips first in the test protocol."""
    if rgb is not None and flow is not None and flow.shape[-2:] != rgb.shape[-2:]:
        flow = TF.resize(flow, list(rgb.shape[-2:]), antialias=True)
    rgb, flow = transform(rgb, flow)

    def arrange(x, stack):
        if x is None:
            return None
        if x.dim() == 4:  # training: N x C x H x W
            return rearrange(x, "(t l) c h w -> t (l c) h w", l=stack)
        # evaluation: V x N x C x H x W; views and clips both become the leading axis
        clips = x.shape[1] // (segments * stack)
        x = rearrange(x, "v (k t l) c h w -> (v k) t (l c) h w", k=clips, l=stack)
        return x[0] if single_view else x
    return arrange(rgb, rgb_stack), arrange(flow, flow_stack)


class VideoDataset(Dataset):
    """Clips from a list of videos: segment / stack sampling, then one transform per sample.

    mode: "train" (random segments, `TrainTransform`), "val" (centred segments, centre crop) or
        "test" (`num_clips` clips x `crops` views per video).
    frame_policy: "tsn" (segments), or a single-frame choice for T = 1: middle, first, last,
        first-middle, middle-last, random (seed 001).
    on_bad: "raise" (a bad frame is an error naming the file) or "skip" (the sample is replaced
        by the next readable one, which counts in no metric, and counted in `skipped`).
    """

    def __init__(self, videos: list[Video], classes: list[str], *, mode: str = "train",
                 modalities: Sequence[str] = MODALITIES, segments: int = 1, flow_stack: int = 10,
                 rgb_stack: int = 1, frame_policy: str = "tsn", image_size: int = 224,
                 transform=None, num_clips: int = 25, crops: str = "center",
                 on_bad: str = "raise", frame_template: str = FRAME_TEMPLATE):
        resolve_name(mode, MODES, "mode")
        resolve_name(on_bad, ON_BAD, "on_bad")
        resolve_name(frame_policy, POLICIES, "frame_policy")
        for m in modalities:
            resolve_name(m, MODALITIES, "modality")
        if not modalities:
            raise ValueError("at least one modality (rgb, flow) must be on")
        if frame_policy != "tsn" and segments != 1:
            raise ValueError(f"frame_policy {frame_policy!r} picks one snippet: use segments=1")
        if not videos:
            raise ValueError("the split holds no videos")
        self.videos, self.classes = videos, classes
        self.mode, self.on_bad = mode, on_bad
        self.use_rgb, self.use_flow = "rgb" in modalities, "flow" in modalities
        self.segments, self.flow_stack, self.rgb_stack = segments, flow_stack, rgb_stack
        self.frame_policy, self.num_clips = frame_policy, num_clips if mode == "test" else 1
        self.frame_template = frame_template
        if transform is None:
            transform = (TrainTransform(image_size) if mode == "train" else
                         EvalTransform(image_size, crops if mode == "test" else "center"))
        self.transform = transform
        self.skipped = 0

    def __len__(self) -> int:
        return len(self.videos)

    @property
    def labels(self) -> list[int]:
        return [v.label for v in self.videos]

    @property
    def views_per_video(self) -> int:
        """Model inputs per video: clips x crops in the test protocol, else 1."""
        return self.num_clips * self.transform.views if self.mode == "test" else 1

    def clip_starts(self, video: Video) -> list[list[int]]:
        """Snippet starts, clips x segments."""
        n = positions(flow_stack=self.flow_stack, rgb_stack=self.rgb_stack,
                      flow_frames=video.flow_frames, rgb_frames=video.rgb_frames,
                      use_flow=self.use_flow)
        if self.frame_policy != "tsn":
            policy = self.frame_policy
            if policy == "random" and self.mode != "train":
                policy = "middle"  # evaluation stays deterministic
            return [[policy_start(n, policy)]] * self.num_clips
        if self.mode == "test":
            return protocol_clip_starts(n, self.segments, self.num_clips)
        return [segment_starts(n, self.segments, train=self.mode == "train")]

    def load(self, video: Video) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        starts = [s for clip in self.clip_starts(video) for s in clip]  # clips * T snippets
        rgb_idx, flow_idx = snippet_frames(
            starts, flow_stack=self.flow_stack, rgb_stack=self.rgb_stack,
            flow_frames=video.flow_frames, rgb_frames=video.rgb_frames, use_flow=self.use_flow,
            use_rgb=self.use_rgb)
        rgb = flow = None
        if flow_idx is not None:  # N x 2 x H x W
            flow = read_frames(video.flow_dirs, flow_idx, gray=True, video_id=video.video_id,
                               template=self.frame_template)
        if rgb_idx is not None:
            rgb = read_frames(video.rgb_dir, rgb_idx, gray=False, video_id=video.video_id,
                              template=self.frame_template)
        return arrange_sample(rgb, flow, self.transform, segments=self.segments,
                              rgb_stack=self.rgb_stack, flow_stack=self.flow_stack,
                              single_view=self.mode != "test")

    def __getitem__(self, key) -> Sample:
        """`dataset[i]`, or `dataset[(seed, i, counted)]` from `SeededSampler`: the sample's
        random crops and flips then come from that seed alone, whichever worker or rank loads
        it (`read_sample`)."""
        return read_sample(self, key)

    def sample(self, seed: int | None, i: int) -> Sample:
        video = self.videos[i]
        rgb, flow = seeded(seed, self.load, video)
        return Sample(rgb, flow, video.label, video.video_id)

    def item_id(self, i: int) -> str:
        return self.videos[i].video_id


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


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise FileNotFoundError(f"{what}: expected the folder {path}")
    return path


class _FolderLookup:
    """Find a video's folder by name, falling back to a case-insensitive match (UCF101's
    HandstandPushups / HandStandPushups)."""

    def __init__(self, root: Path):
        self.root = root
        self.lower = {name.lower(): name for name in os.listdir(root)}

    def find(self, name: str) -> Path | None:
        if (self.root / name).is_dir():
            return self.root / name
        actual = self.lower.get(name.lower())
        return self.root / actual if actual else None


def class_folders(root: Path, what: str, items: str) -> list[str]:
    """The sorted class folders of a `<root>/<class>/...` dataset (hidden ones skipped)."""
    _require_dir(root, what)
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise FileNotFoundError(f"expected one folder of {items} per class in {root}")
    return names


def select_classes(all_classes: list[str], classes: int | Sequence[str] | None) -> list[str]:
    """A class subset by count (the first N) or by names; labels follow the returned order."""
    if classes is None:
        return list(all_classes)
    if isinstance(classes, int):
        if not 1 <= classes <= len(all_classes):
            raise ValueError(f"classes={classes}: the dataset has {len(all_classes)} classes")
        return list(all_classes[:classes])
    unknown = [c for c in classes if c not in all_classes]
    if unknown:
        raise ValueError(f"unknown classes {unknown}; valid: {', '.join(all_classes)}")
    return list(classes)


def stratified_split(labels: Sequence[int], *, val_fraction: float, test_fraction: float = 0.0,
                     seed: int = 0, groups: Sequence[str] | None = None
                     ) -> tuple[list[int], list[int], list[int]]:
    """Indices for train / val / test with each class split in the same proportions (seed 001:
    the test set first, then validation as a fraction of what is left).

    groups: items of one class with the same group key go to the same split, and the
    fractions count groups (UCF101's gXX: the clips of a group share actor and scene, and the
    official splits keep groups apart). None: every item is its own group. A non-zero fraction
    takes at least one group of a class that has one to spare.
    """
    g = torch.Generator().manual_seed(seed)
    keys = list(range(len(labels))) if groups is None else list(groups)
    train, val, test = [], [], []

    def share(n: int, fraction: float) -> int:
        taken = round(n * fraction)
        return 1 if fraction > 0 and taken == 0 and n >= 2 else taken
    for label in sorted(set(labels)):
        members = [i for i, y in enumerate(labels) if y == label]
        units = list(dict.fromkeys(keys[i] for i in members))  # the class's groups, in order
        units = [units[j] for j in torch.randperm(len(units), generator=g).tolist()]
        n_test = share(len(units), test_fraction)
        n_val = share(len(units) - n_test, val_fraction)
        side = {u: (test if k < n_test else val if k < n_test + n_val else train)
                for k, u in enumerate(units)}
        for i in members:
            side[keys[i]].append(i)
    return sorted(train), sorted(val), sorted(test)


_UCF101_GROUP = re.compile(r"_(g\d+)_c\d+$")


def ucf101_group(video_id: str) -> str:
    """The group of a UCF101 video, `v_ApplyEyeMakeup_g08_c01` -> `g08`."""
    match = _UCF101_GROUP.search(video_id)
    if match is None:
        raise ValueError(f"UCF101 video {video_id!r} has no group in its name "
                         f"(expected v_<Class>_gXX_cYY): validation is carved out by group")
    return match.group(1)


def oversample(items: list, labels: Sequence[int], *, seed: int = 0) -> list:
    """Add random duplicates of the smaller classes until every class is as large as the
    largest (seed 001); done after splitting, so no sample crosses splits."""
    g = torch.Generator().manual_seed(seed)
    counts = Counter(labels)
    target = max(counts.values())
    extra = []
    for label, n in sorted(counts.items()):
        members = [item for item, y in zip(items, labels) if y == label]
        extra += [members[j] for j in torch.randint(n, (target - n,), generator=g).tolist()]
    return list(items) + extra


def _finish(videos: list[Video | None], classes: list[str], subset: str, *,
            val_fraction: float, seed: int, oversample_train: bool, index: FrameIndex,
            on_bad: str, group_of=None, **kwargs) -> VideoDataset:
    """Common tail of the dataset factories: the validation carve-out of a training list
    (val_fraction > 0; by `group_of(video_id)` where given, else by video), frame counts,
    checks. `None` stands for a listed video whose folder is missing (skipped and counted)."""
    missing = sum(v is None for v in videos)
    videos = [v for v in videos if v is not None]
    if val_fraction > 0:
        groups = None if group_of is None else [group_of(v.video_id) for v in videos]
        train, val, _ = stratified_split([v.label for v in videos], val_fraction=val_fraction,
                                         seed=seed, groups=groups)
        videos = [videos[i] for i in (train if subset == "train" else val)]
    kept = []
    for video in videos:
        problem = None
        if video.rgb_dir is not None:
            video.rgb_frames = index.count(video.rgb_dir)
            problem = None if video.rgb_frames else f"no frames in {video.rgb_dir}"
        if video.flow_dirs is not None and problem is None:
            counts = [index.count(d) for d in video.flow_dirs]
            video.flow_frames = min(counts)
            problem = None if video.flow_frames else f"no flow frames in {video.flow_dirs[0]}"
        if problem is None:
            kept.append(video)
        elif on_bad == "raise":
            raise FrameError(f"video {video.video_id}: {problem}")
    index.save()
    skipped_at_start = missing + len(videos) - len(kept)
    if subset == "train" and oversample_train:
        kept = oversample(kept, [v.label for v in kept], seed=seed)
    if not kept:
        raise ValueError(f"the {subset} split holds no videos")
    mode = kwargs.pop("mode", "train" if subset == "train" else "val")
    dataset = VideoDataset(kept, classes, mode=mode, on_bad=on_bad, **kwargs)
    dataset.skipped = skipped_at_start
    return dataset


def _official_subset(subset: str, val_fraction: float) -> str:
    """Which official list a subset reads: val is a part of the training list."""
    resolve_name(subset, ("train", "val", "test"), "subset")
    if subset == "val" and val_fraction <= 0:
        raise ValueError("subset='val' needs val_fraction > 0 (a part of the training list)")
    return "test" if subset == "test" else "train"


def _read_lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"expected the list file {path}")
    # The official files have Windows line endings and trailing spaces.
    return [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip()]


def _modality_roots(root: Path, rgb: str, flow: str, modalities: Sequence[str]):
    rgb_lookup = _FolderLookup(_require_dir(root / rgb, "RGB frames")) \
        if "rgb" in modalities else None
    flow_lookups = tuple(_FolderLookup(_require_dir(root / flow / c, f"flow {c} frames"))
                         for c in ("u", "v")) if "flow" in modalities else None
    return rgb_lookup, flow_lookups


def _make_video(video_id: str, label: int, rgb_lookup, flow_lookups, on_bad: str) -> Video | None:
    """The video with its folders; None (skip policy) when one is missing."""
    video = Video(video_id, label)
    if rgb_lookup is not None:
        video.rgb_dir = rgb_lookup.find(video_id)
        if video.rgb_dir is None:
            if on_bad == "raise":
                raise FrameError(f"video {video_id}: expected its frames in "
                                 f"{rgb_lookup.root / video_id}")
            return None
    if flow_lookups is not None:
        dirs = tuple(lookup.find(video_id) for lookup in flow_lookups)
        if None in dirs:
            if on_bad == "raise":
                missing = flow_lookups[dirs.index(None)].root / video_id
                raise FrameError(f"video {video_id}: expected its flow in {missing}")
            return None
        video.flow_dirs = dirs
    return video


def ucf101(root: str | Path, *, split: int = 1, subset: str = "train",
           classes: int | Sequence[str] | None = None, val_fraction: float = 0.0,
           seed: int = 0, oversample: bool = False, modalities: Sequence[str] = MODALITIES,
           lists: str | Path | None = None, on_bad: str = "raise",
           frame_template: str = FRAME_TEMPLATE, **kwargs) -> VideoDataset:
    """UCF101 in Feichtenhofer's release: `jpegs_256/v_X_gYY_cZZ/`, `tvl1_flow/{u,v}/v_X_.../`,
    and the official `ucfTrainTestlist/` (classInd.txt, trainlist0N.txt, testlist0N.txt).

    subset: "train" (trainlist0N, minus a stratified `val_fraction` of each class's groups),
    "val" (those groups: a gXX group's clips share actor and scene, so validation never shares
    one with training) or "test" (testlist0N). Class folders are matched case-insensitively (HandstandPushups).
    """
    root = Path(root)
    _require_dir(root, "UCF101 root")
    official = _official_subset(subset, val_fraction)
    if split not in (1, 2, 3):
        raise ValueError(f"UCF101 split must be 1, 2 or 3, got {split}")
    lists = Path(lists) if lists else _require_dir(root / "ucfTrainTestlist", "UCF101 split files")
    class_file = lists / "classInd.txt"
    all_classes = []
    for n, line in _read_lines(class_file):
        index, _, name = line.partition(" ")
        if not index.isdigit() or int(index) != len(all_classes) + 1 or not name:
            raise ValueError(f"{class_file}:{n}: expected '<index> <class>' with indices "
                             f"1, 2, ..., got {line!r}")
        all_classes.append(name.strip())
    chosen = select_classes(all_classes, classes)
    label_of = {name.lower(): i for i, name in enumerate(chosen)}
    known = {name.lower() for name in all_classes}
    list_file = lists / f"{official}list0{split}.txt"
    rgb_lookup, flow_lookups = _modality_roots(root, "jpegs_256", "tvl1_flow", modalities)
    videos = []
    for n, line in _read_lines(list_file):
        path, _, given = line.partition(" ")
        class_dir, _, filename = path.replace("\\", "/").rpartition("/")
        if class_dir.lower() not in known:
            raise ValueError(f"{list_file}:{n}: unknown class {class_dir!r} (not in {class_file})")
        if given.strip() and all_classes[int(given) - 1].lower() != class_dir.lower():
            raise ValueError(f"{list_file}:{n}: label {given.strip()} is "
                             f"{all_classes[int(given) - 1]!r}, but the path says {class_dir!r}")
        if class_dir.lower() not in label_of:
            continue  # outside the class subset
        video = _make_video(Path(filename).stem, label_of[class_dir.lower()], rgb_lookup,
                            flow_lookups, on_bad)
        videos.append(video)
    return _finish(videos, chosen, subset, val_fraction=val_fraction if official == "train" else 0,
                   seed=seed, oversample_train=oversample, index=FrameIndex(root, frame_template),
                   on_bad=on_bad, modalities=modalities, frame_template=frame_template,
                   group_of=ucf101_group, **kwargs)


def hmdb51(root: str | Path, *, split: int = 1, subset: str = "train",
           classes: int | Sequence[str] | None = None, val_fraction: float = 0.0,
           seed: int = 0, oversample: bool = False, modalities: Sequence[str] = MODALITIES,
           lists: str | Path | None = None, on_bad: str = "raise",
           frame_template: str = FRAME_TEMPLATE, **kwargs) -> VideoDataset:
    """HMDB51: `testTrainMulti_7030_splits/<class>_test_splitN.txt` ("<video>.avi <tag>", tag 1
    train, 2 test, 0 unused) with frames in `jpegs_256/<video>/` and `tvl1_flow/{u,v}/<video>/`.
    Validation (`val_fraction`) is carved out of the training videos by video, per class.
    Classes are the split files' class names in sorted order; `classes` picks a subset
    (`HMDB51_SEED001_CLASSES` is seed 001's)."""
    root = Path(root)
    _require_dir(root, "HMDB51 root")
    official = _official_subset(subset, val_fraction)
    if split not in (1, 2, 3):
        raise ValueError(f"HMDB51 split must be 1, 2 or 3, got {split}")
    lists = Path(lists) if lists else _require_dir(root / "testTrainMulti_7030_splits",
                                                   "HMDB51 split files")
    pattern = re.compile(rf"^(.+)_test_split{split}\.txt$")
    files = {m.group(1): lists / m.group(0) for m in map(pattern.match, os.listdir(lists)) if m}
    if not files:
        raise FileNotFoundError(f"expected <class>_test_split{split}.txt files in {lists}")
    chosen = select_classes(sorted(files), classes)
    rgb_lookup, flow_lookups = _modality_roots(root, "jpegs_256", "tvl1_flow", modalities)
    wanted = "2" if official == "test" else "1"
    videos = []
    for label, name in enumerate(chosen):
        for n, line in _read_lines(files[name]):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{files[name]}:{n}: expected '<video>.avi <tag 0|1|2>', "
                                 f"got {line!r}")
            if parts[1] == wanted:
                videos.append(_make_video(Path(parts[0]).stem, label, rgb_lookup, flow_lookups,
                                          on_bad))
    return _finish(videos, chosen, subset, val_fraction=val_fraction if official == "train" else 0,
                   seed=seed, oversample_train=oversample, index=FrameIndex(root, frame_template),
                   on_bad=on_bad, modalities=modalities, frame_template=frame_template,
                   **kwargs)


def _read_folder_list(path: Path, classes: list[str]) -> list[tuple[str, str]]:
    """(class, video) per line `<class>/<video>` of a folder dataset's list file."""
    entries = []
    for n, line in _read_lines(path):
        class_name, _, video = line.partition("/")
        if class_name not in classes:
            raise ValueError(f"{path}:{n}: unknown class {class_name!r}; "
                             f"valid: {', '.join(classes)}")
        entries.append((class_name, video))
    return entries


def folder(root: str | Path, *, subset: str = "train",
           classes: int | Sequence[str] | None = None, val_fraction: float = 0.1,
           test_fraction: float = 0.1, seed: int = 0, oversample: bool = False,
           modalities: Sequence[str] = MODALITIES, on_bad: str = "raise",
           frame_template: str = FRAME_TEMPLATE, **kwargs) -> VideoDataset:
    """Your own videos: `<root>/<class>/<video>/frame000001.jpg ...`, with flow in the video's
    `u/` and `v/` subfolders.

    `<root>/train.txt` and `<root>/test.txt` (lines `<class>/<video>`) fix the split, and
    `<root>/val.txt` the validation videos; without val.txt, validation is a stratified
    `val_fraction` of train.txt only (never of the test videos). Without any list the videos
    are split by `stratified_split` (val and test fractions, seed)."""
    root = Path(root)
    resolve_name(subset, ("train", "val", "test"), "subset")
    all_classes = class_folders(root, "folder dataset root", "videos")
    chosen = select_classes(all_classes, classes)
    lists = {name: root / f"{name}.txt" for name in ("train", "val", "test")}
    carve = 0.0
    if lists["train"].is_file():
        if subset == "test" and not lists["test"].is_file():
            raise FileNotFoundError(f"{lists['train']} fixes the split, so the test videos are "
                                    f"listed too: expected {lists['test']}")
        if subset != "test" and not lists["val"].is_file():
            carve = val_fraction  # validation is a part of train.txt
        entries = _read_folder_list(lists[subset if lists[subset].is_file() else "train"],
                                    all_classes)
    elif lists["val"].is_file() or lists["test"].is_file():
        raise FileNotFoundError(f"expected {lists['train']} beside "
                                f"{lists['val'] if lists['val'].is_file() else lists['test']}")
    else:
        every = [(c, d.name) for c in all_classes for d in sorted((root / c).iterdir())
                 if d.is_dir()]
        split = stratified_split([all_classes.index(c) for c, _ in every],
                                 val_fraction=val_fraction, test_fraction=test_fraction,
                                 seed=seed)
        entries = [every[i] for i in split[("train", "val", "test").index(subset)]]
    videos = []
    for class_name, name in entries:
        if class_name not in chosen:
            continue
        video_dir = root / class_name / name
        if not video_dir.is_dir():
            if on_bad == "raise":
                raise FrameError(f"video {class_name}/{name}: expected the folder {video_dir}")
            videos.append(None)
            continue
        videos.append(Video(f"{class_name}/{name}", chosen.index(class_name),
                            video_dir if "rgb" in modalities else None,
                            (video_dir / "u", video_dir / "v") if "flow" in modalities
                            else None))
    return _finish(videos, chosen, subset, val_fraction=carve, seed=seed,
                   oversample_train=oversample, index=FrameIndex(root, frame_template),
                   on_bad=on_bad, modalities=modalities, frame_template=frame_template,
                   **kwargs)


DATASETS = {"ucf101": ucf101, "hmdb51": hmdb51, "folder": folder}
