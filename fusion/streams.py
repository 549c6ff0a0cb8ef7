"""Backbone streams as ordered, named stages (docs/design.md §4).

A stream wraps one of torchvision's own classification models. Its modules are regrouped into an
ordered ``ModuleDict`` of stages, one per tap, so that a two-stream model can run a stream up to a
tap, fuse, and continue from there without hooks:

    stream = build_stream("resnet18", in_channels=20, num_classes=101, modality="flow")
    h = stream.forward_to(x, "layer3")
    y = stream.forward_from(h, "layer3")      # == stream(x)

The last stage is always ``scores`` (the class logits), so late fusion is "fusion at scores".
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from fusion.choices import FLOW_FORMATS, MODALITIES, resolve_name
from fusion.files import check_state_dict, download_weights, read_state_dict
from fusion.surgery import replace_first_conv, set_module
from fusion.timm_streams import is_timm, timm_stages

# Per-channel statistics in [0, 1] units; `Stream.normalize` repeats them over stacked frames.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Flow is stored quantised to [0, 255] with 127.5 as zero motion (docs/design.md §5), so mean
# 0.5 and std 0.5 map a stored component back to flow / bound in [-1, 1].
FLOW_MEAN = (0.5, 0.5)
FLOW_STD = (0.5, 0.5)
# RGB difference (TSN): differences of consecutive frames in [0, 1] units, scaled by twice the
# mean ImageNet std as TSN does; a stack of L differences is made from L + 1 frames.
DIFF_MEAN = (0.0, 0.0, 0.0)
DIFF_STD = (2 * sum(IMAGENET_STD) / 3,) * 3


@dataclass(frozen=True)
class FlowInput:
    """What a flow stream makes of its uint8 flow input.

    format: "uv" (u, v quantised with `bound`: 2 channels per flow frame) or "rgb" (seed 001:
        each field as a colour image in the Middlebury coding, coloured at extraction on the
        video's one scale, normalised with ImageNet's statistics: 3 channels per flow frame).
    subtract_mean: uv only; each displacement field minus its spatial mean (mean flow
        subtraction, Simonyan & Zisserman 2014, section 3.1).
    """

    format: str = "uv"
    bound: float = 20.0
    subtract_mean: bool = False

    def __post_init__(self):
        resolve_name(self.format, FLOW_FORMATS, "flow format")
        if self.subtract_mean and self.format != "uv":
            raise ValueError("mean flow subtraction applies to uv flow, not to colour images")

    def channels(self, flow_stack: int) -> int:
        """The flow stream's input convolution channels for L flow frames."""
        return (3 if self.format == "rgb" else 2) * flow_stack


UV = FlowInput()


@dataclass(frozen=True)
class BackboneSpec:
    """How to regroup one torchvision model into tap stages."""

    builder: Callable[..., nn.Module]
    imagenet_weights: WeightsEnum
    stages: Callable[[nn.Module, float], list[tuple[str, nn.Module]]]
    first_conv: str  # dotted path of the input convolution
    last_linear: str  # dotted path of the classifier's last Linear
    default_dropout: float
    init_first_conv: Callable[[nn.Conv2d], None]
    # The ImageNet statistics the pretrained weights expect on RGB input.
    rgb_mean: tuple[float, float, float] = IMAGENET_MEAN
    rgb_std: tuple[float, float, float] = IMAGENET_STD
    builder_kwargs: tuple[tuple[str, object], ...] = ()
    ignored_weight_prefixes: tuple[str, ...] = ()
    trace_size: int = 64  # input side used to read channels and reductions off the stages

    def kwargs(self, dropout: float) -> dict:
        """The builder's keyword arguments, with the stream's dropout where it takes one."""
        return {k: (dropout if k == "dropout" else v) for k, v in self.builder_kwargs}


STREAMS: dict[str, BackboneSpec] = {}


def register_stream(name: str, spec: BackboneSpec) -> None:
    if name in STREAMS:
        raise ValueError(f"stream {name!r} is already registered")
    STREAMS[name] = spec


def _kaiming_fan_out(conv: nn.Conv2d) -> None:
    # ResNet's and VGG's own rule for conv weights.
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _googlenet_trunc_normal(conv: nn.Conv2d) -> None:
    # GoogLeNet's own rule (torchvision `GoogLeNet.__init__`).
    nn.init.trunc_normal_(conv.weight, mean=0.0, std=0.01, a=-2, b=2)


def _resnet_stages(m: nn.Module, dropout: float) -> list[tuple[str, nn.Module]]:
    return [
        ("conv1", nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool)),
        ("layer1", m.layer1),
        ("layer2", m.layer2),
        ("layer3", m.layer3),
        ("layer4", m.layer4),
        # torchvision's ResNet has no dropout; TSN-style recipes put one before the classifier.
        ("scores", nn.Sequential(m.avgpool, nn.Flatten(1), nn.Dropout(dropout), m.fc)),
    ]


def _vgg_stages(m: nn.Module, dropout: float) -> list[tuple[str, nn.Module]]:
    # Split `features` at its max-pools: block k ends with the ReLU before pool k, and the pool
    # opens block k + 1. The last pool is a tap of its own (`pool5`).
    blocks: list[list[nn.Module]] = [[]]
    for layer in m.features:
        if isinstance(layer, nn.MaxPool2d):
            blocks.append([])
        blocks[-1].append(layer)
    *convs, last_pool = blocks
    stages = [(f"conv{i + 1}", nn.Sequential(*layers)) for i, layers in enumerate(convs)]
    stages.append(("pool5", nn.Sequential(*last_pool)))
    stages.append(("scores", nn.Sequential(m.avgpool, nn.Flatten(1), m.classifier)))
    return stages


def _googlenet_stages(m: nn.Module, dropout: float) -> list[tuple[str, nn.Module]]:
    return [
        ("conv3", nn.Sequential(m.conv1, m.maxpool1, m.conv2, m.conv3, m.maxpool2)),
        ("inception3a", m.inception3a),
        ("inception3b", m.inception3b),
        ("inception4a", nn.Sequential(m.maxpool3, m.inception4a)),
        ("inception4b", m.inception4b),
        ("inception4c", m.inception4c),
        ("inception4d", m.inception4d),
        ("inception4e", m.inception4e),
        ("inception5a", nn.Sequential(m.maxpool4, m.inception5a)),
        ("inception5b", m.inception5b),
        ("scores", nn.Sequential(m.avgpool, nn.Flatten(1), m.dropout, m.fc)),
    ]


def _inception_v3_stages(m: nn.Module, dropout: float) -> list[tuple[str, nn.Module]]:
    stages = [("conv4a", nn.Sequential(m.Conv2d_1a_3x3, m.Conv2d_2a_3x3, m.Conv2d_2b_3x3,
                                       m.maxpool1, m.Conv2d_3b_1x1, m.Conv2d_4a_3x3,
                                       m.maxpool2))]
    stages += [(f"mixed{name[6:].lower()}", getattr(m, name)) for name in (
        "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
        "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")]
    stages.append(("scores", nn.Sequential(m.avgpool, m.dropout, nn.Flatten(1), m.fc)))
    return stages


_tvm = torchvision.models
for _name, _builder, _weights in [
    ("resnet18", _tvm.resnet18, _tvm.ResNet18_Weights.DEFAULT),
    ("resnet50", _tvm.resnet50, _tvm.ResNet50_Weights.DEFAULT),
    ("resnet101", _tvm.resnet101, _tvm.ResNet101_Weights.DEFAULT),
]:
    register_stream(_name, BackboneSpec(
        builder=_builder, imagenet_weights=_weights, stages=_resnet_stages, first_conv="conv1",
        last_linear="fc", default_dropout=0.0, init_first_conv=_kaiming_fan_out))
for _name, _builder, _weights in [
    ("vgg16", _tvm.vgg16, _tvm.VGG16_Weights.DEFAULT),
    ("vgg19", _tvm.vgg19, _tvm.VGG19_Weights.DEFAULT),
]:
    register_stream(_name, BackboneSpec(
        builder=_builder, imagenet_weights=_weights, stages=_vgg_stages, first_conv="features.0",
        last_linear="classifier.6", default_dropout=0.5, init_first_conv=_kaiming_fan_out,
        builder_kwargs=(("dropout", None),)))
register_stream("googlenet", BackboneSpec(
    builder=_tvm.googlenet, imagenet_weights=_tvm.GoogLeNet_Weights.DEFAULT,
    stages=_googlenet_stages, first_conv="conv1.conv", last_linear="fc", default_dropout=0.2,
    init_first_conv=_googlenet_trunc_normal,
    # torchvision's ImageNet GoogLeNet expects transform_input, which rescales ImageNet-normalised
    # input to (x - 0.5) / 0.5. We never use transform_input (it is meaningless on flow) and
    # normalise RGB with those statistics directly instead: the same numbers reach the network.
    rgb_mean=(0.5, 0.5, 0.5), rgb_std=(0.5, 0.5, 0.5),
    builder_kwargs=(("dropout", None), ("aux_logits", False), ("transform_input", False),
                    ("init_weights", True)),
    ignored_weight_prefixes=("aux1.", "aux2.")))
register_stream("inception_v3", BackboneSpec(
    builder=_tvm.inception_v3, imagenet_weights=_tvm.Inception_V3_Weights.DEFAULT,
    stages=_inception_v3_stages, first_conv="Conv2d_1a_3x3.conv", last_linear="fc",
    default_dropout=0.5, init_first_conv=_googlenet_trunc_normal,
    # Like GoogLeNet: the ImageNet weights expect (x - 0.5) / 0.5 (torchvision's
    # transform_input), given here as the RGB statistics; no auxiliary head. Unpadded
    # convolutions make the reductions approximate (35 x 35 at 299 px is about 1/8.5), and the
    # input must be at least 75 px.
    rgb_mean=(0.5, 0.5, 0.5), rgb_std=(0.5, 0.5, 0.5),
    builder_kwargs=(("dropout", None), ("aux_logits", False), ("transform_input", False),
                    ("init_weights", True)),
    ignored_weight_prefixes=("AuxLogits.",), trace_size=299))


class Stream(nn.Module):
    """One backbone as ordered tap stages; see the module docstring."""

    def __init__(self, name: str, stages: list[tuple[str, nn.Module]], *, in_channels: int,
                 num_classes: int, modality: str, mean: tuple[float, ...], std: tuple[float, ...],
                 feature_info: list[dict], dropout: float, flow_input: FlowInput = UV):
        super().__init__()
        self.name = name
        self.flow_input = flow_input
        self.dropout = dropout
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.modality = modality
        self.stages = nn.ModuleDict(stages)
        self.taps: tuple[str, ...] = tuple(self.stages.keys())
        self.feature_info = feature_info
        repeats = in_channels // len(mean)
        self.register_buffer("mean", torch.tensor(mean * repeats).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std * repeats).view(-1, 1, 1), persistent=False)

    def tap_info(self, tap: str) -> dict:
        """`feature_info` entry of a feature-map tap (not `scores`)."""
        names = [info["name"] for info in self.feature_info]
        return self.feature_info[names.index(resolve_name(tap.replace(".", "_"), names,
                                                          f"{self.name} tap"))]

    def resolve_tap(self, tap: str) -> str:
        """The stage name of `tap`; a timm module path (`features.2`) names the stage
        `features_2`."""
        return resolve_name(tap.replace(".", "_"), self.taps, f"{self.name} tap")

    def truncate(self, tap: str) -> None:
        """Drop the stages after `tap`, for a tower that is not used past its fusion point."""
        for name in self.taps[self.taps.index(self.resolve_tap(tap)) + 1:]:
            del self.stages[name]
        self.taps = tuple(self.stages.keys())

    def forward_to(self, x: torch.Tensor, tap: str) -> torch.Tensor:
        """Run the stages up to and including `tap`."""
        tap = self.resolve_tap(tap)
        for name, stage in self.stages.items():
            x = stage(x)
            if name == tap:
                return x
        raise AssertionError("unreachable: tap was resolved")

    def forward_from(self, h: torch.Tensor, tap: str) -> torch.Tensor:
        """Continue from the output of `tap` to the class scores."""
        index = self.taps.index(self.resolve_tap(tap))
        for name in self.taps[index + 1:]:
            h = self.stages[name](h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = stage(x)
        return x

    @property
    def input_channels(self) -> int:
        """Channels of the uint8 input: an RGB-difference stream takes one frame more than it
        has differences."""
        if self.modality == "rgbdiff":
            return self.in_channels + 3
        return self.in_channels

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in [0, 255]) `... x C x H x W` -> the float input this stream expects."""
        if x.shape[-3] != self.input_channels:
            raise ValueError(f"{self.name} ({self.modality}) expects {self.input_channels} "
                             f"channels, got input of shape {tuple(x.shape)}")
        x = x.float() / 255.0
        if self.modality == "rgbdiff":  # frames f0, f1, ... -> f1 - f0, f2 - f1, ...
            x = x[..., 3:, :, :] - x[..., :-3, :, :]
        x = (x - self.mean) / self.std
        if self.flow_input.subtract_mean:
            # Simonyan & Zisserman's camera-motion compensation: each displacement field (one
            # u or v channel of one flow frame) minus its mean over the image
            x = x - x.mean(dim=(-2, -1), keepdim=True)
        return x

    @property
    def classifier(self) -> nn.Linear:
        """The last Linear layer (the one sized by `num_classes`)."""
        return [m for m in self.stages["scores"].modules() if isinstance(m, nn.Linear)][-1]


def build_stream(name: str, *, in_channels: int = 3, num_classes: int = 1000,
                 weights: str | Path | None = None, dropout: float | None = None,
                 modality: str | None = None, flow_input: FlowInput = UV) -> Stream:
    """Build a stream from torchvision's model code, or from timm's for `timm:<name>`
    (`fusion.timm_streams`).

    weights: None (random init), "imagenet" (torchvision's weights enum or timm's pretrained
        weights, downloaded), or the path of a local state-dict file with the library's keys for
        the 1000-class, 3-channel model.
    dropout: before the last Linear; None keeps torchvision's default (VGG 0.5, GoogLeNet 0.2,
        ResNet none; timm: none).
    modality: "rgb", "flow" or "rgbdiff", which sets the input normalisation; None means "rgb"
        for 3 input channels and "flow" otherwise. An "rgbdiff" stream has 3 L input channels
        (L differences) and `normalize` makes them from 3 (L + 1) channels of frames.
    flow_input: flow only; `FlowInput`: uv (`in_channels` = 2 L), optionally minus each
        field's mean, or rgb (`in_channels` = 3 L channels of colour images; seed 001).
    With `in_channels != 3` and pretrained weights, the first conv's filters are averaged over
    RGB and replicated over the new channels (cross-modality initialisation, TSN).
    """
    modality = modality or ("rgb" if in_channels == 3 else "flow")
    resolve_name(modality, MODALITIES, "modality")
    if flow_input != UV and modality != "flow":
        raise ValueError(f"{flow_input} applies to a flow stream, not {modality!r}")
    per_frame = 2 if (modality, flow_input.format) == ("flow", "uv") else 3
    if in_channels < 1 or in_channels % per_frame:
        raise ValueError(f"in_channels={in_channels} is not a multiple of {per_frame}, "
                         f"the channels of one {modality} frame")
    if is_timm(name):
        dropout = 0.0 if dropout is None else dropout
        stages, feature_info, rgb_mean, rgb_std = timm_stages(
            name, in_channels=in_channels, num_classes=num_classes, weights=weights,
            dropout=dropout)
    else:
        spec = STREAMS[resolve_name(name, (*STREAMS, "timm:<any timm model>"), "stream")]
        dropout = spec.default_dropout if dropout is None else dropout
        stages = _torchvision_stages(spec, name, in_channels, num_classes, weights, dropout)
        feature_info = _trace_feature_info(stages, in_channels, spec.trace_size)
        rgb_mean, rgb_std = spec.rgb_mean, spec.rgb_std
    mean, std = {"rgb": (rgb_mean, rgb_std), "flow": (FLOW_MEAN, FLOW_STD),
                 "rgbdiff": (DIFF_MEAN, DIFF_STD)}[modality]
    if flow_input.format == "rgb":  # colour images, normalised as seed 001 does
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return Stream(name, stages, in_channels=in_channels, num_classes=num_classes,
                  modality=modality, mean=mean, std=std, dropout=dropout,
                  flow_input=flow_input, feature_info=feature_info)


def _torchvision_stages(spec: BackboneSpec, name: str, in_channels: int, num_classes: int,
                        weights: str | Path | None, dropout: float):
    kwargs = spec.kwargs(dropout)
    if weights is None:
        model = spec.builder(weights=None, num_classes=num_classes, **kwargs)
    else:
        model = spec.builder(weights=None, num_classes=1000, **kwargs)
        if str(weights) == "imagenet":
            state = download_weights(spec.imagenet_weights, f"the ImageNet weights for {name}",
                                     "weights")
            source = "ImageNet weights"
        else:
            state, source = read_state_dict(weights, "weights file"), f"weights file {weights}"
        state = {k: v for k, v in state.items()
                 if not k.startswith(spec.ignored_weight_prefixes)}
        check_state_dict(model.state_dict(), state, f"cannot load {source} into {name}")
        model.load_state_dict(state)
        if num_classes != 1000:
            # Only the last Linear is resized: the video classes are not ImageNet's.
            old = model.get_submodule(spec.last_linear)
            set_module(model, spec.last_linear, nn.Linear(old.in_features, num_classes))
    if in_channels != 3:
        replace_first_conv(model, spec.first_conv, in_channels,
                           spec.init_first_conv if weights is None else None)
    return spec.stages(model, dropout)


def _trace_feature_info(stages: list[tuple[str, nn.Module]], in_channels: int,
                        size: int) -> list[dict]:
    """Channels and reduction of every feature-map tap, read off a real forward pass (at 64 px,
    a multiple of every reduction up to 32, the ratios are exact)."""
    x = torch.zeros(1, in_channels, size, size)
    info = []
    with torch.no_grad():
        for name, stage in stages:
            if name == "scores":
                break
            # eval: a forward in training mode would move the BatchNorm running statistics.
            training = stage.training
            x = stage.eval()(x)
            stage.train(training)
            info.append({"name": name, "channels": x.shape[1],
                         "reduction": int(round(size / x.shape[-1]))})
    return info


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
