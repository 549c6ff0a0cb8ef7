"""A loose dataset root -> a packed one (`scripts/pack_frames.py`): every video's frame files
into its pack (`fusion.data.packs`), the lists, class files and extraction.json beside them,
so the packed root is a complete dataset root (`fusion.data.stores`).

Layouts (`detect_layout`; what is a video, and where its pack goes):
    ucf101    jpegs_256/<v>/, tvl1_flow/{u,v,rgb}/<v>/ (UCF101, HMDB51, extract_frames.py's
              default)                                    -> packs/<v>.tar
    folder    <class>/<video>/ and its subfolders (u/, v/, flow_rgb/)
                                                          -> packs/<class>/<video>.tar
    rawframes rawframes/<video dir>/ (MMAction2; every folder there that holds files)
                                                          -> packs/<video dir>.tar
Every regular file of a video's folders goes in, named by its path under the root, so
unpacking every pack restores the loose tree. Packing runs a video per worker process, skips
packs already whole (a killed run continues; a pack cut short is redone), and with `verify`
reads every file back through the loader's own reader and compares its hash with the loose
file's. Every run ends by writing the root's index of its packs (`fusion.data.pack_index`).
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from fusion.data.pack_index import write_pack_index
from fusion.data.packs import PACKS, SUFFIX, PackReader, complete, read_header, write_pack
from fusion.data.parallel import die_with_parent

PACK_LAYOUTS = ("auto", "ucf101", "folder", "rawframes")
UCF101_FOLDERS = ("jpegs_256", "tvl1_flow/u", "tvl1_flow/v", "tvl1_flow/rgb")


@dataclass(frozen=True)
class VideoFolders:
    """A video to pack: its pack's name under packs/ (without .tar), and its folders
    (relative to the source root; `recursive`: with their subfolders)."""

    key: str
    folders: tuple[str, ...]
    recursive: bool = False


@dataclass
class PackSummary:
    packed: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)  # already whole: skipped
    redone: list[str] = field(default_factory=list)  # a pack cut short, written again
    failed: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, list[str]] = field(default_factory=dict)  # --verify
    verified: int = 0
    files: int = 0
    bytes_in: int = 0  # the loose files' bytes that were packed
    bytes_out: int = 0  # the packs written
    seconds: float = 0.0
    copied: list[str] = field(default_factory=list)  # lists, class files, extraction.json

    def report(self) -> str:
        rate = len(self.packed) / self.seconds if self.seconds else 0.0
        mb = self.bytes_in / 1e6 / self.seconds if self.seconds else 0.0
        lines = [f"{len(self.packed)} videos packed ({self.files} files, {self.bytes_in / 1e6:.1f}"
                 f" MB into {self.bytes_out / 1e6:.1f} MB of packs; {len(self.redone)} of them "
                 f"redone, cut short before), {len(self.done)} already packed and skipped, "
                 f"{len(self.failed)} failed, in {self.seconds:.1f} s ({rate:.1f} videos/s, "
                 f"{mb:.1f} MB/s)"]
        if self.copied:
            lines.append(f"copied beside the packs: {', '.join(self.copied)}")
        lines += [f"  failed: {key}: {why}" for key, why in sorted(self.failed.items())]
        if self.verified or self.mismatched:
            lines.append(f"verified {self.verified} packs against the loose files: "
                         f"{len(self.mismatched)} differ")
            for key, problems in sorted(self.mismatched.items()):
                lines += [f"  differs: {key}: {p}" for p in problems[:5]]
                if len(problems) > 5:
                    lines.append(f"  differs: {key}: ... {len(problems) - 5} more")
        return "\n".join(lines)


def detect_layout(src: Path, rawframes_dir: str = "rawframes") -> str:
    if any((src / d).is_dir() for d in ("jpegs_256", "tvl1_flow")):
        return "ucf101"
    if (src / rawframes_dir).is_dir():
        return "rawframes"
    return "folder"


def _subdirs(path: Path) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [e.name for e in entries if e.is_dir()]
    except FileNotFoundError:
        return []


def find_videos(src: Path, layout: str, rawframes_dir: str = "rawframes") -> list[VideoFolders]:
    """Every video of a loose tree, sorted by its pack's name."""
    videos: dict[str, list[str]] = {}
    recursive = False
    if layout == "ucf101":
        for modality in UCF101_FOLDERS:
            for name in _subdirs(src / modality):
                videos.setdefault(name, []).append(f"{modality}/{name}")
    elif layout == "folder":
        recursive = True  # flow in the video's u/, v/ or flow_rgb/
        for group in _subdirs(src):
            if group.startswith(".") or group == PACKS:
                continue
            for name in _subdirs(src / group):
                videos[f"{group}/{name}"] = [f"{group}/{name}"]
    elif layout == "rawframes":
        top = src / rawframes_dir
        for folder, _, files in os.walk(top):
            if files:
                key = Path(folder).relative_to(top).as_posix()
                videos[key] = [f"{Path(rawframes_dir).as_posix()}/{key}"]
    else:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(PACK_LAYOUTS)}")
    return [VideoFolders(key, tuple(folders), recursive)
            for key, folders in sorted(videos.items())]


def video_files(src: Path, video: VideoFolders) -> list[tuple[str, Path]]:
    """(member name, loose file) of every regular file of the video's folders."""
    files = []
    for folder in video.folders:
        if video.recursive:
            for at, _, names in os.walk(src / folder):
                inside = Path(at).relative_to(src).as_posix()
                files += [(f"{inside}/{n}", Path(at) / n) for n in names
                          if os.path.isfile(os.path.join(at, n))]
        else:
            with os.scandir(src / folder) as entries:
                files += [(f"{folder}/{e.name}", Path(e.path)) for e in entries if e.is_file()]
    return sorted(files)


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def verify_pack(pack: Path, files: list[tuple[str, Path]]) -> list[str]:
    """What differs between a pack and the loose files: files missing from it or only in it,
    and files whose bytes differ (by hash), each named; [] when every byte is equal."""
    try:
        header = read_header(pack)
    except OSError as err:
        return [f"cannot read {pack}: {err}"]
    packed = {f"{d}/{n}" for d in header.dirs for n in header.names(d)}
    expected = dict(files)
    problems = [f"{m}: missing from {pack}" for m in sorted(set(expected) - packed)]
    problems += [f"{m}: in {pack}, not among the loose files" for m in sorted(packed - set(expected))]
    with PackReader(pack) as r:
        for member, source in files:
            if member not in packed:
                continue
            try:
                same = _digest(r.read(member)) == _digest(source.read_bytes())
            except OSError as err:
                problems.append(f"{member}: {err}")
                continue
            if not same:
                problems.append(f"{member}: its bytes in {pack} differ from {source}")
    return problems


def pack_video(src: Path, dst: Path, video: VideoFolders, verify: bool = False) -> dict:
    """Pack one video unless its pack is whole already; what happened, as a dict."""
    pack = dst / PACKS / f"{video.key}{SUFFIX}"
    result = {"key": video.key, "status": "done", "files": 0, "bytes_in": 0, "bytes_out": 0,
              "problems": None, "error": None}
    try:
        files = video_files(src, video)
        if not complete(pack):
            result["status"] = "redone" if pack.exists() else "packed"
            result["bytes_out"], result["bytes_in"] = write_pack(pack, files, video.key)
            result["files"] = len(files)
        if verify:
            result["problems"] = verify_pack(pack, files)
    except (OSError, ValueError) as err:
        result.update(status="failed", error=str(err))
    return result


def copy_extras(src: Path, dst: Path, layout: str, rawframes_dir: str = "rawframes") -> list[str]:
    """Copy what is not frames (split and list files, class files, extraction.json) from the
    root of `src` to `dst`; returns their names. Hidden entries (the loose frame index) and
    frame folders stay behind, and so do a folder layout's class folders."""
    frames = {PACKS}
    if layout == "ucf101":
        frames |= {"jpegs_256", "tvl1_flow"}
    elif layout == "rawframes":
        frames.add(Path(rawframes_dir).parts[0])
    copied = []
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        if entry.name.startswith(".") or entry.name in frames:
            continue
        target = dst / entry.name
        if entry.is_dir():
            if layout == "folder":
                continue  # a class folder
            shutil.copytree(entry.path, target, dirs_exist_ok=True)
        elif entry.is_file():
            partial = target.with_name(target.name + ".partial")
            shutil.copy2(entry.path, partial)
            os.replace(partial, target)
        else:
            continue
        copied.append(entry.name)
    return copied


def pack_tree(src: str | Path, dst: str | Path, *, layout: str = "auto", workers: int = 1,
              shard: tuple[int, int] | None = None, verify: bool = False,
              progress: bool = True, rawframes_dir: str = "rawframes") -> PackSummary:
    """Pack every video of the loose root `src` into `dst` (or shard K of N: every N-th video
    from the K-th, so a job array shares the work); never stops on a bad video."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"expected a dataset root at {src}")
    if dst.resolve() == src.resolve() or dst.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"write the packs outside the loose root: {dst} is inside {src}")
    if layout == "auto":
        layout = detect_layout(src, rawframes_dir)
    videos = find_videos(src, layout, rawframes_dir)
    if not videos:
        raise ValueError(f"no video folders in {src} (layout {layout}); see "
                         f"scripts/pack_frames.py --help for the layouts")
    if shard is not None:
        videos = videos[shard[0] - 1::shard[1]]
    (dst / PACKS).mkdir(parents=True, exist_ok=True)
    summary = PackSummary(copied=copy_extras(src, dst, layout, rawframes_dir))
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=len(videos), desc="packs", unit="video", disable=not progress,
               dynamic_ncols=True)

    def tally(result: dict) -> None:
        key, status = result["key"], result["status"]
        if status == "failed":
            summary.failed[key] = result["error"]
        elif status == "done":
            summary.done.append(key)
        else:
            summary.packed.append(key)
            if status == "redone":
                summary.redone.append(key)
        summary.files += result["files"]
        summary.bytes_in += result["bytes_in"]
        summary.bytes_out += result["bytes_out"]
        if result["problems"] is not None:
            summary.verified += 1
            if result["problems"]:
                summary.mismatched[key] = result["problems"]
        bar.update()
        seconds = time.perf_counter() - start
        bar.set_postfix_str(f"{summary.bytes_in / 1e6 / max(seconds, 1e-9):.1f} MB/s",
                            refresh=False)

    if workers <= 1:
        for video in videos:
            tally(pack_video(src, dst, video, verify))
    else:
        context = multiprocessing.get_context("spawn")  # as extract_all: no inherited pools
        with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                 initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(pack_video, src, dst, video, verify) for video in videos]
            for future in as_completed(futures):
                tally(future.result())
    bar.close()
    write_pack_index(dst)  # every pack of dst (other shards' too): start-up opens none
    summary.seconds = time.perf_counter() - start
    return summary

