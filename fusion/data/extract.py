"""Raw videos -> RGB frames and quantised flow in the layouts the datasets read.

Layouts:
    ucf101: <out>/jpegs_256/<video>/frame000001.jpg, <out>/tvl1_flow/{u,v}/<video>/frame000001.jpg
    folder: <out>/<class>/<video>/frame000001.jpg, <out>/<class>/<video>/{u,v}/frame000001.jpg
(the flow folders keep the name tvl1_flow whatever the method; extraction.json records it).

A video is written under <out>/.partial/ and moved into place when complete, RGB last, so a
killed run leaves no half video: a video counts as done when its RGB folder exists, and
leftovers of an unfinished one are removed and redone.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from fusion.data.flow import DEFAULT_BOUND, FlowEstimator, quantize
from fusion.data.imagefiles import write_jpeg
from fusion.data.video import VideoError, declared_frame_count, iter_frames, to_gray
from fusion.files import write_json_atomic

LAYOUTS = ("ucf101", "folder")
PARTIAL = ".partial"
SHORT_TOLERANCE = 3  # frames a video may decode fewer than declared without a word


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


def find_videos(videos: Path, extensions: tuple[str, ...]) -> list[Job]:
    if not videos.is_dir():
        raise FileNotFoundError(f"expected a folder of videos at {videos}")
    jobs = []
    for path in sorted(videos.rglob("*")):
        if path.is_file() and path.suffix.lower().lstrip(".") in extensions:
            group = path.parent.name if path.parent != videos else ""
            jobs.append(Job(path, path.stem, group))
    return jobs


def final_dirs(out: Path, job: Job, layout: str, with_flow: bool) -> dict[str, Path]:
    """Where a finished video's folders live, RGB last (the one that marks it done)."""
    if layout == "folder":
        if not job.group:
            raise ValueError(f"folder layout: {job.video} must sit in a class folder")
        return {"video": out / job.group / job.name}
    dirs = {}
    if with_flow:
        dirs["u"] = out / "tvl1_flow" / "u" / job.name
        dirs["v"] = out / "tvl1_flow" / "v" / job.name
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


def extract_video(job: Job, out: Path, *, layout: str = "ucf101", method: str | None = "tvl1",
                  bound: float = DEFAULT_BOUND, short_side: int = 256,
                  strict: bool = False) -> tuple[str, int, str | None]:
    """Extract one video: (done / skipped, frames, a note when it decoded fewer frames than
    declared). Raises VideoError for an unreadable file, and with `strict` for a short one."""
    import cv2

    cv2.setNumThreads(1)  # parallelism comes from the worker processes
    dirs = final_dirs(out, job, layout, method is not None)
    last = list(dirs.values())[-1]
    if last.is_dir():
        return "skipped", 0, None
    partial = out / PARTIAL / (f"{job.group}__{job.name}" if job.group else job.name)
    shutil.rmtree(partial, ignore_errors=True)  # a leftover of a killed run
    for d in dirs.values():
        shutil.rmtree(d, ignore_errors=True)  # flow moved in before a kill, without its RGB
    rgb_dir = partial / "rgb"
    u_dir, v_dir = partial / "u", partial / "v"
    for d in (rgb_dir, u_dir, v_dir) if method else (rgb_dir,):
        d.mkdir(parents=True)
    estimator = FlowEstimator(method) if method else None
    declared = declared_frame_count(job.video)
    previous = None
    count = 0
    for count, frame in enumerate(iter_frames(job.video, short_side), 1):
        write_jpeg(rgb_dir / f"frame{count:06d}.jpg", frame)
        if estimator is not None:
            gray = to_gray(frame)
            if previous is not None:  # flow frame k: from frame k to frame k + 1
                q = quantize(estimator(previous, gray), bound)
                write_jpeg(u_dir / f"frame{count - 1:06d}.jpg", q[..., 0])
                write_jpeg(v_dir / f"frame{count - 1:06d}.jpg", q[..., 1])
            previous = gray
    note = shortfall(count, declared)
    if note and strict:
        raise VideoError(f"{job.video}: {note}")
    if layout == "folder":
        target = dirs["video"]
        if method:
            u_dir.rename(rgb_dir / "u")
            v_dir.rename(rgb_dir / "v")
        target.parent.mkdir(parents=True, exist_ok=True)
        rgb_dir.rename(target)
    else:
        for key, source in (("u", u_dir), ("v", v_dir), ("rgb", rgb_dir)):
            if key in dirs:
                dirs[key].parent.mkdir(parents=True, exist_ok=True)
                source.rename(dirs[key])
    shutil.rmtree(partial, ignore_errors=True)
    return "done", count, note


def _run(job, out, options):
    try:
        return job, *extract_video(job, out, **options), None
    except (VideoError, OSError, ValueError) as err:
        return job, "failed", 0, None, str(err)


def extract_all(videos: Path, out: Path, *, extensions=("avi", "mp4"), layout="ucf101",
                method: str | None = "tvl1", bound: float = DEFAULT_BOUND,
                short_side: int = 256, workers: int = 1, progress: bool = True,
                strict: bool = False) -> Summary:
    """Extract every video under `videos` in parallel processes; never stops on a bad file."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    if method is not None:
        FlowEstimator(method)  # fail now, not in every worker, on a bad method or missing cv2
    jobs = find_videos(Path(videos), tuple(e.lower() for e in extensions))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _record_settings(out, method, bound, short_side)
    options = dict(layout=layout, method=method, bound=bound, short_side=short_side,
                   strict=strict)
    summary = Summary()
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="videos", disable=not progress, dynamic_ncols=True)
    if workers <= 1:
        results = (_run(job, out, options) for job in jobs)
        for result in results:
            _tally(summary, *result)
            bar.update()
    else:
        # spawn, not fork: a forked child inherits OpenCV's and OpenMP's thread pools in
        # whatever state they were and can deadlock on its first call.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = [pool.submit(_run, job, out, options) for job in jobs]
            for future in as_completed(futures):
                _tally(summary, *future.result())
                bar.update()
    bar.close()
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


def _record_settings(out: Path, method: str | None, bound: float, short_side: int) -> None:
    """extraction.json: how the frames were made; training checks its config against it."""
    settings = {"flow_method": method or "none", "flow_bound": bound, "short_side": short_side}
    path = out / "extraction.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old != settings:
            raise ValueError(f"{out} was extracted with {old}; this run asks for {settings}. "
                             f"Use another --out or the same settings.")
        return
    write_json_atomic(path, settings)
