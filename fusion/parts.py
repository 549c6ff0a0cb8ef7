"""The parts a model is assembled from, each built on its own (docs/design.md §7):

    rgb = StreamSpec("googlenet", "rgb", weights="imagenet").build(num_classes=12)
    flow = StreamSpec("resnet18", "flow", frames=8, init="runs/flow/best.pt").build(12)
    model = assemble(rgb, flow, FusionSpec("conv1x1", at="inception5b",
                                           keep_spatial_head=True), num_classes=12)

`build_two_stream` does the common case in one call. A stream spec says what one stream is
(backbone, modality, frames per snippet, flow input, weights or a trained checkpoint,
dropout); a fusion spec says how two streams are joined (the fusion function and its options,
the taps, the kept heads); a third, RGB-difference stream is one more stream spec. Training policy (freezing, partial BN, staged unfreezing) is applied by
training (`fusion.policy`), not here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fusion.checkpoint import load_stream_checkpoint
from fusion.choices import FUSION_BN, MODALITIES, resolve_name
from fusion.fusers import FUSIONS, FusionOptions
from fusion.model import TwoStream, match_flow_tap
from fusion.streams import UV, FlowInput, Stream, build_stream


@dataclass(frozen=True)
class StreamSpec:
    """One stream: `backbone` (`fusion.streams.STREAMS` or `timm:<name>`) for `modality` rgb,
    flow or rgbdiff, with `frames` per snippet (RGB frames, flow frames, or RGB differences);
    `flow_input` says what a flow stream makes of its input; `weights` None, "imagenet" or a
    state-dict file; `init` a trained stream's checkpoint (`class_map` and `classes` map its
    classes onto this model's, `load_stream_checkpoint`); `dropout` None keeps the backbone's."""

    backbone: str
    modality: str = "rgb"
    frames: int = 1
    flow_input: FlowInput = UV
    weights: str | Path | None = None
    init: str | Path | None = None
    class_map: Mapping[str, str] | None = field(default=None, hash=False)
    classes: tuple[str, ...] | None = None
    dropout: float | None = None

    def __post_init__(self):
        resolve_name(self.modality, MODALITIES, "modality")
        if self.frames < 1:
            raise ValueError(f"a {self.modality} stream needs frames >= 1, got {self.frames}")

    @property
    def in_channels(self) -> int:
        if self.modality == "flow":
            return self.flow_input.channels(self.frames)
        return 3 * self.frames

    def build(self, num_classes: int) -> Stream:
        stream = build_stream(self.backbone, in_channels=self.in_channels,
                              num_classes=num_classes, weights=self.weights,
                              dropout=self.dropout, modality=self.modality,
                              flow_input=self.flow_input if self.modality == "flow" else UV)
        if self.init is not None:
            load_stream_checkpoint(stream, self.init, self.modality, class_map=self.class_map,
                                   classes=self.classes)
        return stream


@dataclass(frozen=True)
class FusionSpec:
    """How two streams are joined.

    fuse: a name in `fusion.fusers.FUSIONS`; `average` is late fusion (at "scores").
    at: the RGB tap; at_flow: the flow tap, by default the deepest with the same reduction.
        Flow maps are resized to the RGB map where sizes differ.
    options: the fusion's own (`FusionOptions`: identity or random init, weights, BatchNorm
        mode of the conv fusions: "auto" puts BatchNorm and ReLU after the conv at the last tap,
        seed 001's head, and a conv with bias and ReLU at an inner tap, Feichtenhofer's).
    keep_spatial_head: at the last tap, average the RGB stream's own scores with the fused ones;
    keep_temporal_tower: run the flow stream on to its scores and average them in as well;
    kept_average: how kept heads join: "logits" (their mean, seed 001) or "softmax".
    diff_weight: a third (RGB-difference) stream's softmax joins a mid-level fusion at
        1 : diff_weight; with `average` it is a third late input instead.
    head_dropout: before the fused head's classifier; None: the RGB stream's dropout.
    """

    fuse: str
    at: str | None = None
    at_flow: str | None = None
    options: FusionOptions = FusionOptions()
    keep_spatial_head: bool = False
    keep_temporal_tower: bool = False
    kept_average: str = "logits"
    diff_weight: float = 1.0
    head_dropout: float | None = None

    def __post_init__(self):
        resolve_name(self.fuse, tuple(FUSIONS), "fusion")
        resolve_name(self.options.batchnorm, FUSION_BN, "fusion_bn")


def assemble(rgb: Stream, flow: Stream, spec: FusionSpec, *, num_classes: int,
             diff: Stream | None = None) -> TwoStream:
    """Join built streams as `spec` says: the taps resolved against the streams' feature_info,
    the fusion module built from the two taps' metadata."""
    fusion_cls = FUSIONS[spec.fuse]
    options = FusionOptions(init=spec.options.init, weights=spec.options.weights,
                            batchnorm=spec.options.batchnorm,
                            inputs=3 if diff is not None else 2)
    at, at_flow = spec.at, spec.at_flow
    if fusion_cls.late:
        if at not in (None, "scores") or at_flow not in (None, "scores"):
            raise ValueError(f"fusion {spec.fuse!r} combines class scores: use at='scores', "
                             f"got at={at!r}, at_flow={at_flow!r}")
        at = at_flow = "scores"
        fusion = fusion_cls.build(None, None, last=True, options=options)
    else:
        if at is None:
            raise ValueError(f"fusion {spec.fuse!r} needs a tap: at is one of "
                             f"{', '.join(i['name'] for i in rgb.feature_info)}")
        at = rgb.resolve_tap(at)  # one spelling: a timm path features.2 is features_2
        at_flow = flow.resolve_tap(match_flow_tap(rgb, flow, at) if at_flow is None
                                   else at_flow)
        fusion = fusion_cls.build(rgb.tap_info(at), flow.tap_info(at_flow),
                                  last=at == rgb.feature_info[-1]["name"], options=options)
    return TwoStream(rgb, flow, fusion, spec, taps=(at, at_flow), num_classes=num_classes,
                     diff=diff)


def build_two_stream(*, rgb: str, flow: str, fuse: str, at: str | None = None,
                     num_classes: int, flow_stack: int = 10, rgb_stack: int = 1,
                     weights: str | Path | None = None, dropout: float | None = None,
                     keep_spatial_head: bool = False) -> TwoStream:
    """A two-stream model in one call, for the common case: backbones `rgb` and `flow`, fusion
    `fuse` at the RGB tap `at` (the flow tap: the deepest with the same reduction), both
    streams with `weights` and `dropout`, optionally the kept spatial head. Everything else
    (a flow format, trained streams, fusion options, a third stream) is built from the parts:
    `fusion.parts`."""
    streams = [StreamSpec(name, modality, frames=frames, weights=weights,
                          dropout=dropout).build(num_classes)
               for name, modality, frames in ((rgb, "rgb", rgb_stack),
                                              (flow, "flow", flow_stack))]
    spec = FusionSpec(fuse, at=at, keep_spatial_head=keep_spatial_head)
    return assemble(*streams, spec, num_classes=num_classes)
