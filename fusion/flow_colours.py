"""Flow fields as colour images: the Middlebury colour coding (Baker et al. 2011: hue is the
direction, saturation the length relative to the field's longest vector), by torchvision's
`flow_to_image`. Seed 001 feeds its flow stream these images; the figures draw them."""
from __future__ import annotations

import torch
from torchvision import utils

from fusion.data.flow import dequantize


def colour_fields(pixels: torch.Tensor) -> torch.Tensor:
    """Flow in pixels `... x 2 x H x W` -> `... x 3 x H x W` uint8, each field scaled by its own
    longest vector: exactly `flow_to_image` called on one field at a time (called on a batch
    it would scale every field by the batch's longest vector). The fields are scaled here,
    all at once, and coloured by the function `flow_to_image` colours with, in one call: no
    loop over fields, so a training step launches a few kernels and ONNX keeps a dynamic
    batch."""
    shape = pixels.shape
    fields = pixels.float().reshape(-1, 2, *shape[-2:])
    # flow_to_image's own scaling, per field: flow / (max |flow| + eps)
    longest = torch.sum(fields.pow(2), dim=1).sqrt().amax(dim=(-2, -1)).view(-1, 1, 1, 1)
    normalized = fields / (longest + torch.finfo(fields.dtype).eps)
    colours = utils._normalized_flow_to_image(normalized)
    return colours.reshape(*shape[:-3], 3, *shape[-2:])


def colour_stack(q: torch.Tensor, bound: float) -> torch.Tensor:
    """Stacked quantised flow `... x 2L x H x W` (u1, v1, u2, v2, ... uint8, DESIGN §5) ->
    `... x 3L x H x W` uint8, one colour image per flow frame."""
    *lead, channels, h, w = q.shape
    fields = dequantize(q, bound).reshape(*lead, channels // 2, 2, h, w)
    return colour_fields(fields).reshape(*lead, 3 * (channels // 2), h, w)
