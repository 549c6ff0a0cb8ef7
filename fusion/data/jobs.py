"""One video's extraction, shared by the per-process driver (extract.py) and the device
pipeline (pipeline.py): how frames and flow are made (`Settings`, recorded in extraction.json),
which video (`Job`), where its folders go (`final_dirs`), the partial folders it is written
into and moved out of, or packed from (`Work`), and how a failure reads (`failure`). The
layouts are described in extract.py.
"""
from __future__ import annotations

import errno
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fusion.choices import FLOW_FORMATS, resolve_name
from fusion.data.clips import COLOUR_FLOW_TEMPLATE, flow_components
from fusion.data.flow import DEFAULT_BOUND, FlowEstimator, quantize
from fusion.data.flow_colours import colour_video
from fusion.data.imagefiles import write_jpeg, write_png
from fusion.data.packs import PACKS, PARTIAL as PACK_PARTIAL, SUFFIX, complete, write_pack
from fusion.data.sampling import FLOW_PAIRS, SPREAD, spread_around_middle
from fusion.data.video import VideoError, declared_frame_count, iter_frames

LAYOUTS = ("ucf101", "folder")
STORES = ("loose", "packed")  # extract_frames.py --store: frame files, or a pack per video
PARTIAL = ".partial"
SHORT_TOLERANCE = 3  # frames a video may decode fewer than declared without a word


@dataclass(frozen=True)
class Settings:
    """How frames and flow are made; extraction.json records them (`recorded`) and training
    checks its config against them."""

    flow_method: str | None = "tvl1"  # None: RGB frames only
    flow_bound: float = DEFAULT_BOUND
    short_side: int = 256  # 0 keeps the video's size
    pad_square: bool = False  # zero-pad each frame to a square before resizing (seed 001)
    flow_pairs: str = "consecutive"  # or spread-around-middle
    flow_stack: int = 0  # L of spread-around-middle
    raft_model: str = "large"
    raft_weights: str = "default"
    flow_format: str = "uv"  # uv (quantised u, v JPEGs) | rgb (colour PNGs, one scale a video)

    def __post_init__(self):
        resolve_name(self.flow_format, FLOW_FORMATS, "flow format")
        if self.flow_pairs not in FLOW_PAIRS:
            raise ValueError(f"--flow-pairs {self.flow_pairs!r}: expected one of "
                             f"{', '.join(FLOW_PAIRS)}")
        if self.flow_pairs == SPREAD:
            spread_around_middle(1, self.flow_stack)  # an even L >= 2, or a named error

    def estimator(self, device: str = "auto", batch_size: int = 8) -> FlowEstimator:
        return FlowEstimator(self.flow_method, raft_model=self.raft_model,
                             raft_weights=self.raft_weights, device=device,
                             batch_size=batch_size)

    def recorded(self) -> dict:
        settings = {"flow_method": self.flow_method or "none", "flow_bound": self.flow_bound,
                    "short_side": self.short_side, "pad_square": self.pad_square,
                    "flow_pairs": self.flow_pairs}
        if self.flow_pairs == SPREAD:
            settings["flow_stack"] = self.flow_stack
        if self.flow_method == "raft":
            settings["raft_model"] = self.raft_model
        if self.flow_method is not None:
            settings["flow_format"] = self.flow_format
        return settings


# What an extraction.json written before a key existed meant by its absence.
RECORDED_DEFAULTS = {"pad_square": False, "flow_pairs": "consecutive", "flow_format": "uv"}


@dataclass(frozen=True)
class Job:
    video: Path
    name: str  # folder name of the video: its file name without the extension
    group: str  # its class folder (folder layout)


def final_dirs(out: Path, job: Job, layout: str, with_flow: bool,
               flow_format: str = "uv") -> dict[str, Path]:
    """Where a finished video's folders live, RGB last (the one that marks it done)."""
    if layout == "folder":
        if not job.group:
            raise ValueError(f"folder layout: {job.video} must sit in a class folder")
        return {"video": out / job.group / job.name}
    dirs = {}
    if with_flow:
        for c in flow_components(flow_format):
            dirs[c + "_flow"] = out / "tvl1_flow" / c / job.name
    dirs["rgb"] = out / "jpegs_256" / job.name
    return dirs


def pack_path(out: Path, job: Job, layout: str) -> Path:
    """Where a finished video's pack lives (`fusion.data.stores`): packs/<video>.tar, or
    packs/<class>/<video>.tar in the folder layout."""
    key = f"{job.group}/{job.name}" if layout == "folder" else job.name
    return out / PACKS / f"{key}{SUFFIX}"


def check_store(out: Path, layout: str, store: str) -> None:
    """One store per root: packs are not written beside loose frames, nor the reverse."""
    resolve_name(store, STORES, "store")
    if not out.is_dir():
        return
    if store == "loose":
        clash = [out / PACKS] if (out / PACKS).is_dir() else []
    elif layout == "ucf101":
        clash = [out / d for d in ("jpegs_256", "tvl1_flow") if (out / d).is_dir()]
    else:
        clash = [d for d in out.iterdir() if d.is_dir() and d.name != PACKS
                 and not d.name.startswith(".")]
    if clash:
        other = "packed" if store == "loose" else "loose"
        raise ValueError(f"{out} holds {other} frames ({clash[0]}); this run writes {store} "
                         f"ones. Use another --out (scripts/pack_frames.py packs a loose root).")


def shortfall(decoded: int, declared: int) -> str | None:
    """What to say when a video decodes clearly fewer frames than its container declares (a
    file cut short decodes only its start): None within a few frames (declared counts are
    sometimes estimates from duration x fps)."""
    if declared and declared - decoded > max(SHORT_TOLERANCE, declared // 100):
        return f"decoded {decoded} of the {declared} frames its container declares " \
               f"(a truncated file?)"
    return None


@dataclass
class Work:
    """One video under way: its partial folders, then where they move when complete, or the
    pack they are written into (store "packed": its files named by where they would move)."""

    job: Job
    dirs: dict[str, Path]
    partial: Path
    with_flow: bool
    flow_format: str = "uv"
    pack: Path | None = None  # the video's pack (store "packed"), else None
    out: Path | None = None
    count: int = 0
    note: str | None = None
    colour_fields: dict[int, object] = field(default_factory=dict)  # rgb: number -> float field

    @property
    def rgb_dir(self) -> Path:
        return self.partial / "rgb"

    def flow_dir(self, component: str) -> Path:
        """The partial folder of flow component u, v or rgb (the colour images)."""
        return self.partial / ("flow_rgb" if component == "rgb" else component)

    @property
    def flow_dirs(self) -> list[Path]:
        return [self.flow_dir(c) for c in flow_components(self.flow_format)] \
            if self.with_flow else []

    @classmethod
    def start(cls, job: Job, out: Path, layout: str, with_flow: bool,
              flow_format: str = "uv", store: str = "loose") -> "Work | None":
        """The video's work, its partial folders made afresh; None when it is already done
        (its RGB folder is in place, or its pack is, whole)."""
        dirs = final_dirs(out, job, layout, with_flow, flow_format)
        pack = pack_path(out, job, layout) if store == "packed" else None
        if complete(pack) if pack else list(dirs.values())[-1].is_dir():
            return None
        partial = out / PARTIAL / (f"{job.group}__{job.name}" if job.group else job.name)
        shutil.rmtree(partial, ignore_errors=True)  # a leftover of a killed run
        if pack:
            pack.with_name(pack.name + PACK_PARTIAL).unlink(missing_ok=True)
        else:
            for d in dirs.values():  # flow moved in before a kill, without its RGB
                shutil.rmtree(d, ignore_errors=True)
        work = cls(job, dirs, partial, with_flow, flow_format, pack, out)
        for d in (work.rgb_dir, *work.flow_dirs):
            d.mkdir(parents=True)
        return work

    def decode(self, settings: Settings, strict: bool, sink) -> None:
        """Write the RGB frames and hand `sink` the frames the flow joins, in order: every
        frame, or the spread selection (the video decoded a second time, so memory holds
        only the selected frames)."""
        import cv2

        cv2.setNumThreads(1)  # parallelism comes from the workers
        declared = declared_frame_count(self.job.video)
        frames = iter_frames(self.job.video, settings.short_side, settings.pad_square)
        for self.count, frame in enumerate(frames, 1):
            write_jpeg(self.rgb_dir / f"frame{self.count:06d}.jpg", frame)
            if self.with_flow and settings.flow_pairs == "consecutive":
                sink(frame)
        if self.with_flow and settings.flow_pairs == SPREAD:
            selected = spread_around_middle(self.count, settings.flow_stack)
            chosen = {i: frame for i, frame in enumerate(
                iter_frames(self.job.video, settings.short_side, settings.pad_square))
                if i in selected}
            for i in selected:
                sink(chosen[i])
        self.note = shortfall(self.count, declared)
        if self.note and strict:
            raise VideoError(f"{self.job.video}: {self.note}")

    def write_flow(self, numbers, flows, bound: float) -> None:
        """Flow frames (1-based `numbers`) as quantised u and v JPEGs; in the rgb format they
        are kept until the video's last one (`finish` colours them together)."""
        for number, flow in zip(numbers, flows):
            if self.flow_format == "rgb":
                self.colour_fields[number] = flow
                continue
            q = quantize(flow, bound)
            write_jpeg(self.flow_dir("u") / f"frame{number:06d}.jpg", q[..., 0])
            write_jpeg(self.flow_dir("v") / f"frame{number:06d}.jpg", q[..., 1])

    def write_colour_flow(self) -> None:
        """The video's fields coloured on its one scale, as lossless PNGs."""
        numbers = sorted(self.colour_fields)
        if numbers:
            images = colour_video([self.colour_fields[n] for n in numbers])
            for number, image in zip(numbers, images):
                write_png(self.flow_dir("rgb") / COLOUR_FLOW_TEMPLATE.format(number), image)
        self.colour_fields.clear()

    def finish(self, layout: str) -> None:
        """Move the complete video into place, RGB last (the folder that marks it done), or
        write its pack."""
        if self.with_flow and self.flow_format == "rgb":
            self.write_colour_flow()
        if self.pack is not None:
            self.write_pack(layout)
        elif layout == "folder":
            target = self.dirs["video"]
            for d in self.flow_dirs:
                d.rename(self.rgb_dir / d.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            self.rgb_dir.rename(target)
        else:
            components = flow_components(self.flow_format) if self.with_flow else ()
            moves = [(c + "_flow", self.flow_dir(c)) for c in components]
            for key, source in (*moves, ("rgb", self.rgb_dir)):
                self.dirs[key].parent.mkdir(parents=True, exist_ok=True)
                source.rename(self.dirs[key])
        shutil.rmtree(self.partial, ignore_errors=True)

    def write_pack(self, layout: str) -> None:
        """The partial folders' files into the video's pack, named as `finish` would move them
        (the names `scripts/pack_frames.py` gives the loose tree's files)."""
        if layout == "folder":
            video = self.dirs["video"]
            folders = [(video, self.rgb_dir), *((video / d.name, d) for d in self.flow_dirs)]
        else:
            components = flow_components(self.flow_format) if self.with_flow else ()
            folders = [*((self.dirs[c + "_flow"], self.flow_dir(c)) for c in components),
                       (self.dirs["rgb"], self.rgb_dir)]
        files = [(f"{final.relative_to(self.out).as_posix()}/{f.name}", f)
                 for final, folder in folders for f in folder.iterdir() if f.is_file()]
        key = self.pack.relative_to(self.out / PACKS).as_posix()[:-len(SUFFIX)]
        write_pack(self.pack, files, key)


def failure(err: Exception) -> str:
    """What went wrong, the OS's reason kept: a full disk says so."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"disk full: {err}"
    return str(err)
