"""Fusion functions (docs/design.md §6), one small module each, in the FUSIONS registry.

A feature-map fusion takes plain channel counts and joins the two streams' maps at a tap:

    fuse = FUSIONS["conv1x1"](rgb_channels=1024, flow_channels=512, out_channels=1024)
    fused = fuse(rgb_map, flow_map)   # B x T x C x H x W each -> B x T' x fuse.out_channels x H x W

Each class also says how it is built from the two taps' `feature_info` entries (`Fusion.build`),
so the model builder never branches on fusion names: a new fusion is one class in the registry.

Maps carry the segment axis T so that `conv3d` can convolve across segments; the per-frame
fusions fold it into the batch. `average` is late fusion of class scores and has its own call.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class FusionOptions:
    """The configurable part of a fusion (the rest comes from the taps): identity or random
    init, weights of the streams (late fusion) or of the identity init, BatchNorm mode of the
    conv fusions, number of late inputs."""

    init: str = "identity"
    weights: tuple[float, ...] | None = None
    batchnorm: str = "auto"  # auto | on | off
    inputs: int = 2


class Fusion(nn.Module):
    """The base of every fusion. `late`: combines class scores, not maps; `pooled`: returns
    one vector per segment, so it fuses at the last tap only."""

    late = False
    pooled = False

    @classmethod
    def build(cls, rgb: dict | None, flow: dict | None, *, last: bool,
              options: FusionOptions) -> "Fusion":
        """The fusion of two maps described by their taps' `feature_info` entries (None for a
        late fusion); `last`: at the RGB stream's last tap. By default: from the channels."""
        if options.weights:
            raise ValueError(f"fusion_weights apply to average, conv1x1 and conv3d, "
                             f"not {cls.name!r}")
        return cls(rgb["channels"], flow["channels"])


class PerSegmentFusion(Fusion):
    """A fusion that treats each segment on its own: B T C H W -> (B T) C H W and back.

    Subclasses define `fuse(rgb, flow)` on (B T) x C x H x W maps.
    """

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        b = rgb.shape[0]
        fused = self.fuse(rearrange(rgb, "b t c h w -> (b t) c h w"),
                          rearrange(flow, "b t c h w -> (b t) c h w"))
        return rearrange(fused, "(b t) c h w -> b t c h w", b=b)


def identity_init_(weight: torch.Tensor, in_channels: Sequence[int],
                   weights: Sequence[float]) -> None:
    """Feichtenhofer's initialisation of a conv over stacked inputs ([I I] for two).

    The inputs are consecutive channel groups of `in_channels` (e.g. [rgb; flow]); output
    channel o starts as sum_j weights[j] * input_j[o % C_j], channel for channel where the counts
    agree (the two-stream paper's f = [I I] for weights 1, 1), cycling through the smaller group
    where they differ. `weight` is out x in x k..., the kernel's centre tap carrying it.
    """
    if sum(in_channels) != weight.shape[1] or len(in_channels) != len(weights):
        raise ValueError(f"identity init: groups {list(in_channels)} with weights "
                         f"{list(weights)} do not fit a weight of shape {tuple(weight.shape)}")
    centre = tuple(k // 2 for k in weight.shape[2:])
    o = torch.arange(weight.shape[0])
    with torch.no_grad():
        weight.zero_()
        offset = 0
        for channels, w in zip(in_channels, weights):
            weight[(o, offset + o % channels, *centre)] = w
            offset += channels


def identity_conv1x1(in_channels: Sequence[int], out_channels: int) -> nn.Conv2d:
    """A 1x1 conv with bias mapping stacked inputs to `out_channels`, starting as their sum
    (`identity_init_`, weights 1, bias 0): a fused map enters pretrained layers unchanged."""
    conv = nn.Conv2d(sum(in_channels), out_channels, kernel_size=1, bias=True)
    identity_init_(conv.weight, in_channels, (1.0,) * len(in_channels))
    nn.init.zeros_(conv.bias)
    return conv


def _project(in_channels: int, out_channels: int) -> nn.Module:
    """1x1 projection of the flow map onto the RGB channels, only where they differ; it starts
    as the identity (cycling through the flow channels where they are fewer)."""
    if in_channels == out_channels:
        return nn.Identity()
    return identity_conv1x1((in_channels,), out_channels)


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


class ConvFusion(Fusion):
    """The shared body of `conv1x1` and `conv3d`: a conv over [rgb; flow] channels, either

    - Feichtenhofer's conv fusion (batchnorm=False): the conv with a bias, then a ReLU, as the
      released twostreamfusion code builds it (`network_surgery/insert_conv_layers.m`,
      `addReLU = true` by default; `relu3D5` after the 3D fusion conv in
      `cnn_ucf101_fusion.m`), so the pretrained layers after a fusion at an inner tap still
      receive non-negative input. With `init="identity"` it starts as
      relu(w_rgb * rgb + w_flow * flow) ([I I] for weights 1, 1; the maps at every tap are
      outputs of ReLUs, so this is the plain sum), and a network fused at an inner tap starts
      as the spatial tower on rgb_map + flow_map and fine-tunes from the pretrained solution; or
    - seed 001's head (batchnorm=True): the conv without bias, BatchNorm, ReLU.

    init "random" draws the conv as ResNet does (Kaiming, fan out). The released code's own
    default weights are 0.25 (spatial) and 0.75 (temporal) (`initMethod = '2sumAB'`); the paper's
    f = [I I] is this module's default, and `fusion_weights = [0.25, 0.75]` gives the code's.
    """

    conv_type: type[nn.Module] = nn.Conv2d
    norm_type: type[nn.Module] = nn.BatchNorm2d
    kernel_size = 1

    def __init__(self, rgb_channels: int, flow_channels: int, out_channels: int | None = None,
                 init: str = "identity", weights: Sequence[float] = (1.0, 1.0),
                 batchnorm: bool = True):
        super().__init__()
        if init not in ("identity", "random"):
            raise ValueError(f"unknown fusion init {init!r}; valid: identity, random")
        self.out_channels = out_channels or rgb_channels
        self.conv = self.conv_type(rgb_channels + flow_channels, self.out_channels,
                                   kernel_size=self.kernel_size, padding=self.kernel_size // 2,
                                   bias=not batchnorm)
        self.bn = self.norm_type(self.out_channels) if batchnorm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        if init == "identity":
            self.init_identity(rgb_channels, flow_channels, weights)
        else:
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def init_identity(self, rgb_channels: int, flow_channels: int,
                      weights: Sequence[float]) -> None:
        identity_init_(self.conv.weight, (rgb_channels, flow_channels), weights)

    @classmethod
    def build(cls, rgb: dict, flow: dict, *, last: bool, options: FusionOptions) -> "ConvFusion":
        """Back to the RGB channels; BatchNorm + ReLU by default at the last tap only."""
        batchnorm = options.batchnorm == "on" or (options.batchnorm == "auto" and last)
        extra = {"weights": options.weights} if options.weights else {}
        return cls(rgb["channels"], flow["channels"], out_channels=rgb["channels"],
                   init=options.init, batchnorm=batchnorm, **extra)

    def mix(self, stacked: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(stacked)))


@register_fusion("conv1x1")
class Conv1x1Fusion(ConvFusion, PerSegmentFusion):
    """Concatenate, 1x1 conv; with BatchNorm and ReLU (seed 001's head) or with a bias alone
    (Feichtenhofer's conv fusion); see `ConvFusion`."""

    def fuse(self, rgb, flow):
        return self.mix(torch.cat([rgb, flow], dim=1))


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
class Conv3dFusion(ConvFusion):
    """Feichtenhofer's 3D conv fusion: concat, 3x3x3 conv over segments x H x W (with a bias and
    a ReLU, or BatchNorm and ReLU: `ConvFusion`), then 3D max pooling over all segments, so the
    fused map has a single segment.

    Identity init as in the released `cnn_ucf101_fusion.m`: no single tap carries the identity;
    the [w_rgb I, w_flow I] weights are spread over all 27 taps (3 segments x 3 x 3 pixels) by a
    normalised 3D Gaussian (sigma 1 in taps, `exp(-(t^2 + y^2 + x^2) / 2)`, summing to 1), so
    the fused map starts as a Gaussian-smoothed w_rgb * rgb + w_flow * flow across neighbouring
    segments and pixels. (The paper's text describes only [I I]; the released code is followed.)
    """

    conv_type = nn.Conv3d
    norm_type = nn.BatchNorm3d
    kernel_size = 3

    def init_identity(self, rgb_channels: int, flow_channels: int,
                      weights: Sequence[float]) -> None:
        taps = torch.arange(-1.0, 2.0)
        t, y, x = torch.meshgrid(taps, taps, taps, indexing="ij")
        gaussian = torch.exp(-(t * t + y * y + x * x) / 2)
        gaussian = gaussian / gaussian.sum()
        with torch.no_grad():
            identity = torch.zeros(self.conv.weight.shape[:2])
            identity_init_(identity, (rgb_channels, flow_channels), weights)
            self.conv.weight.copy_(identity[:, :, None, None, None] * gaussian)

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        x = rearrange(torch.cat([rgb, flow], dim=2), "b t c h w -> b c t h w")
        x = self.mix(x)
        # B x C x T x H x W -> B x 1 x C x H x W: max over the whole temporal extent.
        return rearrange(x.amax(dim=2, keepdim=True), "b c t h w -> b t c h w")


@register_fusion("average")
class AverageFusion(Fusion):
    """Late fusion: the weighted mean of the streams' softmax scores (seed 004: RGB 1, flow 1.5).

    Returns the log of that mean, so that the output is a logit like every other model output:
    softmax(output) is the fused probability and cross-entropy trains on it directly.
    """

    late = True

    @classmethod
    def build(cls, rgb: None, flow: None, *, last: bool,
              options: FusionOptions) -> "AverageFusion":
        return cls(weights=options.weights or (1.0,) * options.inputs)

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
