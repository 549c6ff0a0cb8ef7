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
