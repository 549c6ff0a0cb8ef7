"""Fusion functions (DESIGN §6), one small module each, in the FUSIONS registry.

A feature-map fusion takes plain channel counts and joins the two streams' maps at a tap:

    fuse = FUSIONS["conv1x1"](rgb_channels=1024, flow_channels=512, out_channels=1024)
    fused = fuse(rgb_map, flow_map)   # B x T x C x H x W each -> B x T' x fuse.out_channels x H x W

Maps carry the segment axis T so that `conv3d` can convolve across segments; the per-frame
fusions fold it into the batch. `average` is late fusion of class scores and has its own call.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import nn

FUSIONS: dict[str, type[nn.Module]] = {}


def register_fusion(name: str):
    def add(cls):
        if name in FUSIONS:
            raise ValueError(f"fusion {name!r} is already registered")
        FUSIONS[name] = cls
        cls.name = name
        return cls
    return add


class PerSegmentFusion(nn.Module):
    """A fusion that treats each segment on its own: B T C H W -> (B T) C H W and back.

    Subclasses define `fuse(rgb, flow)` on (B T) x C x H x W maps.
    """

    late = False

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        b = rgb.shape[0]
        fused = self.fuse(rearrange(rgb, "b t c h w -> (b t) c h w"),
                          rearrange(flow, "b t c h w -> (b t) c h w"))
        return rearrange(fused, "(b t) c h w -> b t c h w", b=b)


def _project(in_channels: int, out_channels: int) -> nn.Module:
    """1x1 projection of the flow map onto the RGB channels, only where they differ."""
    if in_channels == out_channels:
        return nn.Identity()
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)


class ElementwiseFusion(PerSegmentFusion):
    """`op(rgb, flow)` element by element, the flow map projected onto the RGB channels where
    the counts differ."""

    op = None  # set by each subclass

    def __init__(self, rgb_channels: int, flow_channels: int):
        super().__init__()
        self.out_channels = rgb_channels
        self.project = _project(flow_channels, rgb_channels)

    def fuse(self, rgb, flow):
        return self.op(rgb, self.project(flow))


@register_fusion("sum")
class SumFusion(ElementwiseFusion):
    op = staticmethod(torch.add)


@register_fusion("max")
class MaxFusion(ElementwiseFusion):
    op = staticmethod(torch.maximum)


@register_fusion("concat")
class ConcatFusion(PerSegmentFusion):
    def __init__(self, rgb_channels: int, flow_channels: int):
        super().__init__()
        self.out_channels = rgb_channels + flow_channels

    def fuse(self, rgb, flow):
        # (B T) x (C_rgb + C_flow) x H x W, RGB channels first.
        return torch.cat([rgb, flow], dim=1)


def weighted_identity_(weight: torch.Tensor, rgb_channels: int, weights: Sequence[float]) -> None:
    """Feichtenhofer's initialisation of a fusion conv over [rgb; flow] channels.

    Output channel o starts as w_rgb * rgb[o % C_rgb] + w_flow * flow[o % C_flow], a weighted sum
    of the two inputs (channel for channel when the counts agree). `weight` is out x in x k...
    with the kernel's centre tap carrying the identity.
    """
    out_channels, in_channels = weight.shape[:2]
    flow_channels = in_channels - rgb_channels
    centre = tuple(k // 2 for k in weight.shape[2:])
    with torch.no_grad():
        weight.zero_()
        o = torch.arange(out_channels)
        weight[(o, o % rgb_channels, *centre)] = weights[0]
        weight[(o, rgb_channels + o % flow_channels, *centre)] = weights[1]


@register_fusion("conv1x1")
class Conv1x1Fusion(PerSegmentFusion):
    """Concatenate, 1x1 conv (no bias), BatchNorm, ReLU (seed 001, Feichtenhofer's conv fusion)."""

    def __init__(self, rgb_channels: int, flow_channels: int, out_channels: int | None = None,
                 init: str = "identity", weights: Sequence[float] = (0.5, 0.5)):
        super().__init__()
        self.out_channels = out_channels or rgb_channels
        self.conv = nn.Conv2d(rgb_channels + flow_channels, self.out_channels, kernel_size=1,
                              bias=False)
        self.bn = nn.BatchNorm2d(self.out_channels)
        self.relu = nn.ReLU(inplace=True)
        _init_fusion_conv(self.conv, rgb_channels, init, weights)

    def fuse(self, rgb, flow):
        return self.relu(self.bn(self.conv(torch.cat([rgb, flow], dim=1))))


def _init_fusion_conv(conv: nn.Module, rgb_channels: int, init: str,
                      weights: Sequence[float]) -> None:
    if init == "identity":
        weighted_identity_(conv.weight, rgb_channels, weights)
    elif init == "random":
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    else:
        raise ValueError(f"unknown fusion init {init!r}; valid: identity, random")


@register_fusion("bilinear")
class BilinearFusion(PerSegmentFusion):
    """Feichtenhofer's bilinear fusion: at every location the outer product of the RGB and
    flow feature vectors, summed over locations, then signed square root and L2 normalisation
    (as in bilinear CNNs, Lin et al.). One C_rgb * C_flow vector per segment, returned as a
    1 x 1 map, so it fuses at the last tap only; the fused head's linear layer then has
    C_rgb * C_flow inputs (262,144 for two 512-channel maps)."""

    pooled = True  # a vector per segment, not a map the tower could continue on

    def __init__(self, rgb_channels: int, flow_channels: int):
        super().__init__()
        self.out_channels = rgb_channels * flow_channels

    def fuse(self, rgb, flow):
        # float32: the sums of products and their square roots are too fine for bf16 / fp16
        with torch.autocast(rgb.device.type, enabled=False):
            outer = torch.bmm(rgb.float().flatten(2), flow.float().flatten(2).transpose(1, 2))
            # the 1e-12 keeps the square root's gradient finite at 0
            rooted = torch.sign(outer) * torch.sqrt(outer.abs() + 1e-12)
            vector = nn.functional.normalize(rooted.flatten(1), dim=1)
        return vector[:, :, None, None]


@register_fusion("conv3d")
class Conv3dFusion(nn.Module):
    """Feichtenhofer's 3D conv fusion: concat, 3x3x3 conv over segments x H x W, BN, ReLU, then
    3D max pooling over all segments, so the fused map has a single segment."""

    late = False

    def __init__(self, rgb_channels: int, flow_channels: int, out_channels: int | None = None,
                 init: str = "identity", weights: Sequence[float] = (0.5, 0.5)):
        super().__init__()
        self.out_channels = out_channels or rgb_channels
        self.conv = nn.Conv3d(rgb_channels + flow_channels, self.out_channels, kernel_size=3,
                              padding=1, bias=False)
        self.bn = nn.BatchNorm3d(self.out_channels)
        self.relu = nn.ReLU(inplace=True)
        _init_fusion_conv(self.conv, rgb_channels, init, weights)

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        x = rearrange(torch.cat([rgb, flow], dim=2), "b t c h w -> b c t h w")
        x = self.relu(self.bn(self.conv(x)))
        # B x C x T x H x W -> B x 1 x C x H x W: max over the whole temporal extent.
        return rearrange(x.amax(dim=2, keepdim=True), "b c t h w -> b t c h w")


@register_fusion("average")
class AverageFusion(nn.Module):
    """Late fusion: the weighted mean of the streams' softmax scores (seed 004: RGB 1, flow 1.5).

    Returns the log of that mean, so that the output is a logit like every other model output:
    softmax(output) is the fused probability and cross-entropy trains on it directly.
    """

    late = True

    def __init__(self, weights: Sequence[float] = (1.0, 1.0)):
        super().__init__()
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"average fusion weights must be >= 0 and not all 0, got {weights}")
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights),
                             persistent=False)

    def forward(self, scores: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(scores) != len(self.weights):
            raise ValueError(f"average fusion has {len(self.weights)} weights for "
                             f"{len(scores)} streams")
        log_probs = torch.stack([s.float().log_softmax(dim=-1) for s in scores])  # S x B x K
        log_w = self.weights.log().view(-1, 1, 1)
        return torch.logsumexp(log_probs + log_w, dim=0)
