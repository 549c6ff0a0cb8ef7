"""Flow fields as colour images: the Middlebury colour coding (Baker et al. 2011: hue is the
direction, saturation the length relative to the longest vector), by torchvision's
`flow_to_image`.

Seed 001 feeds its flow stream such images: its notebook (data_prep_optical_flow.ipynb) calls
`flow_to_image` once on a video's whole stack of RAFT's float fields, so one scale (the longest
vector among them) colours every field and zero motion is white; `colour_video` is that call.
The figures draw stored u, v flow with `colour_fields`, each field on its own scale.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision import utils


def colour_video(fields: Sequence[np.ndarray]) -> np.ndarray:
    """A video's float flow fields (each H x W x 2, pixels) -> N x H x W x 3 uint8, coloured
    together on the video's one scale: exactly `flow_to_image` on the stacked fields."""
    stacked = torch.from_numpy(np.stack(fields).astype(np.float32)).permute(0, 3, 1, 2)
    return utils.flow_to_image(stacked).permute(0, 2, 3, 1).numpy()


def colour_fields(pixels: torch.Tensor) -> torch.Tensor:
    """Flow in pixels `... x 2 x H x W` -> `... x 3 x H x W` uint8, each field scaled by its own
    longest vector: exactly `flow_to_image` called on one field at a time, without a loop."""
    shape = pixels.shape
    fields = pixels.float().reshape(-1, 2, *shape[-2:])
    # flow_to_image's own scaling, per field: flow / (max |flow| + eps)
    longest = torch.sum(fields.pow(2), dim=1).sqrt().amax(dim=(-2, -1)).view(-1, 1, 1, 1)
    normalized = fields / (longest + torch.finfo(fields.dtype).eps)
    colours = utils._normalized_flow_to_image(normalized)
    return colours.reshape(*shape[:-3], 3, *shape[-2:])
