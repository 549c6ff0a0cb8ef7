"""Raw videos -> RGB frames and quantised flow in the layouts the datasets read.

Layouts:
    ucf101: <out>/jpegs_256/<video>/frame000001.jpg, <out>/tvl1_flow/{u,v}/<video>/frame000001.jpg
    folder: <out>/<class>/<video>/frame000001.jpg, <out>/<class>/<video>/{u,v}/frame000001.jpg
(the flow folders keep the name tvl1_flow whatever the method; extraction.json records it).
With flow_format "rgb" (seed 001) the flow is stored as colour images instead of u and v:
    ucf101: <out>/tvl1_flow/rgb/<video>/frame000001.png; folder: <out>/<class>/<video>/flow_rgb/
each video's float fields coloured together on the video's one scale (`colour_video`, seed
001's call of flow_to_image) and written losslessly as PNG; a video's fields are held in memory
until its last one is computed (about 0.7 MB per 340 x 256 field).

Flow frame k joins frames k and k + 1, or, with flow_pairs = spread-around-middle (seed 001),
frames s_k and s_{k+1} of the L + 1 frames `sampling.spread_around_middle` selects: then a video
has exactly L flow frames, and the video is decoded twice (once to count its frames, once to
keep the selected ones), so memory holds L + 1 frames whatever its length.

A video is written under <out>/.partial/ and moved into place when complete, RGB last, so a
killed run leaves no half video: a video counts as done when its RGB folder exists, and
leftovers of an unfinished one are removed and redone.
"""
from __future__ import annotations

import errno
import functools
import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from fusion.choices import FLOW_FORMATS, resolve_name
from fusion.data.clips import COLOUR_FLOW_TEMPLATE, flow_components
from fusion.data.flow import BATCHED, DEFAULT_BOUND, FlowEstimator, quantize
from fusion.data.flow_colours import colour_video
from fusion.data.imagefiles import write_jpeg, write_png
from fusion.data.sampling import FLOW_PAIRS, SPREAD, spread_around_middle
from fusion.data.video import VideoError, declared_frame_count, iter_frames
from fusion.files import write_json_atomic

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


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    short: dict[str, str] = field(default_factory=dict)  # decoded fewer frames than declared
    frames: int = 0
    seconds: float = 0.0

    def report(self) -> str:
        lines = [f"{len(self.done)} videos extracted ({self.frames} frames), "
                 f"{len(self.skipped)} already done and skipped, {len(self.failed)} failed, "
                 f"in {self.seconds:.1f} s"]
        lines += [f"  failed: {name}: {why}" for name, why in sorted(self.failed.items())]
        if self.short:
            lines.append(f"{len(self.short)} videos decoded fewer frames than their container "
                         f"declares (kept; --strict fails them):")
            lines += [f"  short: {name}: {why}" for name, why in sorted(self.short.items())]
        return "\n".join(lines)


def find_videos(videos: Path, extensions: tuple[str, ...], layout: str = "ucf101") -> list[Job]:
    """Every video under `videos`; two that would share an output folder (clip.avi and
    clip.mp4 in one class folder; under the ucf101 layout, one name in two folders) are an
    error naming both, before any work starts."""
    if not videos.is_dir():
        raise FileNotFoundError(f"expected a folder of videos at {videos}")
    jobs = []
    for path in sorted(videos.rglob("*")):
        if path.is_file() and path.suffix.lower().lstrip(".") in extensions:
            group = path.parent.name if path.parent != videos else ""
            jobs.append(Job(path, path.stem, group))
    seen: dict[str, Path] = {}
    clashes = []
    for job in jobs:
        key = f"{job.group}/{job.name}" if layout == "folder" else job.name
        if key in seen:
            clashes.append(f"{seen[key]} and {job.video}")
        seen.setdefault(key, job.video)
    if clashes:
        raise ValueError(f"{len(clashes)} pairs of videos would be written to one folder (a "
                         f"video's folder is its file name without the extension): "
                         + "; ".join(clashes[:5]) + (" ..." if len(clashes) > 5 else "")
                         + ". Rename one of each pair.")
    return jobs


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


def extract_video(job: Job, out: Path, settings: Settings = Settings(), *,
                  layout: str = "ucf101", strict: bool = False,
                  device: str = "auto") -> tuple[str, int, str | None]:
    """Extract one video in this process: (done / skipped, frames, a note when it decoded
    fewer frames than declared). Raises VideoError for an unreadable file, and with `strict`
    for a short one."""
    work = Work.start(job, out, layout, settings.flow_method is not None, settings.flow_format)
    if work is None:
        return "skipped", 0, None
    pairs = PairStream(work, _estimator(settings, device), settings.flow_bound) \
        if work.with_flow else None
    work.decode(settings, strict, pairs.add if pairs else None)
    if pairs:
        pairs.flush()
    work.finish(layout)
    return "done", work.count, work.note


class PairStream:
    """Consecutive frames given one at a time -> flow frame k between the k-th and the next,
    computed in the estimator's batches and written as they come (memory: one batch)."""

    def __init__(self, work: Work, estimator: FlowEstimator, bound: float):
        self.work, self.estimator, self.bound = work, estimator, bound
        self.previous = None
        self.pending: list[tuple[int, object, object]] = []
        self.written = 0

    def add(self, frame) -> None:
        if self.previous is not None:
            self.pending.append((self.written + len(self.pending) + 1, self.previous, frame))
            if len(self.pending) >= self.estimator.batch_size:
                self.flush()
        self.previous = frame

    def flush(self) -> None:
        if self.pending:
            numbers, firsts, seconds = zip(*self.pending)
            self.work.write_flow(numbers, self.estimator.many(list(firsts), list(seconds)),
                                 self.bound)
            self.written += len(self.pending)
            self.pending = []


@functools.lru_cache(maxsize=1)
def _estimator(settings: Settings, device: str) -> FlowEstimator:
    """One estimator per process, shared by its videos (RAFT loads its weights once)."""
    return settings.estimator(device)


def failure(err: Exception) -> str:
    """What went wrong, the OS's reason kept: a full disk says so."""
    if isinstance(err, OSError) and err.errno == errno.ENOSPC:
        return f"disk full: {err}"
    return str(err)


def _run(job, out, settings, options):
    try:
        return job, *extract_video(job, out, settings, **options), None
    except (VideoError, OSError, ValueError) as err:
        return job, "failed", 0, None, failure(err)


def die_with_parent() -> None:
    """A worker process's initializer: end with the process that started it, also when that
    one is SIGKILLed (no cleanup runs then, and an orphan would go on extracting into a
    folder a rerun is about to clean). Linux: the kernel's parent-death signal; elsewhere a
    thread that notices the parent is gone."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        if libc.prctl(1, signal.SIGKILL) == 0:  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:  # the parent died before the call
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """"K/N" -> (K, N), 1 <= K <= N, or an error naming --shard."""
    if not text:
        return None
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ValueError(f"--shard {text!r}: expected K/N with 1 <= K <= N, e.g. 3/8")
    return int(k), int(n)


def extract_all(videos: Path, out: Path, settings: Settings = Settings(), *,
                extensions=("avi", "mp4"), layout="ucf101", workers: int = 1,
                progress: bool = True, strict: bool = False, device: str = "auto",
                batch_size: int = 32, shard: tuple[int, int] | None = None) -> Summary:
    """Extract every video under `videos` (or shard K of N of them: every N-th from the K-th,
    so N machines share one extraction into one `out`); never stops on a bad file. OpenCV's
    methods run a video per worker process; the batched ones (tvl1-torch, raft) run on one
    device, fed `batch_size` pairs at a time across videos by `workers` decoding threads."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    # fail now, not in every worker, on a bad method, device, weights file or missing cv2; the
    # estimator made here is the one that runs (batched methods, or one worker in-process)
    if settings.flow_method in BATCHED:
        estimator = settings.estimator(device, batch_size=batch_size)
    elif settings.flow_method is not None:
        _estimator(settings, device)
    jobs = find_videos(Path(videos), tuple(e.lower() for e in extensions), layout)
    if shard is not None:
        jobs = jobs[shard[0] - 1::shard[1]]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _record_settings(out, settings)
    options = dict(layout=layout, strict=strict, device=device)
    summary = Summary()
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="videos", disable=not progress, dynamic_ncols=True)

    def report(*result):
        _tally(summary, *result)
        bar.update()
    if settings.flow_method in BATCHED:
        from fusion.data.pipeline import extract_on_device

        extract_on_device(jobs, out, settings, estimator, layout=layout, strict=strict,
                          workers=max(workers, 1), report=report)
    elif workers <= 1:
        results = (_run(job, out, settings, options) for job in jobs)
        for result in results:
            _tally(summary, *result)
            bar.update()
    else:
        # spawn, not fork: a forked child inherits OpenCV's and OpenMP's thread pools in
        # whatever state they were and can deadlock on its first call.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                 initializer=die_with_parent) as pool:
            futures = [pool.submit(_run, job, out, settings, options) for job in jobs]
            for future in as_completed(futures):
                _tally(summary, *future.result())
                bar.update()
    bar.close()
    if shard is None:  # other shards may still be writing theirs
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _tally(summary: Summary, job: Job, status: str, frames: int, note: str | None,
           error: str | None) -> None:
    name = f"{job.group}/{job.name}" if job.group else job.name
    if status == "failed":
        summary.failed[str(job.video)] = error
    else:
        getattr(summary, status).append(name)
        summary.frames += frames
        if note:
            summary.short[str(job.video)] = note


def _record_settings(out: Path, settings: Settings) -> None:
    """extraction.json: how the frames were made; training checks its config against it."""
    recorded = settings.recorded()
    path = out / "extraction.json"
    if path.is_file():
        old = {**RECORDED_DEFAULTS, **json.loads(path.read_text())}
        if old != recorded:
            raise ValueError(f"{out} was extracted with {old}; this run asks for {recorded}. "
                             f"Use another --out or the same settings.")
        return
    write_json_atomic(path, recorded)
