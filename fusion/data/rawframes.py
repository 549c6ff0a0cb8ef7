"""MMAction2's rawframes, as its tools write them (build_rawframes.py / denseflow):

    <root>/rawframes/<video>/img_00001.jpg, flow_x_00001.jpg, flow_y_00001.jpg   (one folder)
    list files, one video a line:  <video dir relative to rawframes/> <total_frames> <label from 0>

    train = rawframes("/data/ucf101", subset="train", clip=ClipSpec(segments=3, flow_stack=5),
                      lists={"train": "ucf101_train_split_1_rawframes.txt",
                             "test": "ucf101_val_split_1_rawframes.txt"})

Flow numbered from 0 (flow_x_00000.jpg) or from 1, and one flow frame fewer than RGB frames
(flow k: frame k to k + 1) or as many, are both read as they are: each video's numbering is
detected, and `notes` says what was found (the run's log prints it). `total_frames` is checked
against the frames on disk (it must equal the RGB or the flow count). Classes are numbers
("0", "1", ...) unless a class-name file (one name a line, in label order) is given.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from fusion.choices import SUBSETS, resolve_name
from fusion.data.clips import Video, VideoDataset
from fusion.data.loader import FrameError
from fusion.data.sampling import ClipSpec
from fusion.data.splits import Selection, finish, read_lines, select_classes
from fusion.data.stores import open_store

TEMPLATES = ("img_{:05d}.jpg", "flow_x_{:05d}.jpg", "flow_y_{:05d}.jpg")  # MMAction2's defaults


def read_list(path: Path) -> list[tuple[str, int, int]]:
    """(video dir, total_frames, label) per line, or an error naming the file and line."""
    entries = []
    for n, line in read_lines(Path(path)):
        parts = line.rsplit(maxsplit=2)
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            raise ValueError(f"{path}:{n}: expected '<video dir> <total_frames> <label from 0>' "
                             f"(MMAction2's rawframe list), got {line!r}")
        entries.append((parts[0], int(parts[1]), int(parts[2])))
    return entries


def class_names(path: str | Path | None, labels: Sequence[int]) -> list[str]:
    """The names of a class-name file, one a line in label order; without one, "0", "1", ..."""
    if path is None:
        return [str(i) for i in range(max(labels) + 1)]
    names = [line for _, line in read_lines(Path(path))]
    if max(labels) >= len(names):
        raise ValueError(f"class-name file {path} names {len(names)} classes, but the lists "
                         f"use label {max(labels)}")
    return names


def rawframes(root: str | Path, *, subset: str = "train", lists: dict[str, str | Path],
              class_file: str | Path | None = None, selection: Selection = Selection(),
              clip: ClipSpec = ClipSpec(), on_bad: str = "raise",
              templates: Sequence[str] = TEMPLATES, frames_dir: str | Path = "rawframes",
              frames: str = "auto", **kwargs) -> VideoDataset:
    """The `subset` of a rawframes dataset. `lists` maps train / val / test to list files
    (a relative path is read from `root`); without a val list, validation is a stratified
    `val_fraction` of the training list, by UCF101 group when the videos carry UCF101 names
    (`..._gXX_cYY`), else by video. `templates`: RGB, flow x, flow y file names. Packed
    (`frames`: "auto" | "loose" | "packed"): `<root>/packs/<video dir>.tar`, each holding
    `<frames_dir>/<video dir>/`."""
    root = Path(root)
    resolve_name(subset, SUBSETS, "subset")
    store = open_store(root, frames)
    frames_root = root / frames_dir  # MMAction2's data_prefix; an absolute path stays one
    if store.kind == "packed" and Path(frames_dir).is_absolute():
        raise ValueError(f"rawframes dataset: a packed root holds its frames under "
                         f"{store.tree}; rawframes_dir {str(frames_dir)!r} must be relative "
                         f"(the folder the packs' files are named under, MMAction2's "
                         f"data_prefix)")
    if store.kind == "loose" and not frames_root.is_dir():
        raise FileNotFoundError(f"rawframes dataset: expected the frames folder {frames_root} "
                                f"(config key rawframes_dir, MMAction2's data_prefix)")
    lists = {k: (Path(v) if Path(v).is_absolute() else root / v) for k, v in lists.items() if v}
    if "train" not in lists or "test" not in lists:
        raise ValueError("rawframes: give the training and test lists (train_list, test_list)")
    carve = 0.0
    source = subset
    if subset != "test" and "val" not in lists:
        if subset == "val" and selection.val_fraction <= 0:
            raise ValueError("subset 'val' of rawframes needs val_list or val_fraction > 0")
        carve, source = selection.val_fraction, "train"
    listed = {key: read_list(path) for key, path in lists.items()}  # every list: the labels
    entries = listed[source]
    every_label = [label for items in listed.values() for _, _, label in items]
    all_classes = class_names(class_file, every_label)
    chosen = select_classes(all_classes, selection.classes)
    untrained = classes_without_videos(listed["train"], all_classes, chosen, lists["train"],
                                       named=class_file is not None)
    rgb_template, x_template, y_template = templates
    videos = []
    store.prefetch([v for v, _, label in entries if all_classes[label] in chosen])
    for video_dir, total, label in entries:
        if all_classes[label] not in chosen:
            continue
        inside = f"{Path(frames_dir).as_posix()}/{video_dir}"  # the folder, from the root
        folder = store.video_dir(video_dir, inside)
        if folder is None:
            if on_bad == "raise":
                raise FrameError(f"video {video_dir}: expected the folder "
                                 f"{store.where(video_dir, inside)} (listed in {lists[source]})")
            videos.append(None)
            continue
        video = Video(video_dir, chosen.index(all_classes[label]))
        if clip.use_rgb:
            video.rgb_dir, video.rgb_template = folder, rgb_template
            video.rgb_first = first_number(store, folder, rgb_template)
        if clip.use_flow:
            video.flow_dirs, video.flow_templates = (folder, folder), (x_template, y_template)
            video.flow_first = first_number(store, folder, x_template)
        video.total_frames = total
        videos.append(video)
    dataset = finish(videos, chosen, subset, val_fraction=carve, seed=selection.seed,
                     oversample_train=selection.oversample, store=store, on_bad=on_bad,
                     clip=clip, **kwargs)
    numbering, counts, totals_off = Counter(), Counter(), []
    for video in {v.video_id: v for v in dataset.videos}.values():  # oversampling repeats
        if clip.use_flow:
            numbering[video.flow_first] += 1
        if clip.use_flow and clip.use_rgb:
            counts[video.rgb_frames - video.flow_frames] += 1
        if video.total_frames not in (video.rgb_frames, video.flow_frames, 0):
            totals_off.append(f"{video.video_id} ({video.total_frames} listed, "
                              f"{video.rgb_frames or video.flow_frames} on disk)")
    dataset.notes = _notes(numbering, counts, totals_off, lists[source]) + untrained
    return dataset


def classes_without_videos(train: list[tuple[str, int, int]], all_classes: list[str],
                           chosen: list[str], train_list: Path, *, named: bool) -> list[str]:
    """Classes with no training video. Without a class-name file the classes are the labels
    0 .. max, so a gap (labels 0..3 and 7) is almost surely a numbering mistake that would
    train classes the model never sees: an error naming the labels. With a class-name file
    the user declared the classes, so it is a note for the run's log naming them."""
    trained = {label for _, _, label in train}
    empty = [i for i, name in enumerate(all_classes) if name in chosen and i not in trained]
    if not empty:
        return []
    labels = ("labels " if len(empty) > 1 else "label ") + ", ".join(map(str, empty))
    if not named:
        raise ValueError(f"rawframes: {labels} without a video in {train_list}, which uses "
                         f"labels up to {len(all_classes) - 1}; without class_names the classes "
                         f"are the labels 0 .. {len(all_classes) - 1}, so these would be classes "
                         f"never trained. Renumber the labels, or give class_names (one name a "
                         f"line) if the model is meant to have them")
    names = ", ".join(f"{all_classes[i]} ({i})" for i in empty)
    return [f"classes without a training video in {train_list} (the model will never predict "
            f"them): {names}"]


def first_number(store, folder: str | Path, template: str) -> int:
    """1 if the folder's first file is numbered 1 (MMAction2's RGB), 0 if numbered 0 (flow
    written by some denseflow builds)."""
    return 0 if store.is_file(os.path.join(folder, template.format(0))) else 1


def _notes(numbering: Counter, gaps: Counter, totals_off: list[str], list_file: Path) -> list[str]:
    notes = []
    if numbering:
        notes.append("rawframes flow numbered from " + ", ".join(
            f"{first} in {n} videos" for first, n in sorted(numbering.items())))
    if gaps:
        notes.append("rawframes RGB minus flow frames: " + ", ".join(
            f"{gap} in {n} videos" for gap, n in sorted(gaps.items())))
    if totals_off:
        notes.append(f"{len(totals_off)} videos of {list_file} list a total_frames that matches "
                     f"neither their RGB nor their flow frames (the frames on disk are used): "
                     + ", ".join(totals_off[:5]) + (" ..." if len(totals_off) > 5 else ""))
    return notes
