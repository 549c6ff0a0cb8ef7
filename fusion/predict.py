"""Time-stamped predictions on new videos with a trained checkpoint (seed 004's use case).

The video is decoded as a stream; frames are resized to the training data's short side, flow is
computed on the fly with the method the model was trained on and quantised the same way, and a
window slides over the video. Each window is sampled like an evaluation clip (T centred
segments); only the flow pairs that the snippets use are computed, once each. Memory holds one
window of frames, so videos of any length work.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from fusion.config import Config, from_dict
from fusion.data.clips import arrange_sample
from fusion.data.flow import FlowEstimator, quantize
from fusion.data.sampling import SPREAD, clip_frames, spread_around_middle
from fusion.data.flow_colours import colour_video
from fusion.data.transforms import EvalTransform, single_view
from fusion.data.video import VideoError, iter_frames, open_video
from fusion.build import model_from_checkpoint
from fusion.checkpoint import load_checkpoint
from fusion.device import move

DEFAULT_FPS = 25.0


@dataclass
class Window:
    start: float  # seconds
    end: float
    label: str
    probability: float
    scores: list[float]


def window_starts(frames: int, size: int, stride: int) -> list[int]:
    """Window starts that cover all `frames`: every `stride`, plus one flush with the end."""
    if frames <= size:
        return [0]
    starts = list(range(0, frames - size + 1, stride))
    if starts[-1] + size < frames:
        starts.append(frames - size)
    return starts


class ClipMaker:
    """Builds one model input (1 x T x C x H x W per modality) from a window of frames."""

    def __init__(self, config: Config, device: str = "auto"):
        self.config = config
        self.use_rgb = "rgb" in config.modalities
        self.use_flow = "flow" in config.modalities
        self.estimator = FlowEstimator(config.flow_method, raft_model=config.raft_model,
                                       raft_weights=config.raft_weights,
                                       device=device) if self.use_flow else None
        self.transform = EvalTransform(config.image_size, single_view(config.eval_crops))
        self.flow_cache: dict[tuple[int, int], np.ndarray] = {}

    def flows(self, pairs: list[tuple[int, int]], frames: dict[int, np.ndarray]) -> np.ndarray:
        """Flow between absolute frames a -> b of each pair, as the datasets store it:
        quantised u, v (N x 2 x H x W uint8), or with flow_format rgb colour images of the
        pairs' float fields on their one scale (N x 3 x H x W; under spread-around-middle
        these are the video's fields, as extraction colours them). Each pair is computed once,
        the missing ones in one batch."""
        colour = self.config.flow_format == "rgb"
        missing = [p for p in dict.fromkeys(pairs) if p not in self.flow_cache]
        if missing:
            computed = self.estimator.many([frames[a] for a, _ in missing],
                                           [frames[b] for _, b in missing])
            for pair, flow in zip(missing, computed):
                self.flow_cache[pair] = flow if colour else \
                    quantize(flow, self.config.flow_bound).transpose(2, 0, 1)
        if colour:
            return colour_video([self.flow_cache[p] for p in pairs]).transpose(0, 3, 1, 2)
        return np.stack([self.flow_cache[p] for p in pairs])

    def frames_needed(self) -> int:
        """Frames one snippet spans (a flow stack of L joins L + 1 frames); a window with fewer
        is filled by looping them, as the datasets fill short videos (seed 002)."""
        c = self.config
        return max(c.flow_stack + 1 if self.use_flow else 1, c.rgb_frames if self.use_rgb else 1)

    def forget_before(self, k: int) -> None:
        for key in [key for key in self.flow_cache if key[0] < k]:
            del self.flow_cache[key]

    def __call__(self, frames: dict[int, np.ndarray], first: int, last: int):
        c = self.config
        count = last - first  # frames in the window
        if self.use_flow and count < 2:
            raise VideoError("a flow model needs at least two frames")
        # sampled as the dataset samples an evaluation clip ("val": the segments' centres)
        rgb_idx, flow_idx = clip_frames(
            mode="val", policy=c.frame_policy, segments=c.segments, clips=1,
            flow_stack=c.flow_stack, rgb_stack=c.rgb_frames, flow_frames=count - 1,
            rgb_frames=count, use_flow=self.use_flow, use_rgb=self.use_rgb)
        # stored flow frame k joins frames k and k + 1, or the k-th and (k+1)-th spread frames
        joined = (spread_around_middle(count, c.flow_stack) if c.frame_policy == SPREAD
                  else list(range(count)))
        rgb = flow = None
        if rgb_idx is not None:  # N x 3 x H x W
            rgb = torch.from_numpy(np.stack([frames[first + i] for i in rgb_idx])).permute(
                0, 3, 1, 2)
        if flow_idx is not None:  # N x 2 (or 3, colour images) x H x W
            flow = torch.from_numpy(self.flows(
                [(first + joined[k], first + joined[k + 1]) for k in flow_idx], frames))
        rgb, flow = arrange_sample(rgb, flow, self.transform, segments=c.segments,
                                   rgb_stack=c.rgb_frames, flow_stack=c.flow_stack,
                                   single_view=True)
        return (None if rgb is None else rgb.unsqueeze(0),
                None if flow is None else flow.unsqueeze(0))


def _windows(frames_iter: Iterator[np.ndarray], size: int, stride: int):
    """Yield (frames, first, last) per window while decoding, at the starts `window_starts`
    gives for the final frame count. Frames before the last window are dropped; the last
    window's are kept until the end, where a tail window may need them."""
    frames: dict[int, np.ndarray] = {}
    start, total = 0, 0
    emitted_end = 0
    for i, frame in enumerate(frames_iter):
        frames[i] = frame
        total = i + 1
        while start + size <= total:
            yield frames, start, start + size
            emitted_end = start + size
            for k in [k for k in frames if k < start]:
                del frames[k]
            start += stride
    if total == 0:
        return
    if emitted_end == 0:  # shorter than one window: the whole video
        yield frames, 0, total
    elif emitted_end < total:  # the tail: one window flush with the end
        yield frames, total - size, total


def short_window(path: str | Path, count: int, needed: int, maker: ClipMaker, *, whole: bool,
                 strict: bool) -> str:
    """The note for a window of `count` frames (`whole`: the whole video, shorter than one
    window), fewer than the `needed` of one clip; with `strict`, a VideoError instead. A flow
    model needs two frames in any case."""
    if maker.use_flow and count < 2:
        raise VideoError(f"{path} has {count} frame; a flow model needs at least two (flow is "
                         f"the motion between frames)")
    what = (f"{count} frames" if whole else f"windows of {count} frames (--window)") + \
        f", fewer than the {needed} one clip needs" + \
        (f" for its {maker.config.flow_stack} flow fields" if maker.use_flow else "")
    if strict:
        raise VideoError(f"{path}: {what}; refused (--strict); without it the clip repeats "
                         f"the frames in a loop to fill itself")
    return f"{what}: the clip repeats them in a loop to fill itself (--strict refuses)"


@torch.no_grad()
def predict_video(model: torch.nn.Module, config: Config, classes: list[str], path: str | Path,
                  *, window: float = 2.0, stride: float = 1.0,
                  device: torch.device | str = "cpu", strict: bool = False) -> dict:
    """Windows with start / end times, top class and probability, and the video's class.
    A window shorter than one clip (a short video) is filled by looping its frames, and the
    report's note says so; with `strict` it is an error."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be > 0 seconds, got {window}, {stride}")
    capture, fps = open_video(path)
    capture.release()
    notes = []
    if not fps or math.isnan(fps) or fps <= 0:
        fps = DEFAULT_FPS
        notes.append(f"no frame rate in the file; assumed {DEFAULT_FPS} fps")
    size = max(2, round(window * fps))
    step = max(1, min(round(stride * fps), size))
    maker = ClipMaker(config, str(device))
    needed = maker.frames_needed()
    model.eval()
    results, total = [], 0
    decoded = iter_frames(path, config.short_side, config.pad_square)
    for frames, first, last in _windows(decoded, size, step):
        total = max(total, max(frames) + 1)
        if last - first < needed:
            note = short_window(path, last - first, needed, maker, whole=last - first < size,
                                strict=strict)
            if note not in notes:
                notes.append(note)
        rgb, flow = maker(frames, first, last)
        probabilities = model(move(rgb, device), move(flow, device)).float().softmax(-1)[0].cpu()
        top = int(probabilities.argmax())
        results.append(Window(first / fps, last / fps, classes[top],
                              float(probabilities[top]), probabilities.tolist()))
        maker.forget_before(first)
    mean = torch.tensor([w.scores for w in results]).mean(0)
    top = int(mean.argmax())
    return {"video": str(path), "fps": fps, "frames": total, "duration": total / fps,
            "note": "; ".join(notes) or None, "windows": [asdict(w) for w in results],
            "prediction": {"label": classes[top], "probability": float(mean[top])}}


def load_for_prediction(checkpoint_path: str | Path):
    """(model, config, classes) of a training checkpoint."""
    checkpoint = load_checkpoint(checkpoint_path)
    return (model_from_checkpoint(checkpoint), from_dict(checkpoint["config"]),
            checkpoint["classes"])
