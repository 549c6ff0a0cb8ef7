"""RAFT optical flow (Teed & Deng 2020) through torchvision's own model, batched over frame pairs.

    raft = Raft("large", "default", device="cuda")
    flows = raft(firsts, seconds)   # lists of H x W x 3 uint8 RGB frames -> N x H x W x 2 pixels

Following seed report 001 and torchvision's weights' transforms: RGB frames rescaled to [-1, 1],
12 refinement iterations (torchvision's default, the paper's), the last iteration's flow kept.
Frames whose sides are not multiples of 8 (RAFT's feature stride) are edge-padded up to them and
the flow cropped back; sides under 128 px are refused (the correlation pyramid's four levels
need 16 feature cells; torchvision raises otherwise).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models import optical_flow

from fusion.device import resolve_device
from fusion.files import check_state_dict, download_weights, read_state_dict

MODELS = {"large": (optical_flow.raft_large, optical_flow.Raft_Large_Weights.DEFAULT),
          "small": (optical_flow.raft_small, optical_flow.Raft_Small_Weights.DEFAULT)}
MIN_SIDE = 128
STRIDE = 8


def load_raft(model: str = "large", weights: str | Path = "default") -> torch.nn.Module:
    """torchvision's RAFT `model` (large | small) with `weights`: "default" (torchvision's
    weights enum, downloaded once) or the path of a local state-dict file of that model."""
    if model not in MODELS:
        raise ValueError(f"raft_model {model!r}: expected one of {', '.join(MODELS)}")
    builder, enum = MODELS[model]
    network = builder(weights=None)
    if str(weights) == "default":
        state = download_weights(enum, f"torchvision's RAFT-{model} weights", "raft_weights")
        source = f"torchvision's {enum}"
    else:
        state, source = read_state_dict(weights, "RAFT weights file"), f"RAFT weights file {weights}"
    check_state_dict(network.state_dict(), state, f"cannot load {source} into RAFT-{model}")
    network.load_state_dict(state)
    return network.eval()


class Raft:
    """Flow between batches of RGB frame pairs (see the module docstring)."""

    def __init__(self, model: str = "large", weights: str | Path = "default", *,
                 device: str = "auto", iterations: int = 12):
        self.device = resolve_device(device)
        self.network = load_raft(model, weights).to(self.device)
        self.iterations = iterations

    @torch.inference_mode()
    def __call__(self, firsts: list[np.ndarray], seconds: list[np.ndarray]) -> np.ndarray:
        a = self._prepare(firsts)
        b = self._prepare(seconds)
        h, w = firsts[0].shape[:2]
        pad_h, pad_w = -h % STRIDE, -w % STRIDE
        if pad_h or pad_w:
            a = F.pad(a, (0, pad_w, 0, pad_h), mode="replicate")
            b = F.pad(b, (0, pad_w, 0, pad_h), mode="replicate")
        flow = self.network(a, b, num_flow_updates=self.iterations)[-1][..., :h, :w]
        return flow.permute(0, 2, 3, 1).float().cpu().numpy()

    def _prepare(self, frames: list[np.ndarray]) -> torch.Tensor:
        h, w = frames[0].shape[:2]
        if min(h, w) < MIN_SIDE:
            raise ValueError(f"RAFT needs frames of at least {MIN_SIDE} x {MIN_SIDE} px, got "
                             f"{w} x {h} (extract with a larger --short-side)")
        x = torch.from_numpy(np.stack(frames)).to(self.device).permute(0, 3, 1, 2)
        return x.float() / 127.5 - 1.0  # [0, 255] -> [-1, 1]
