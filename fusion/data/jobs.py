"""One video's extraction, shared by the per-process driver (extract.py) and the device
pipeline (pipeline.py): how frames and flow are made (`Settings`, recorded in extraction.json),
which video (`Job`), where its folders go (`final_dirs`), the partial folders it is written
into and moved out of (`Work`), and how a failure reads (`failure`). The layouts are described
in extract.py.
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
from fusion.data.sampling import FLOW_PAIRS, SPREAD, spread_around_middle
from fusion.data.video import VideoError, declared_frame_count, iter_frames

LAYOUTS = ("ucf101", "folder")
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
    """One video under way: its partial folders, then where they move when complete."""

    job: Job
    dirs: dict[str, Path]
    partial: Path
    with_flow: bool
    flow_format: str = "uv"
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
              flow_format: str = "uv") -> "Work | None":
        """The video's work, its partial folders made afresh; None when it is already done."""
        dirs = final_dirs(out, job, layout, with_flow, flow_format)
        if list(dirs.values())[-1].is_dir():
            return None
        partial = out / PARTIAL / (f"{job.group}__{job.name}" if job.group else job.name)
        shutil.rmtree(partial, ignore_errors=True)  # a leftover of a killed run
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)  # flow moved in before a kill, without its RGB
        work = cls(job, dirs, partial, with_flow, flow_format)
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
        """Move the complete video into place, RGB last (the folder that marks it done)."""
        if self.with_flow and self.flow_format == "rgb":
            self.write_colour_flow()
        if layout == "folder":
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


def failure(err: Exception) -> str:
    """What went wrong, the OS's reason kept: a full disk says so."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"disk full: {err}"
    return str(err)
