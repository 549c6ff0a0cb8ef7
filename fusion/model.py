"""Two-stream model: run both streams to their taps, fuse, continue (docs/design.md §4, §6).

    model = build_two_stream(rgb="googlenet", flow="resnet18", fuse="conv1x1", at="inception5b",
                             num_classes=12, flow_stack=12, keep_spatial_head=True)
    scores = model(rgb, flow)   # rgb B x T x 3*rgb_stack x H x W, flow B x T x 2*flow_stack x H x W

Models are assembled from parts (`fusion.parts`: StreamSpec, FusionSpec, assemble, and the
convenience `build_two_stream`); training policy lives in `fusion.policy`.

Inputs are uint8 frames (or floats in [0, 255]); each stream normalises its own input. Outputs are
logits averaged over the T segments (TSN consensus), so cross-entropy applies to every variant.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from fusion.data.sampling import centred_start
from fusion.fusers import AverageFusion, identity_conv1x1
from fusion.choices import KEPT_AVERAGES, resolve_name
from fusion.streams import Stream


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

    def __init__(self, stream: Stream):
        super().__init__()
        self.stream = stream

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
    """RGB and flow streams joined by a fusion module at the taps `taps` (rgb, flow), as a
    fusion spec (`fusion.parts.FusionSpec`) says: kept heads, their average, the third
    stream's weight, the head's dropout. Optionally an RGB-difference stream `diff` is
    late-fused on top. Built by `fusion.parts.assemble`."""

    def __init__(self, rgb: Stream, flow: Stream, fusion: nn.Module, spec, *,
                 taps: tuple[str, str], num_classes: int, diff: Stream | None = None):
        super().__init__()
        self.rgb, self.flow, self.fusion = rgb, flow, fusion
        self.diff = diff
        # late fusion (`average`) takes the difference stream among its own inputs
        self.diff_fusion = (AverageFusion((1.0, spec.diff_weight))
                            if diff is not None and not fusion.late else None)
        self.at, self.at_flow = at, at_flow = taps
        keep_spatial_head = self.keep_spatial_head = spec.keep_spatial_head
        keep_temporal_tower = self.keep_temporal_tower = spec.keep_temporal_tower
        kept_average = resolve_name(spec.kept_average, KEPT_AVERAGES, "kept_average")
        dropout = rgb.dropout if spec.head_dropout is None else spec.head_dropout
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


def match_flow_tap(rgb: Stream, flow: Stream, at: str) -> str:
    """The deepest flow tap with the same reduction as the RGB tap `at`."""
    reduction = rgb.tap_info(at)["reduction"]
    same = [i["name"] for i in flow.feature_info if i["reduction"] == reduction]
    if not same:
        offered = ", ".join(f"{i['name']} (/{i['reduction']})" for i in flow.feature_info)
        raise ValueError(f"no {flow.name} tap has the reduction of {rgb.name} {at} (/{reduction}); "
                         f"name one with at_flow: {offered}")
    return same[-1]
