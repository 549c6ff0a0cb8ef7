"""Optical flow storage convention (docs/design.md §5).

Each flow component is stored as an 8-bit grayscale JPEG:
    q = round(255 * (clip(f, -B, B) + B) / (2B)),   B = 20 by default,
so 127.5 is zero motion and a stored u or v maps back to f = q * 2B / 255 - B.
Flow frame k is the motion from frame k to frame k + 1.
"""
from __future__ import annotations

import numpy as np
import torch

from fusion.device import resolve_device

DEFAULT_BOUND = 20.0


def quantize(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Flow in pixels (any shape) -> uint8, clipped at +-bound."""
    if bound <= 0:
        raise ValueError(f"flow bound must be > 0, got {bound}")
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))
    return np.round(scaled).astype(np.uint8)


def dequantize(q, bound: float = DEFAULT_BOUND):
    """uint8 (or its float copy) -> flow in pixels, float32; a torch tensor stays one (on its
    device)."""
    if isinstance(q, torch.Tensor):
        return q.float() * (2 * bound / 255.0) - bound
    return np.asarray(q, dtype=np.float32) * np.float32(2 * bound / 255.0) - np.float32(bound)


METHODS = ("tvl1", "tvl1-torch", "dis", "farneback", "raft")
BATCHED = ("tvl1-torch", "raft")  # methods that run batches of pairs on a device
RAFT_MODELS = ("large", "small")


class FlowEstimator:
    """Dense optical flow between RGB uint8 frames (H x W x 3) -> H x W x 2 (u, v) in pixels.

    tvl1: OpenCV contrib's Dual TV-L1 with its default parameters (the reference, as in the
        twostreamfusion and denseflow releases; about 1-2 s per 340 x 256 pair on one core);
    dis: DIS at the medium preset; farneback: Farneback's polynomial expansion. Both are in
        core OpenCV and two orders of magnitude faster. These three see grayscale frames.
    tvl1-torch: the same Dual TV-L1 in PyTorch (`fusion.data.tvl1`, OpenCV's parameters and
        answers) on grayscale frames, `batch_size` pairs at a time on `device`, through
        torch.compile on a GPU.
    raft: torchvision's RAFT (`raft_model` large | small, `raft_weights` "default" or a local
        file) on the RGB frames, on `device`, `batch_size` pairs at a time (seed 001).
    """

    def __init__(self, method: str = "tvl1", *, raft_model: str = "large",
                 raft_weights: str = "default", device: str = "auto", batch_size: int = 8):
        import cv2  # imported here: only extraction and prediction need OpenCV

        if method not in METHODS:
            raise ValueError(f"unknown flow method {method!r}; valid: {', '.join(METHODS)}")
        self.method = method
        self._cv2 = cv2
        self.batch_size = 1
        if method == "tvl1":
            if not hasattr(cv2, "optflow"):
                raise RuntimeError("TV-L1 needs OpenCV's contrib modules: pip install "
                                   "opencv-contrib-python-headless (or use --flow dis)")
            self._engine = cv2.optflow.DualTVL1OpticalFlow_create()
        elif method == "dis":
            self._engine = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        elif method == "raft":
            from fusion.data.raft import Raft

            self._engine = Raft(raft_model, raft_weights, device=device)
            self.batch_size = batch_size
        elif method == "tvl1-torch":
            self.device = resolve_device(device)
            self.batch_size = batch_size

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return self.many([prev], [nxt])[0]

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """An RGB frame as this method reads it: grayscale (OpenCV's conversion) for the TV-L1,
        DIS and Farneback methods, as it is for RAFT; a prepared frame is returned unchanged."""
        if self.method == "raft" or frame.ndim == 2:
            return frame
        return self._cv2.cvtColor(frame, self._cv2.COLOR_RGB2GRAY)

    def many(self, firsts: list[np.ndarray], seconds: list[np.ndarray]) -> list[np.ndarray]:
        """Flow of each pair (firsts[i] -> seconds[i]) of RGB frames (or `prepare`d ones);
        the batched methods run them `batch_size` at a time."""
        for a, b in zip(firsts, seconds):
            rgb = a.ndim == 3 and a.shape[2] == 3
            if not (rgb or (a.ndim == 2 and self.method != "raft")) or a.dtype != np.uint8 \
                    or a.shape != b.shape:
                raise ValueError(f"flow needs two RGB uint8 frames (H x W x 3) of one size, got "
                                 f"{a.shape} {a.dtype} and {b.shape} {b.dtype}")
        firsts = [self.prepare(f) for f in firsts]
        seconds = [self.prepare(f) for f in seconds]
        if self.method not in BATCHED:
            return [self._opencv(a, b) for a, b in zip(firsts, seconds)]
        flows = []
        for i in range(0, len(firsts), self.batch_size):
            chunk = slice(i, i + self.batch_size)
            if self.method == "raft":
                flows.extend(self._engine(firsts[chunk], seconds[chunk]))
            else:
                flows.extend(self._tvl1_torch(firsts[chunk], seconds[chunk]))
        return flows

    def _tvl1_torch(self, firsts: list[np.ndarray], seconds: list[np.ndarray]) -> np.ndarray:
        from fusion.data.tvl1 import tvl1

        def stack(frames):
            return torch.from_numpy(np.stack(frames)).to(self.device)
        flow = tvl1(stack(firsts), stack(seconds), compile=self.device.type == "cuda")
        return flow.permute(0, 2, 3, 1).cpu().numpy()

    def _opencv(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        prev, nxt = np.ascontiguousarray(prev), np.ascontiguousarray(nxt)  # DIS needs it
        if self.method == "farneback":
            return cv2.calcOpticalFlowFarneback(prev, nxt, None, pyr_scale=0.5, levels=3,
                                                winsize=15, iterations=3, poly_n=5,
                                                poly_sigma=1.2, flags=0)
        return self._engine.calc(prev, nxt, None)
