"""Two-stream model: run both streams to their taps, fuse, continue (DESIGN §4, §6).

    model = build_two_stream(rgb="googlenet", flow="resnet18", fuse="conv1x1", at="inception5b",
                             num_classes=12, flow_stack=12, keep_spatial_head=True)
    scores = model(rgb, flow)   # rgb B x T x 3*rgb_stack x H x W, flow B x T x 2*flow_stack x H x W

Inputs are uint8 frames (or floats in [0, 255]); each stream normalises its own input. Outputs are
logits averaged over the T segments (TSN consensus), so cross-entropy applies to every variant.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from fusion.data.sampling import centred_start
from fusion.checkpoint import load_stream_checkpoint
from fusion.fusers import FUSIONS, AverageFusion, FusionOptions, identity_conv1x1
from fusion.choices import FREEZE_MODES, FUSION_BN, KEPT_AVERAGES, resolve_name
from fusion.streams import UV, FlowInput, Stream, build_stream



def consensus(scores: torch.Tensor, batch: int) -> torch.Tensor:
    """(B T) x K per-segment logits -> B x K, averaged over the segments (TSN)."""
    return rearrange(scores, "(b t) k -> b t k", b=batch).mean(dim=1)


def fold_segments(x: torch.Tensor, name: str, channels: int) -> torch.Tensor:
    if x.dim() != 5 or x.shape[2] != channels:
        raise ValueError(f"{name} input must be B x T x {channels} x H x W, "
                         f"got shape {tuple(x.shape)}")
    return rearrange(x, "b t c h w -> (b t) c h w")


def centre_frames(x: torch.Tensor, channels: int) -> torch.Tensor:
    """The middle `channels` of B x T x C x H x W RGB input: when the clip carries more frames
    than a stream takes (an RGB-difference stream needs L + 1 of them), each stream gets the
    frames centred in the snippet (`centred_start`, the rule the sampling uses)."""
    if x.shape[2] <= channels:
        return x
    start = 3 * centred_start(x.shape[2] // 3, channels // 3)  # whole frames of 3 channels
    return x[:, :, start:start + channels]


class FrozenBatchNormMixin:
    """Keeps chosen BatchNorm layers in eval mode (running statistics fixed) through `.train()`."""

    def hold_batchnorm(self, modules: Sequence[nn.Module]) -> None:
        self._held_bn = list(modules)
        for bn in self._held_bn:
            for p in bn.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for bn in getattr(self, "_held_bn", ()):
            bn.eval()
        return self


def batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class SingleStream(FrozenBatchNormMixin, nn.Module):
    """One stream with segment consensus, for training a stream on its own (first stage)."""

    def __init__(self, stream: Stream, partial_bn: bool = False, freeze: str = "none"):
        super().__init__()
        self.stream = stream
        resolve_name(freeze, FREEZE_MODES, "freeze mode")
        if freeze == "streams":
            raise ValueError("freeze = 'streams' would leave a single stream nothing to train")
        if freeze == "bn":
            self.hold_batchnorm(batchnorms(stream))
        elif partial_bn:
            # TSN's partial BN: every BatchNorm but the first keeps its ImageNet statistics.
            self.hold_batchnorm(batchnorms(stream)[1:])

    def forward(self, rgb: torch.Tensor | None, flow: torch.Tensor | None,
                return_parts: bool = False):
        """Takes the same inputs as `TwoStream` and uses the one of its modality (an RGB
        difference stream reads the RGB frames)."""
        modality = self.stream.modality
        x = flow if modality == "flow" else rgb
        if x is None:
            raise ValueError(f"a {modality} stream needs {'flow' if modality == 'flow' else 'rgb'}"
                             f" input")
        if modality != "flow":
            x = centre_frames(x, self.stream.input_channels)
        b = x.shape[0]
        x = self.stream.normalize(fold_segments(x, modality, self.stream.input_channels))
        scores = consensus(self.stream(x), b)
        return {"fused": scores, self.stream.modality: scores} if return_parts else scores


class TwoStream(FrozenBatchNormMixin, nn.Module):
    """RGB and flow streams joined by a fusion module, optionally with an RGB-difference stream
    late-fused on top; see `build_two_stream`."""

    def __init__(self, rgb: Stream, flow: Stream, fusion: nn.Module, *, at: str, at_flow: str,
                 num_classes: int, dropout: float, keep_spatial_head: bool,
                 keep_temporal_tower: bool, diff: Stream | None = None,
                 diff_weight: float = 1.0, kept_average: str = "logits"):
        super().__init__()
        self.rgb, self.flow, self.fusion = rgb, flow, fusion
        self.diff = diff
        # late fusion (`average`) takes the difference stream among its own inputs
        self.diff_fusion = (AverageFusion((1.0, diff_weight))
                            if diff is not None and not fusion.late else None)
        self.at, self.at_flow = at, at_flow
        self.keep_spatial_head = keep_spatial_head
        self.keep_temporal_tower = keep_temporal_tower
        resolve_name(kept_average, KEPT_AVERAGES, "kept_average")
        kept_heads = int(keep_spatial_head) + int(keep_temporal_tower)
        # Kept heads are averaged with the fused scores (seed 001 found averaging beat max):
        # their logits (seed 001), or their softmaxes as `average` fusion does.
        self.kept_fusion = (AverageFusion((1.0,) * (1 + kept_heads))
                            if kept_average == "softmax" and kept_heads else None)
        self.head: nn.Module | None = None
        self.to_spatial: nn.Module | None = None
        if fusion.late:
            return
        rgb_channels = rgb.tap_info(at)["channels"]
        if at == rgb.feature_info[-1]["name"]:
            # Fused at the last tap: a new head on the fused map (seed 001).
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout),
                                      nn.Linear(fusion.out_channels, num_classes))
            if not keep_spatial_head:
                rgb.truncate(at)
        else:
            # Fused at an inner tap: the fused map continues through the spatial tower
            # (Feichtenhofer), so it must have the spatial stream's channels.
            if fusion.pooled:
                raise ValueError(f"fusion {fusion.name!r} pools the maps into one vector per "
                                 f"segment: fuse it at the last tap "
                                 f"({rgb.feature_info[-1]['name']}), not at {at!r}")
            if keep_spatial_head:
                raise ValueError(f"keep_spatial_head applies when fusing at the last tap "
                                 f"({rgb.feature_info[-1]['name']}); at {at!r} the fused map "
                                 f"continues through the spatial tower instead")
            # A concatenation gets a 1x1 conv back to the spatial channels, starting as
            # rgb_map + flow_map ([I I]) like the conv fusion.
            flow_channels = flow.tap_info(at_flow)["channels"]
            groups = ((rgb_channels, flow_channels)
                      if fusion.out_channels == rgb_channels + flow_channels
                      else (fusion.out_channels,))
            self.to_spatial = (nn.Identity() if fusion.out_channels == rgb_channels else
                               identity_conv1x1(groups, rgb_channels))
        if not keep_temporal_tower:
            flow.truncate(at_flow)

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor, return_parts: bool = False):
        b = rgb.shape[0]
        if flow.shape[:2] != rgb.shape[:2]:
            raise ValueError(f"rgb and flow must have the same batch and segments (B x T), got "
                             f"{tuple(rgb.shape[:2])} and {tuple(flow.shape[:2])}")
        parts: dict[str, torch.Tensor] = {}
        if self.diff is not None:
            x_diff = centre_frames(rgb, self.diff.input_channels)
            x_diff = self.diff.normalize(fold_segments(x_diff, "rgb", self.diff.input_channels))
            parts["rgbdiff"] = consensus(self.diff(x_diff), b)
        rgb = centre_frames(rgb, self.rgb.input_channels)
        x_rgb = self.rgb.normalize(fold_segments(rgb, "rgb", self.rgb.in_channels))
        x_flow = self.flow.normalize(fold_segments(flow, "flow", self.flow.input_channels))
        if self.fusion.late:
            parts["rgb"] = consensus(self.rgb(x_rgb), b)
            parts["flow"] = consensus(self.flow(x_flow), b)
            late = [parts["rgb"], parts["flow"]] + ([parts["rgbdiff"]] if self.diff else [])
            parts["fused"] = self.fusion(late)
            return parts if return_parts else parts["fused"]

        h_rgb = self.rgb.forward_to(x_rgb, self.at)        # (B T) x C_rgb x H x W
        h_flow = self.flow.forward_to(x_flow, self.at_flow)  # (B T) x C_flow x H' x W'
        if self.keep_spatial_head:
            parts["rgb"] = consensus(self.rgb.forward_from(h_rgb, self.at), b)
        if self.keep_temporal_tower:
            parts["flow"] = consensus(self.flow.forward_from(h_flow, self.at_flow), b)
        if h_flow.shape[-2:] != h_rgb.shape[-2:]:
            h_flow = F.interpolate(h_flow, size=h_rgb.shape[-2:], mode="bilinear",
                                   align_corners=False)
        fused = self.fusion(rearrange(h_rgb, "(b t) c h w -> b t c h w", b=b),
                            rearrange(h_flow, "(b t) c h w -> b t c h w", b=b))
        fused = rearrange(fused, "b t c h w -> (b t) c h w")  # T may have collapsed to 1 (conv3d)
        if self.head is not None:
            scores = self.head(fused)
        else:
            scores = self.rgb.forward_from(self.to_spatial(fused), self.at)
        scores = consensus(scores, b)
        kept = [parts[k] for k in ("rgb", "flow") if k in parts]
        if self.kept_fusion is not None:
            fused = self.kept_fusion([scores, *kept])
        else:
            fused = torch.stack([scores, *kept]).mean(dim=0) if kept else scores
        if self.diff_fusion is not None:
            fused = self.diff_fusion([fused, parts["rgbdiff"]])
        parts["fused"] = fused
        return parts if return_parts else parts["fused"]

    def parts(self) -> dict[str, nn.Module]:
        """The model's parameter groups, for describing and for per-part learning rates."""
        groups = {"rgb": self.rgb, "flow": self.flow, "fusion": self.fusion}
        if self.diff is not None:
            groups["rgbdiff"] = self.diff
        if self.to_spatial is not None:
            groups["to_spatial"] = self.to_spatial
        if self.head is not None:
            groups["head"] = self.head
        return groups


def streams_of(model: nn.Module) -> list[Stream]:
    if isinstance(model, SingleStream):
        return [model.stream]
    return [model.rgb, model.flow] + ([model.diff] if model.diff is not None else [])


def freeze_until(model: SingleStream | TwoStream, tap: str | None) -> None:
    """Staged fine-tuning (seed 002): freeze every stream's stages up to and including `tap`
    (their BatchNorm statistics too) and unfreeze the rest; None unfreezes all. The fusion
    module and the fused head always train. A stream without that tap stays trainable."""
    streams = streams_of(model)
    if tap is not None and not any(tap in s.taps for s in streams):
        raise ValueError(f"freeze_until {tap!r} is not a tap of "
                         f"{' or '.join(s.name for s in streams)}; valid: "
                         f"{', '.join(dict.fromkeys(t for s in streams for t in s.taps))}")
    held = []
    for stream in streams:
        cut = stream.taps.index(tap) + 1 if tap in stream.taps else 0
        for i, name in enumerate(stream.taps):
            for p in stream.stages[name].parameters():
                p.requires_grad_(i >= cut)
            if i < cut:
                held += batchnorms(stream.stages[name])
    model.hold_batchnorm(held)


def match_flow_tap(rgb: Stream, flow: Stream, at: str) -> str:
    """The deepest flow tap with the same reduction as the RGB tap `at`."""
    reduction = rgb.tap_info(at)["reduction"]
    same = [i["name"] for i in flow.feature_info if i["reduction"] == reduction]
    if not same:
        offered = ", ".join(f"{i['name']} (/{i['reduction']})" for i in flow.feature_info)
        raise ValueError(f"no {flow.name} tap has the reduction of {rgb.name} {at} (/{reduction}); "
                         f"name one with at_flow: {offered}")
    return same[-1]


def build_two_stream(*, rgb: str, flow: str, fuse: str, at: str | None = None,
                     at_flow: str | None = None, num_classes: int, flow_stack: int = 10,
                     rgb_stack: int = 1, weights: str | Path | Mapping | None = None,
                     dropout: float | None = None, keep_spatial_head: bool = False,
                     keep_temporal_tower: bool = False, fusion_init: str = "identity",
                     fusion_weights: Sequence[float] | None = None, freeze: str = "none",
                     partial_bn: bool = False, init_rgb: str | Path | None = None,
                     init_flow: str | Path | None = None,
                     class_map: Mapping[str, str] | None = None,
                     classes: Sequence[str] | None = None, diff: str | None = None,
                     diff_stack: int = 5, diff_weight: float = 1.0,
                     init_diff: str | Path | None = None, fusion_bn: str = "auto",
                     kept_average: str = "logits", flow_input: FlowInput = UV) -> TwoStream:
    """Build a two-stream model.

    rgb, flow: backbone names (`fusion.streams.STREAMS`, or `timm:<name>` for any timm model).
    fuse: a name in `fusion.fusers.FUSIONS`; `average` is late fusion (at="scores").
    at: the RGB tap to fuse at; at_flow: the flow tap, by default the deepest one with the same
        reduction. Flow maps are resized to the RGB map where sizes differ.
    weights: None, "imagenet" or a weights file for both streams, or {"rgb": ..., "flow": ...}.
    dropout: the streams' (None: torchvision's default) and the fused head's (None: the RGB
        stream's).
    keep_spatial_head: at the last tap, average the RGB stream's own scores with the fused ones.
    keep_temporal_tower: run the flow stream on to its scores and average them in as well.
    kept_average: how kept heads join the fused scores: "logits" (their mean, seed 001) or
        "softmax" (the log of the mean softmax, as `average` fusion).
    fusion_init: "identity" (Feichtenhofer: start as a weighted sum, [I I]) or "random" for
        conv fusions.
    fusion_weights: (w_rgb, w_flow) of `average` or of the identity init (default 1 : 1).
    fusion_bn: conv fusions (conv1x1, conv3d): "auto" puts BatchNorm and ReLU after the conv at
        the last tap (seed 001's head) and none at an inner tap, where Feichtenhofer's conv with
        a bias, starting as rgb_map + flow_map, feeds the pretrained layers that follow; "on" /
        "off" force either. A projection back to the spatial channels (concat at an inner tap,
        sum / max with unequal channels) also starts as the identity.
    flow_input: what the flow stream makes of u, v (`FlowInput`: uv, optionally minus each
        field's mean as Simonyan does, or colour images as seed 001 does).
    freeze: "streams" trains only the fusion module and the fused head (the streams' BatchNorm
        statistics are frozen as well); "bn" keeps the streams' BatchNorm statistics and affine
        parameters fixed (small batches; a fusion's own BatchNorm trains); partial_bn: TSN's,
        every BatchNorm but each stream's first keeps its statistics and affine parameters.
    init_rgb, init_flow: checkpoints of separately trained streams; class_map and classes
        map init_rgb's classes onto this model's (`load_stream_checkpoint`).
    diff: the backbone of a third, RGB-difference stream on diff_stack differences (TSN, seed
        004; it reads the RGB input, which then carries diff_stack + 1 frames per snippet). With
        `average` it is a third late input (fusion_weights gets three weights, e.g. 1, 1.5, 1);
        with a mid-level fusion, its softmax is averaged with the fused one at 1 : diff_weight.
        init_diff: its trained checkpoint.
    """
    fusion_cls = FUSIONS[resolve_name(fuse, tuple(FUSIONS), "fusion")]
    resolve_name(freeze, FREEZE_MODES, "freeze mode")
    resolve_name(fusion_bn, FUSION_BN, "fusion_bn")
    if rgb_stack < 1 or flow_stack < 1:
        raise ValueError(f"rgb_stack and flow_stack must be >= 1, got {rgb_stack}, {flow_stack}")
    per_stream = weights if isinstance(weights, Mapping) else {"rgb": weights, "flow": weights}
    rgb_stream = build_stream(rgb, in_channels=3 * rgb_stack, num_classes=num_classes,
                              weights=per_stream.get("rgb"), dropout=dropout, modality="rgb")
    flow_stream = build_stream(flow, in_channels=flow_input.channels(flow_stack),
                               num_classes=num_classes, weights=per_stream.get("flow"),
                               dropout=dropout, modality="flow", flow_input=flow_input)
    if init_rgb is not None:
        load_stream_checkpoint(rgb_stream, init_rgb, "rgb", class_map=class_map,
                               classes=classes)
    if init_flow is not None:
        load_stream_checkpoint(flow_stream, init_flow, "flow")
    diff_stream = None
    if diff is not None:
        diff_stream = build_stream(diff, in_channels=3 * diff_stack, num_classes=num_classes,
                                   weights=per_stream.get("rgbdiff", per_stream.get("rgb")),
                                   dropout=dropout, modality="rgbdiff")
        if init_diff is not None:
            load_stream_checkpoint(diff_stream, init_diff, "rgbdiff")

    options = FusionOptions(init=fusion_init, weights=tuple(fusion_weights or ()) or None,
                            batchnorm=fusion_bn, inputs=3 if diff is not None else 2)
    if fusion_cls.late:
        if at not in (None, "scores") or at_flow not in (None, "scores"):
            raise ValueError(f"fusion {fuse!r} combines class scores: use at='scores', "
                             f"got at={at!r}, at_flow={at_flow!r}")
        at = at_flow = "scores"
        fusion = fusion_cls.build(None, None, last=True, options=options)
    else:
        if at is None:
            raise ValueError(f"fusion {fuse!r} needs a tap: at is one of "
                             f"{', '.join(i['name'] for i in rgb_stream.feature_info)}")
        at = rgb_stream.resolve_tap(at)  # one spelling: a timm path features.2 is features_2
        rgb_info = rgb_stream.tap_info(at)
        at_flow = flow_stream.resolve_tap(match_flow_tap(rgb_stream, flow_stream, at)
                                          if at_flow is None else at_flow)
        fusion = fusion_cls.build(rgb_info, flow_stream.tap_info(at_flow),
                                  last=at == rgb_stream.feature_info[-1]["name"],
                                  options=options)

    head_dropout = rgb_stream.dropout if dropout is None else dropout
    model = TwoStream(rgb_stream, flow_stream, fusion, at=at, at_flow=at_flow,
                      num_classes=num_classes, dropout=head_dropout,
                      keep_spatial_head=keep_spatial_head, keep_temporal_tower=keep_temporal_tower,
                      diff=diff_stream, diff_weight=diff_weight, kept_average=kept_average)
    streams = streams_of(model)
    held: list[nn.Module] = []
    if freeze == "streams":
        for stream in streams:
            for p in stream.parameters():
                p.requires_grad_(False)
            held += batchnorms(stream)
    elif freeze == "bn":
        # the backbones' BatchNorm only: a new fusion BatchNorm (mean 0, var 1) held fixed
        # would be a silent no-op
        held = [bn for stream in streams for bn in batchnorms(stream)]
    elif partial_bn:
        held = [bn for stream in streams for bn in batchnorms(stream)[1:]]
    model.hold_batchnorm(held)
    return model
