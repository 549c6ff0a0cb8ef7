"""Extraction with a batched flow method (tvl1-torch, raft) on one device: worker threads decode
videos and write JPEGs while this thread feeds the device batches of frame pairs, taken across
videos (pairs of one frame size batch together), so the device never waits for one video's
decoding. OpenCV's decoding, colour conversion and JPEG coding release the GIL, so threads
run them in parallel. Each video is still written under .partial/ and moved into place when
its last flow frame is written (jobs.py's `Work`; or packed into the video's pack), so a killed
run resumes as before.
"""
from __future__ import annotations

from collections import defaultdict, deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

from fusion.data.jobs import Job, Settings, Work, failure
from fusion.data.flow import FlowEstimator
from fusion.data.video import VideoError


@dataclass
class _Video:
    work: Work
    pairs: int  # flow frames to compute
    computed: int = 0
    writes: list[Future] = field(default_factory=list)


def extract_on_device(jobs: list[Job], out, settings: Settings, estimator: FlowEstimator, *,
                      layout: str, strict: bool, workers: int, report,
                      store: str = "loose") -> None:
    """Extract `jobs` with `settings`' batched `estimator` (its `batch_size` pairs a batch),
    calling `report(job, status, frames, note, error)` for each."""
    batch_size = estimator.batch_size
    limit = 2 * workers + 2  # videos decoding or waiting for the device at once: bounds memory
    pending = deque(jobs)
    decoding: dict[Future, Job] = {}
    videos: list[_Video] = []
    queued: dict[tuple, list] = defaultdict(list)  # frame size -> (video, number, a, b)

    def decode(job: Job):
        work = Work.start(job, out, layout, with_flow=True, flow_format=settings.flow_format,
                          store=store)
        if work is None:
            return None, []
        frames = []
        work.decode(settings, strict, lambda frame: frames.append(estimator.prepare(frame)))
        return work, frames

    def run(batch) -> None:
        flows = estimator.many([a for _, _, a, _ in batch], [b for _, _, _, b in batch])
        by_video = defaultdict(list)
        for (video, number, _, _), flow in zip(batch, flows):
            by_video[id(video)].append((video, number, flow))
        for items in by_video.values():
            video = items[0][0]
            video.computed += len(items)
            video.writes.append(writers.submit(video.work.write_flow, [n for _, n, _ in items],
                                               [f for _, _, f in items], settings.flow_bound))

    def received(job: Job, future: Future) -> None:
        try:
            work, frames = future.result()
        except (VideoError, OSError, ValueError) as err:
            report(job, "failed", 0, None, failure(err))
            return
        if work is None:
            report(job, "skipped", 0, None, None)
            return
        video = _Video(work, max(len(frames) - 1, 0))
        videos.append(video)
        for k in range(video.pairs):  # flow frame k + 1: frames k -> k + 1
            queued[frames[k].shape].append((video, k + 1, frames[k], frames[k + 1]))

    with ThreadPoolExecutor(workers) as decoders, ThreadPoolExecutor(workers) as writers:
        while pending or decoding or videos:
            while pending and len(decoding) + len(videos) < limit:
                job = pending.popleft()
                decoding[decoders.submit(decode, job)] = job
            full = any(len(q) >= batch_size for q in queued.values())
            if decoding and not full:  # nothing for the device yet: wait for a video
                wait(decoding, return_when=FIRST_COMPLETED)
            for future in [f for f in decoding if f.done()]:
                received(decoding.pop(future), future)
            # partial batches only when no video is on its way to fill them
            for shape, batch in queued.items():
                while len(batch) >= batch_size or (batch and not decoding):
                    run(batch[:batch_size])
                    del batch[:batch_size]
            complete = [v for v in videos if v.computed == v.pairs]
            if complete and not decoding and not any(queued.values()):
                wait([w for v in complete for w in v.writes])
            for video in [v for v in complete if all(w.done() for w in v.writes)]:
                videos.remove(video)
                errors = [w.exception() for w in video.writes if w.exception()]
                if errors:
                    report(video.work.job, "failed", 0, None, failure(errors[0]))
                    continue
                video.work.finish(layout)
                report(video.work.job, "done", video.work.count, video.work.note, None)
