"""Trained models out of PyTorch: ONNX (the whole model, uint8 in, class scores out) and plain
torchvision state dicts (each complete stream).

    export_onnx(model, config, classes, "model.onnx")       # then: OnnxModel("model.onnx")
    export_torchvision(model, "streams/")                   # resnet18_rgb.pth + .json per stream

The ONNX graph takes the uint8 tensors the datasets produce (`rgb` B x T x 3 L_rgb x H x W,
`flow` B x T x 2 L x H x W, whichever the model reads) with the normalisation inside, a dynamic
batch, and gives the logits (`scores`, B x classes); its metadata carries the run's config and
class names, so `predict.py --onnx` needs nothing else.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusion.config import Config, from_dict, to_toml
from fusion.files import write_atomic, write_json_atomic
from fusion.model import SingleStream, TwoStream
from fusion.streams import STREAMS, Stream
from fusion.surgery import replace_first_conv
from fusion.timm_streams import is_timm

TOLERANCE = 1e-3  # max |ONNX - PyTorch| on the logits above which an export is refused


class ExportError(RuntimeError):
    """A model (or part of one) that the target format cannot express; the message names it."""


class _OneInput(nn.Module):
    """A single stream with only the input it reads."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model, self.name = model, name

    def forward(self, x):
        return self.model(x if self.name == "rgb" else None, x if self.name == "flow" else None)


def input_names(model: nn.Module) -> tuple[str, ...]:
    if isinstance(model, SingleStream):
        return ("flow",) if model.stream.modality == "flow" else ("rgb",)
    return ("rgb", "flow")


def describe(model: nn.Module) -> str:
    """The parts of a model, as an export error names them."""
    if isinstance(model, SingleStream):
        s = model.stream
        return f"{s.name} {s.modality} stream" + _flow_format(s)
    parts = f"{model.rgb.name} + {model.flow.name}{_flow_format(model.flow)}, fusion " \
            f"{model.fusion.name!r} at {model.at}"
    return parts + (f", {model.diff.name} RGB-difference stream" if model.diff else "")


def _flow_format(stream: Stream) -> str:
    return f" (flow_format {stream.flow_input.format!r})" if stream.modality == "flow" else ""


def example_inputs(model: nn.Module, config: Config, batch: int = 2) -> list[torch.Tensor]:
    """Random uint8 inputs of the shapes the datasets produce for this model and config."""
    g = torch.Generator().manual_seed(0)
    size = config.image_size
    per_flow_frame = 3 if config.flow_format == "rgb" else 2  # colour images or u, v
    channels = {"rgb": 3 * config.rgb_frames, "flow": per_flow_frame * config.flow_stack}
    return [torch.randint(0, 256, (batch, config.segments, channels[name], size, size),
                          generator=g, dtype=torch.uint8) for name in input_names(model)]


def export_onnx(model: nn.Module, config: Config, classes: list[str], path: str | Path, *,
                inputs: list[torch.Tensor] | None = None) -> float:
    """Write the model as ONNX, run it once in onnxruntime on `inputs` (random uint8 of the
    config's shapes by default, one more in the batch than traced) and return the largest
    difference from PyTorch; over `TOLERANCE` is an `ExportError`."""
    require_export_extra()
    import onnx

    model = model.eval()
    names = input_names(model)
    wrapped = (_OneInput(model, names[0]) if len(names) == 1 else model).eval()
    traced = example_inputs(model, config)
    batch = torch.export.Dim("batch", min=1)
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(wrapped, tuple(traced), input_names=list(names),
                                        output_names=["scores"], dynamo=True,
                                        dynamic_shapes=tuple({0: batch} for _ in names))
    except Exception as err:
        cause = err.__cause__ or err  # torch.onnx wraps the exporter's error in advice
        raise ExportError(f"ONNX cannot express this model ({describe(model)}): "
                          f"{type(cause).__name__}: {str(cause).strip().splitlines()[0][:300]}"
                          ) from err
    graph = program.model_proto
    fixed = [i.name for i in graph.graph.input
             if not i.type.tensor_type.shape.dim[0].dim_param]
    if fixed:  # a Python loop over the batch in some part of the model
        raise ExportError(f"ONNX export of {describe(model)} fixes the batch of {fixed} to "
                          f"{traced[0].shape[0]}: some part loops over the batch in Python")
    metadata = {"config": to_toml(config), "classes": json.dumps(classes),
                "inputs": json.dumps(list(names))}
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    write_atomic(path, lambda f: f.write(graph.SerializeToString()))
    onnx.checker.check_model(str(path))
    check = inputs or [torch.cat([x, x[:1]]) for x in traced]
    with torch.no_grad():
        expected = model(*[dict(zip(names, check)).get(k) for k in ("rgb", "flow")]).float()
    got = OnnxModel(path).scores(check)
    difference = float((torch.from_numpy(got) - expected).abs().max())
    if difference > TOLERANCE:
        raise ExportError(f"ONNX model {path} differs from PyTorch by {difference:.2e} "
                          f"(> {TOLERANCE}) on random inputs: {describe(model)}")
    return difference


EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def require_export_extra() -> None:
    """A missing exporter package is named as such (torch.onnx otherwise reports it as a model
    it cannot express)."""
    import importlib.util

    missing = [name for name in EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ModuleNotFoundError(f"ONNX export needs {', '.join(missing)}: install the export "
                                  f"extra (pip install -e '.[export]')")


class OnnxModel:
    """An exported model in onnxruntime, called like the PyTorch model: `model(rgb, flow)`
    -> logits as a torch tensor; `config` and `classes` come from the file's metadata."""

    def __init__(self, path: str | Path):
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX model {path} does not exist")
        self.session = onnxruntime.InferenceSession(str(path),
                                                    providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if "config" not in meta:
            raise ValueError(f"{path} was not written by scripts/export.py (no config in its "
                             f"metadata)")
        import tomllib

        self.config = from_dict(tomllib.loads(meta["config"]))
        self.classes = json.loads(meta["classes"])
        self.names = tuple(json.loads(meta["inputs"]))

    def scores(self, inputs: list[torch.Tensor]) -> np.ndarray:
        feeds = {name: x.cpu().numpy() for name, x in zip(self.names, inputs)}
        return self.session.run(["scores"], feeds)[0]

    def __call__(self, rgb: torch.Tensor | None, flow: torch.Tensor | None) -> torch.Tensor:
        given = {"rgb": rgb, "flow": flow}
        return torch.from_numpy(self.scores([given[name] for name in self.names]))

    def eval(self) -> "OnnxModel":
        return self


def complete_streams(model: nn.Module) -> dict[str, Stream]:
    """The streams that run to their own classifier in this model, by role."""
    if isinstance(model, SingleStream):
        return {model.stream.modality: model.stream}
    assert isinstance(model, TwoStream)
    streams = {"rgb": model.rgb, "flow": model.flow}
    if model.diff is not None:
        streams["rgbdiff"] = model.diff
    return {role: s for role, s in streams.items() if "scores" in s.taps}


def torchvision_model(stream: Stream) -> nn.Module:
    """The stream as the torchvision model it was built from, holding the stream's weights."""
    if is_timm(stream.name):
        raise ExportError(f"{stream.name} is a timm model, not a torchvision one; save "
                          f"stream.state_dict() or use ONNX")
    spec = STREAMS[stream.name]
    model = spec.builder(weights=None, num_classes=stream.num_classes,
                         **spec.kwargs(stream.dropout))
    if stream.in_channels != 3:
        replace_first_conv(model, spec.first_conv, stream.in_channels, spec.init_first_conv)
    stages = nn.ModuleDict(spec.stages(model, stream.dropout))  # the model's own modules
    stages.load_state_dict(stream.stages.state_dict())
    return model.eval()


def input_steps(stream: Stream) -> list[dict]:
    """Every step `Stream.normalize` takes from the uint8 input to the network's, as data: a
    reader who follows these alone feeds the exported model what the stream saw."""
    steps = [{"op": "divide", "by": 255.0,
              "what": f"uint8 {stream.input_channels}-channel input to [0, 1]"}]
    if stream.modality == "rgbdiff":
        steps.append({"op": "frame_difference", "channels_per_frame": 3,
                      "what": "channels 3.. minus channels ..-3: each frame minus the one "
                              "before it"})
    steps.append({"op": "normalize", "mean": stream.mean.flatten().tolist(),
                  "std": stream.std.flatten().tolist(),
                  "what": "(x - mean) / std per channel"})
    if stream.flow_input.subtract_mean:
        steps.append({"op": "subtract_spatial_mean",
                      "what": "each channel minus its mean over H x W (mean flow subtraction)"})
    return steps


def export_torchvision(model: nn.Module, folder: str | Path) -> dict[str, Path]:
    """Each complete stream as `<backbone>_<role>.pth` (a torchvision state dict) and a `.json`
    beside it saying how to build the model that loads it; returns the written files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    streams = complete_streams(model)
    if not streams:
        raise ExportError(f"no stream of this model runs to its own classifier "
                          f"({describe(model)})")
    for role, stream in streams.items():
        network = torchvision_model(stream)
        spec = STREAMS[stream.name]
        path = folder / f"{stream.name}_{role}.pth"
        write_atomic(path, lambda f, n=network: torch.save(n.state_dict(), f))
        write_json_atomic(path.with_suffix(".json"), {
            "builder": f"torchvision.models.{stream.name}",
            "kwargs": {"num_classes": stream.num_classes, **spec.kwargs(stream.dropout),
                       "weights": None},
            "in_channels": stream.in_channels, "first_conv": spec.first_conv,
            "modality": stream.modality, "flow_format": stream.flow_input.format,
            "input_steps": input_steps(stream),
            "note": "replace first_conv by an nn.Conv2d with in_channels inputs (same out "
                    "channels, kernel, stride, padding, bias) before load_state_dict; the "
                    "uint8 input (N x C x H x W) becomes the model's by input_steps, in order"})
        written[role] = path
    return written
