"""UCF101, HMDB51 and folder datasets read from their official lists and layouts
(docs/design.md §5): class selection, the validation carve-out (by UCF101 group), stratified
splits, oversampling.

    train = ucf101("/data/ucf101", split=1, subset="train",
                   clip=ClipSpec(segments=3, flow_stack=10))
"""
from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from fusion.choices import SUBSETS, resolve_name
from fusion.data.clips import COLOUR_FLOW_TEMPLATE, Video, VideoDataset, flow_components
from fusion.data.loader import FrameError
from fusion.data.sampling import ClipSpec
from fusion.data.stores import LooseStore, PackedStore, open_store, require_dir

HMDB51_SEED001_CLASSES = ("clap", "climb", "drink", "jump", "pour", "ride_bike", "ride_horse",
                          "run", "shoot_bow", "smoke", "throw", "wave")


def class_folders(root: Path, what: str, items: str) -> list[str]:
    """The sorted class folders of a `<root>/<class>/...` dataset (hidden ones skipped)."""
    require_dir(root, what)
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


@dataclass(frozen=True)
class Selection:
    """Which of a dataset's videos its subsets hold, the same for every subset of a run: the
    class subset (`classes`: a count, the first N, or names in label order; None: all), the
    stratified validation carve-out of the training videos (`val_fraction`), the `seed` of
    every draw (carve-out, split, oversampling) and `oversample` (duplicates of small classes
    in training, seed 001).

    One object from the config (`fusion.build.selection`) to every reader, the still images'
    included, so a selection option is added here and in the config, nothing in between."""

    classes: int | Sequence[str] | None = None
    val_fraction: float = 0.0
    seed: int = 0
    oversample: bool = False

    def __post_init__(self):
        if self.classes is not None and not isinstance(self.classes, int):
            # a tuple: the selection is immutable, a config's list is not
            object.__setattr__(self, "classes", tuple(self.classes))


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


def ucf101_groups(video_ids: Sequence[str]) -> list[str] | None:
    """The UCF101 groups of videos that all carry UCF101 names (`..._gXX_cYY`, whatever the
    reader that found them: the official layout, MMAction2's rawframes, a folder dataset), so
    that a validation carve-out keeps groups apart; None when any name is not UCF101's."""
    if not video_ids or not all(_UCF101_GROUP.search(v) for v in video_ids):
        return None
    return [ucf101_group(v) for v in video_ids]


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


def finish(videos: list[Video | None], classes: list[str], subset: str, *,
           val_fraction: float, seed: int, oversample_train: bool,
           store: LooseStore | PackedStore, on_bad: str, group_of=None,
           **kwargs) -> VideoDataset:
    """Common tail of the dataset factories: the validation carve-out of a training list
    (val_fraction > 0; by `group_of(video_id)` where given, else by UCF101 group when every
    video carries a UCF101 name, else by video), frame counts (from the store: a loose root's
    folders or the packs' indexes), checks. `None` stands for a listed video whose folder is
    missing (skipped and counted)."""
    missing = sum(v is None for v in videos)
    videos = [v for v in videos if v is not None]
    if val_fraction > 0:
        ids = [v.video_id for v in videos]
        groups = ucf101_groups(ids) if group_of is None else [group_of(i) for i in ids]
        train, val, _ = stratified_split([v.label for v in videos], val_fraction=val_fraction,
                                         seed=seed, groups=groups)
        videos = [videos[i] for i in (train if subset == "train" else val)]
    kept = []
    for video in videos:
        try:
            problem = _count_frames(video, store)
        except FrameError as err:  # a damaged pack
            problem = str(err)
        if problem is None:
            kept.append(video)
        elif on_bad == "raise":
            raise FrameError(f"video {video.video_id}: {problem}")
    store.save()
    skipped_at_start = missing + len(videos) - len(kept)
    if subset == "train" and oversample_train:
        kept = oversample(kept, [v.label for v in kept], seed=seed)
    if not kept:
        raise ValueError(f"the {subset} split holds no videos")
    mode = kwargs.pop("mode", "train" if subset == "train" else "val")
    dataset = VideoDataset(kept, classes, mode=mode, on_bad=on_bad, **kwargs)
    dataset.skipped = skipped_at_start
    return dataset


def _count_frames(video: Video, store) -> str | None:
    """Set the video's RGB and flow frame counts; what is wrong with it, or None."""
    if video.rgb_dir is not None:
        video.rgb_frames = store.count(video.rgb_dir, video.rgb_template)
        if not video.rgb_frames:
            return f"no frames in {video.rgb_dir}"
    if video.flow_dirs is not None:
        counts = [store.count(d, t) for d, t in zip(video.flow_dirs, video.flow_templates)]
        video.flow_frames = min(counts)
        if not video.flow_frames:
            return f"no flow frames in {video.flow_dirs[0]}"
    return None


def _official_subset(subset: str, val_fraction: float) -> str:
    """Which official list a subset reads: val is a part of the training list."""
    resolve_name(subset, SUBSETS, "subset")
    if subset == "val" and val_fraction <= 0:
        raise ValueError("subset='val' needs val_fraction > 0 (a part of the training list)")
    return "test" if subset == "test" else "train"


def read_lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"expected the list file {path}")
    # The official files have Windows line endings and trailing spaces.
    return [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1)
            if line.strip()]


def _modality_roots(store, rgb: str, flow: str, modalities: Sequence[str],
                    flow_format: str):
    rgb_lookup = store.lookup(rgb, "RGB frames") if "rgb" in modalities else None
    flow_lookups = tuple(store.lookup(f"{flow}/{c}", _flow_what(c))
                         for c in flow_components(flow_format)) \
        if "flow" in modalities else None
    return rgb_lookup, flow_lookups


def _flow_what(component: str) -> str:
    if component == "rgb":
        return ("flow colour images (flow_format = 'rgb': extract them with extract_frames.py "
                "--flow-format rgb)")
    return f"flow {component} frames"


def flow_files(video: Video, flow_format: str) -> None:
    """Name the video's flow files by format: u, v JPEGs, or the colour PNGs."""
    if video.flow_dirs is not None and flow_format == "rgb":
        video.flow_templates = (COLOUR_FLOW_TEMPLATE,)


def _stem(name: str) -> str:
    """`Path(name).stem` of a file name, without pathlib's cost (once per listed video)."""
    at = name.rfind(".")
    return name[:at] if 0 < at < len(name) - 1 else name


def _make_video(video_id: str, label: int, rgb_lookup, flow_lookups, on_bad: str,
                flow_format: str = "uv") -> Video | None:
    """The video with its folders; None (skip policy) when one is missing."""
    video = Video(video_id, label)
    if rgb_lookup is not None:
        video.rgb_dir = rgb_lookup.find(video_id)
        if video.rgb_dir is None:
            if on_bad == "raise":
                raise FrameError(f"video {video_id}: expected its frames in "
                                 f"{rgb_lookup.where(video_id)}")
            return None
    if flow_lookups is not None:
        dirs = tuple(lookup.find(video_id) for lookup in flow_lookups)
        if None in dirs:
            if on_bad == "raise":
                missing = flow_lookups[dirs.index(None)].where(video_id)
                raise FrameError(f"video {video_id}: expected its flow in {missing}")
            return None
        video.flow_dirs = dirs
        flow_files(video, flow_format)
    return video


def ucf101(root: str | Path, *, split: int = 1, subset: str = "train",
           selection: Selection = Selection(), clip: ClipSpec = ClipSpec(),
           lists: str | Path | None = None, on_bad: str = "raise", flow_format: str = "uv",
           frames: str = "auto", **kwargs) -> VideoDataset:
    """UCF101 in Feichtenhofer's release: `jpegs_256/v_X_gYY_cZZ/`, `tvl1_flow/{u,v}/v_X_.../`,
    and the official `ucfTrainTestlist/` (classInd.txt, trainlist0N.txt, testlist0N.txt); or
    the same packed, `packs/v_X_gYY_cZZ.tar` (`frames`: "auto" | "loose" | "packed",
    `fusion.data.stores`).

    subset: "train" (trainlist0N, minus a stratified `val_fraction` of each class's groups),
    "val" (those groups: a gXX group's clips share actor and scene, so validation never shares
    one with training) or "test" (testlist0N). Class folders are matched case-insensitively
    (HandstandPushups).
    """
    root = Path(root)
    require_dir(root, "UCF101 root")
    store = open_store(root, frames)
    official = _official_subset(subset, selection.val_fraction)
    if split not in (1, 2, 3):
        raise ValueError(f"UCF101 split must be 1, 2 or 3, got {split}")
    lists = Path(lists) if lists else require_dir(root / "ucfTrainTestlist", "UCF101 split files")
    class_file = lists / "classInd.txt"
    all_classes = []
    for n, line in read_lines(class_file):
        index, _, name = line.partition(" ")
        if not index.isdigit() or int(index) != len(all_classes) + 1 or not name:
            raise ValueError(f"{class_file}:{n}: expected '<index> <class>' with indices "
                             f"1, 2, ..., got {line!r}")
        all_classes.append(name.strip())
    chosen = select_classes(all_classes, selection.classes)
    label_of = {name.lower(): i for i, name in enumerate(chosen)}
    known = {name.lower() for name in all_classes}
    list_file = lists / f"{official}list0{split}.txt"
    rgb_lookup, flow_lookups = _modality_roots(store, "jpegs_256", "tvl1_flow",
                                               clip.modalities, flow_format)
    listed = []  # (video, label)
    for n, line in read_lines(list_file):
        path, _, given = line.partition(" ")
        class_dir, _, filename = path.replace("\\", "/").rpartition("/")
        if class_dir.lower() not in known:
            raise ValueError(f"{list_file}:{n}: unknown class {class_dir!r} (not in {class_file})")
        if given.strip() and all_classes[int(given) - 1].lower() != class_dir.lower():
            raise ValueError(f"{list_file}:{n}: label {given.strip()} is "
                             f"{all_classes[int(given) - 1]!r}, but the path says {class_dir!r}")
        if class_dir.lower() not in label_of:
            continue  # outside the class subset
        listed.append((_stem(filename), label_of[class_dir.lower()]))
    store.prefetch([name for name, _ in listed], by_name=True)
    videos = [_make_video(name, label, rgb_lookup, flow_lookups, on_bad, flow_format)
              for name, label in listed]
    carve = selection.val_fraction if official == "train" else 0
    return finish(videos, chosen, subset, val_fraction=carve, seed=selection.seed,
                  oversample_train=selection.oversample, store=store,
                  on_bad=on_bad, clip=clip, group_of=ucf101_group, **kwargs)


def hmdb51(root: str | Path, *, split: int = 1, subset: str = "train",
           selection: Selection = Selection(), clip: ClipSpec = ClipSpec(),
           lists: str | Path | None = None, on_bad: str = "raise", flow_format: str = "uv",
           frames: str = "auto", **kwargs) -> VideoDataset:
    """HMDB51 (loose, or packed as `packs/<video>.tar`: `frames`, as `ucf101`): `testTrainMulti_7030_splits/<class>_test_splitN.txt` ("<video>.avi <tag>", tag 1
    train, 2 test, 0 unused) with frames in `jpegs_256/<video>/` and `tvl1_flow/{u,v}/<video>/`.
    Validation (`val_fraction`) is carved out of the training videos by video, per class.
    Classes are the split files' class names in sorted order; `classes` picks a subset
    (`HMDB51_SEED001_CLASSES` is seed 001's)."""
    root = Path(root)
    require_dir(root, "HMDB51 root")
    store = open_store(root, frames)
    official = _official_subset(subset, selection.val_fraction)
    if split not in (1, 2, 3):
        raise ValueError(f"HMDB51 split must be 1, 2 or 3, got {split}")
    lists = Path(lists) if lists else require_dir(root / "testTrainMulti_7030_splits",
                                                  "HMDB51 split files")
    pattern = re.compile(rf"^(.+)_test_split{split}\.txt$")
    files = {m.group(1): lists / m.group(0) for m in map(pattern.match, os.listdir(lists)) if m}
    if not files:
        raise FileNotFoundError(f"expected <class>_test_split{split}.txt files in {lists}")
    chosen = select_classes(sorted(files), selection.classes)
    rgb_lookup, flow_lookups = _modality_roots(store, "jpegs_256", "tvl1_flow",
                                               clip.modalities, flow_format)
    wanted = "2" if official == "test" else "1"
    listed = []  # (video, label)
    for label, name in enumerate(chosen):
        for n, line in read_lines(files[name]):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise ValueError(f"{files[name]}:{n}: expected '<video>.avi <tag 0|1|2>', "
                                 f"got {line!r}")
            if parts[1] == wanted:
                listed.append((_stem(parts[0]), label))
    store.prefetch([name for name, _ in listed], by_name=True)
    videos = [_make_video(name, label, rgb_lookup, flow_lookups, on_bad, flow_format)
              for name, label in listed]
    carve = selection.val_fraction if official == "train" else 0
    return finish(videos, chosen, subset, val_fraction=carve, seed=selection.seed,
                  oversample_train=selection.oversample, store=store,
                  on_bad=on_bad, clip=clip, **kwargs)


def _read_folder_list(path: Path, classes: list[str]) -> list[tuple[str, str]]:
    """(class, video) per line `<class>/<video>` of a folder dataset's list file."""
    entries = []
    for n, line in read_lines(path):
        class_name, _, video = line.partition("/")
        if class_name not in classes:
            raise ValueError(f"{path}:{n}: unknown class {class_name!r}; "
                             f"valid: {', '.join(classes)}")
        entries.append((class_name, video))
    return entries


def folder(root: str | Path, *, subset: str = "train",
           selection: Selection = Selection(val_fraction=0.1), test_fraction: float = 0.1,
           clip: ClipSpec = ClipSpec(), on_bad: str = "raise", flow_format: str = "uv",
           frames: str = "auto", **kwargs) -> VideoDataset:
    """Your own videos: `<root>/<class>/<video>/frame000001.jpg ...`, with flow in the video's
    `u/` and `v/` subfolders (flow_format "rgb": colour images in `flow_rgb/`).

    `<root>/train.txt` and `<root>/test.txt` (lines `<class>/<video>`) fix the split, and
    `<root>/val.txt` the validation videos; without val.txt, validation is a stratified
    `val_fraction` of train.txt only (never of the test videos). Without any list the videos
    are split by `stratified_split` (val and test fractions, seed). Packed (`frames`, as
    `ucf101`): `<root>/packs/<class>/<video>.tar`, the lists beside `packs/`."""
    root = Path(root)
    resolve_name(subset, SUBSETS, "subset")
    store = open_store(root, frames)
    all_classes = class_folders(store.tree, "folder dataset root", "videos")
    chosen = select_classes(all_classes, selection.classes)
    lists = {name: root / f"{name}.txt" for name in SUBSETS}
    carve = 0.0
    if lists["train"].is_file():
        if subset == "test" and not lists["test"].is_file():
            raise FileNotFoundError(f"{lists['train']} fixes the split, so the test videos are "
                                    f"listed too: expected {lists['test']}")
        if subset != "test" and not lists["val"].is_file():
            carve = selection.val_fraction  # validation is a part of train.txt
        entries = _read_folder_list(lists[subset if lists[subset].is_file() else "train"],
                                    all_classes)
    elif lists["val"].is_file() or lists["test"].is_file():
        raise FileNotFoundError(f"expected {lists['train']} beside "
                                f"{lists['val'] if lists['val'].is_file() else lists['test']}")
    else:
        every = [(c, name) for c in all_classes for name in store.videos_in(c)]
        split = stratified_split([all_classes.index(c) for c, _ in every],
                                 val_fraction=selection.val_fraction,
                                 test_fraction=test_fraction, seed=selection.seed,
                                 groups=ucf101_groups([name for _, name in every]))
        entries = [every[i] for i in split[SUBSETS.index(subset)]]
    videos = []
    store.prefetch([f"{c}/{name}" for c, name in entries if c in chosen])
    for class_name, name in entries:
        if class_name not in chosen:
            continue
        key = f"{class_name}/{name}"
        video_dir = store.video_dir(key, key)
        if video_dir is None:
            if on_bad == "raise":
                raise FrameError(f"video {key}: expected the folder {store.where(key, key)}")
            videos.append(None)
            continue
        video = Video(key, chosen.index(class_name), video_dir if clip.use_rgb else None,
                      tuple(os.path.join(video_dir, "flow_rgb" if c == "rgb" else c)
                            for c in flow_components(flow_format))
                      if clip.use_flow else None)
        flow_files(video, flow_format)
        videos.append(video)
    return finish(videos, chosen, subset, val_fraction=carve, seed=selection.seed,
                  oversample_train=selection.oversample, store=store,
                  on_bad=on_bad, clip=clip, **kwargs)


VIDEO_DATASETS = {"ucf101": ucf101, "hmdb51": hmdb51, "folder": folder}
