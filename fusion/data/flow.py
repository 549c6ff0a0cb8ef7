"""Optical flow storage convention (DESIGN §5).

Each flow component is stored as an 8-bit grayscale JPEG:
    q = round(255 * (clip(f, -B, B) + B) / (2B)),   B = 20 by default,
so 127.5 is zero motion and a stored u or v maps back to f = q * 2B / 255 - B.
Flow frame k is the motion from frame k to frame k + 1.
"""
from __future__ import annotations

import numpy as np

DEFAULT_BOUND = 20.0


def quantize(flow: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """Flow in pixels (any shape) -> uint8, clipped at +-bound."""
    if bound <= 0:
        raise ValueError(f"flow bound must be > 0, got {bound}")
    scaled = (np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))
    return np.round(scaled).astype(np.uint8)


def dequantize(q: np.ndarray, bound: float = DEFAULT_BOUND) -> np.ndarray:
    """uint8 (or its float copy) -> flow in pixels, float32."""
    return np.asarray(q, dtype=np.float32) * np.float32(2 * bound / 255.0) - np.float32(bound)


METHODS = ("tvl1", "dis", "farneback")


class FlowEstimator:
    """Dense optical flow between two grayscale uint8 frames -> H x W x 2 (u, v) in pixels.

    tvl1: OpenCV contrib's Dual TV-L1 with its default parameters (the reference, as in the
        twostreamfusion and denseflow releases; about 1-2 s per 340 x 256 pair on one core);
    dis: DIS at the medium preset; farneback: Farneback's polynomial expansion. Both are in
        core OpenCV and two orders of magnitude faster.
    """

    def __init__(self, method: str = "tvl1"):
        import cv2  # imported here: only extraction and prediction need OpenCV

        if method not in METHODS:
            raise ValueError(f"unknown flow method {method!r}; valid: {', '.join(METHODS)}")
        self.method = method
        self._cv2 = cv2
        if method == "tvl1":
            if not hasattr(cv2, "optflow"):
                raise RuntimeError("TV-L1 needs OpenCV's contrib modules: pip install "
                                   "opencv-contrib-python-headless (or use --flow dis)")
            self._engine = cv2.optflow.DualTVL1OpticalFlow_create()
        elif method == "dis":
            self._engine = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def __call__(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if prev.ndim != 2 or prev.dtype != np.uint8 or prev.shape != nxt.shape:
            raise ValueError(f"flow needs two grayscale uint8 frames of one size, got "
                             f"{prev.shape} {prev.dtype} and {nxt.shape} {nxt.dtype}")
        prev, nxt = np.ascontiguousarray(prev), np.ascontiguousarray(nxt)  # DIS needs it
        if self.method == "farneback":
            return self._cv2.calcOpticalFlowFarneback(prev, nxt, None, pyr_scale=0.5, levels=3,
                                                      winsize=15, iterations=3, poly_n=5,
                                                      poly_sigma=1.2, flags=0)
        return self._engine.calc(prev, nxt, None)
