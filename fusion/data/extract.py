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

With store "packed" (`--store packed`) each finished video's partial folders are written into
its pack instead, <out>/packs/<video>.tar (folder layout: packs/<class>/<video>.tar), the files
named as they would have been moved (`fusion.data.packs`; what scripts/pack_frames.py makes of
the loose tree): the millions of frame files never reach the dataset root. A video is done
when its pack is there, whole. A run ends by writing the root's index of its packs
(`fusion.data.pack_index`).
"""
from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from fusion.data.flow import BATCHED, FlowEstimator
from fusion.data.jobs import (LAYOUTS, PARTIAL, RECORDED_DEFAULTS, Job, Settings, Work,
                              check_store, failure)
from fusion.data.pack_index import write_pack_index
from fusion.data.parallel import die_with_parent
from fusion.data.video import VideoError
from fusion.files import write_json_atomic
from fusion.lock import LOCK_NAME, FolderLocked, live_holders, locked


@dataclass(frozen=True)
class Execution:
    """How an extraction runs, none of which changes what a video becomes: `workers` (processes
    for OpenCV's methods, decoding threads for the batched ones), the `device` tvl1-torch and
    RAFT run on and their `batch_size` (frame pairs a device batch, across videos), the
    `shard` (K, N) of a job array this machine takes (every N-th video from the K-th), and the
    progress bar."""

    workers: int = 1
    device: str = "auto"
    batch_size: int = 32
    shard: tuple[int, int] | None = None
    progress: bool = True


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


def extract_video(job: Job, out: Path, settings: Settings = Settings(), *,
                  layout: str = "ucf101", strict: bool = False, device: str = "auto",
                  store: str = "loose") -> tuple[str, int, str | None]:
    """Extract one video in this process: (done / skipped, frames, a note when it decoded
    fewer frames than declared). Raises VideoError for an unreadable file, and with `strict`
    for a short one."""
    work = Work.start(job, out, layout, settings.flow_method is not None, settings.flow_format,
                      store)
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


def _run(job, out, settings, options):
    try:
        return job, *extract_video(job, out, settings, **options), None
    except (VideoError, OSError, ValueError) as err:
        return job, "failed", 0, None, failure(err)


def extract_all(videos: Path, out: Path, settings: Settings = Settings(), *,
                extensions=("avi", "mp4"), layout="ucf101", strict: bool = False,
                store: str = "loose", execution: Execution = Execution()) -> Summary:
    """Extract every video under `videos` (or shard K of N of them: every N-th from the K-th,
    so N machines share one extraction into one `out`); never stops on a bad file. OpenCV's
    methods run a video per worker process; the batched ones (tvl1-torch, raft) run on one
    device, fed `batch_size` pairs at a time across videos by `workers` decoding threads
    (`execution`). `store`: "loose" (frame files) or "packed" (a pack per video)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid: {', '.join(LAYOUTS)}")
    check_store(Path(out), layout, store)
    # fail now, not in every worker, on a bad method, device, weights file or missing cv2; the
    # estimator made here is the one that runs (batched methods, or one worker in-process)
    if settings.flow_method in BATCHED:
        estimator = settings.estimator(execution.device, batch_size=execution.batch_size)
    elif settings.flow_method is not None:
        _estimator(settings, execution.device)
    jobs = find_videos(Path(videos), tuple(e.lower() for e in extensions), layout)
    shard = execution.shard
    if shard is not None:
        jobs = jobs[shard[0] - 1::shard[1]]
    out = Path(out)
    with extraction_lock(out, shard):
        _record_settings(out, settings)
        return _extract(jobs, out, settings, estimator if settings.flow_method in BATCHED
                        else None, layout=layout, strict=strict, store=store,
                        execution=execution)


@contextlib.contextmanager
def extraction_lock(out: Path, shard: tuple[int, int] | None):
    """One extraction into `out` at a time (a second would clean the .partial/ folders the first
    is writing into), except disjoint shards of one job array: shard K/N holds `.lock.K-of-N`,
    an unsharded run `.lock`, and neither starts beside a live holder of the other kind."""
    name = LOCK_NAME if shard is None else f"{LOCK_NAME}.{shard[0]}-of-{shard[1]}"
    others = f"{LOCK_NAME}.*-of-*" if shard is None else LOCK_NAME
    with locked(out, name):
        busy = live_holders(out, others)
        if busy:
            raise FolderLocked(f"{out} is being extracted into by {busy[0]}" +
                               (" (an unsharded run)" if shard is not None else
                                " (a shard of a job array)"))
        yield


def _extract(jobs: list[Job], out: Path, settings: Settings, estimator, *, layout: str,
             strict: bool, store: str, execution: Execution) -> Summary:
    options = dict(layout=layout, strict=strict, device=execution.device, store=store)
    summary = Summary()
    start = time.perf_counter()
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), desc="videos", disable=not execution.progress,
               dynamic_ncols=True)

    def report(*result):
        _tally(summary, *result)
        bar.update()
    if settings.flow_method in BATCHED:
        from fusion.data.pipeline import extract_on_device

        extract_on_device(jobs, out, settings, estimator, layout=layout, strict=strict,
                          workers=max(execution.workers, 1), report=report, store=store)
    elif execution.workers <= 1:
        results = (_run(job, out, settings, options) for job in jobs)
        for result in results:
            _tally(summary, *result)
            bar.update()
    else:
        # spawn, not fork: a forked child inherits OpenCV's and OpenMP's thread pools in
        # whatever state they were and can deadlock on its first call.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=execution.workers, mp_context=context,
                                 initializer=die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            futures = [pool.submit(_run, job, out, settings, options) for job in jobs]
            for future in as_completed(futures):
                _tally(summary, *future.result())
                bar.update()
    bar.close()
    if execution.shard is None:  # other shards may still be writing theirs
        shutil.rmtree(out / PARTIAL, ignore_errors=True)
    if store == "packed":
        write_pack_index(out)  # every pack of out (other shards' too): start-up opens none
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
        if old != {**RECORDED_DEFAULTS, **recorded}:  # a key absent from both means its default
            raise ValueError(f"{out} was extracted with {old}; this run asks for {recorded}. "
                             f"Use another --out or the same settings.")
        return
    write_json_atomic(path, recorded)
