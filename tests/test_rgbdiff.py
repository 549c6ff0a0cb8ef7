"""RGB difference as a third modality (TSN, seed 004) and three-stream late fusion."""
import json

import pytest
import torch
import torchvision

from fusion.config import build_parser, resolve
from fusion.data.sampling import ClipSpec
from fusion.data.splits import ucf101
from fusion.data.synthetic import make_synthetic
from fusion.engine import train
from fusion.fusers import FusionOptions
from fusion.model import SingleStream, centre_frames
from fusion.parts import FusionSpec, StreamSpec, assemble
from fusion.streams import build_stream
from tests.fakes import by_hand, write_ucf101

DIFF_STD = 2 * (0.229 + 0.224 + 0.225) / 3  # TSN: twice the mean ImageNet std


def test_rgb_difference_values_by_hand():
    stream = build_stream("resnet18", in_channels=6, modality="rgbdiff")
    assert stream.input_channels == 9  # 2 differences from 3 frames
    frames = torch.tensor([10, 40, 25], dtype=torch.uint8).repeat_interleave(3).view(9, 1, 1)
    got = stream.normalize(frames).flatten().tolist()
    expected = [(40 - 10) / 255 / DIFF_STD] * 3 + [(25 - 40) / 255 / DIFF_STD] * 3
    assert got == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="expects 9 channels"):
        stream.normalize(torch.zeros(6, 2, 2))


def test_difference_stream_reads_consecutive_frames_centred_in_the_snippet(tmp_path):
    root = write_ucf101(tmp_path / "ucf", {"v_YoYo_g01_c01": (20, 19)}, ["YoYo"], [],
                        ["YoYo/v_YoYo_g01_c01.avi"])
    # RGB frame k holds 10 k: consecutive frames differ by 10 everywhere.
    config = resolve(build_parser().parse_args(["--fuse", "none", "--stream", "rgbdiff",
                                                "--diff-stack", "3", "--flow-stack", "7"]))
    assert config.modalities == ("rgb",) and config.rgb_frames == 4
    data = ucf101(root, subset="test", clip=ClipSpec(modalities=["rgb"], rgb_stack=4),
                  image_size=16, mode="val")
    rgb = data[0][0]  # 1 x 12 x 16 x 16: frames 8, 9, 10, 11 (centre of 20 positions 0..16)
    assert [round(rgb[0, 3 * i].float().mean().item()) for i in range(4)] == [90, 100, 110, 120]
    stream = build_stream("resnet18", in_channels=9, modality="rgbdiff")
    diffs = stream.normalize(rgb[0])
    torch.testing.assert_close(diffs, torch.full_like(diffs, 10 / 255 / DIFF_STD), atol=1e-5,
                               rtol=0)
    # an RGB stream beside it takes the frame(s) in the middle of the clip's stack
    middle = centre_frames(rgb.unsqueeze(0), 3)
    assert round(middle.float().mean().item()) == 100


def three_streams(spec: FusionSpec):
    """RGB, 2 flow frames and 2 RGB differences (ResNet-18s, 4 classes), joined as `spec`."""
    streams = [StreamSpec("resnet18", modality, frames=2 if modality != "rgb" else 1).build(4)
               for modality in ("rgb", "flow", "rgbdiff")]
    return assemble(*streams[:2], spec, num_classes=4, diff=streams[2]).eval()


def test_three_stream_late_fusion_is_the_weighted_mean_of_three_softmaxes():
    torch.manual_seed(0)
    model = three_streams(FusionSpec("average", options=FusionOptions(weights=(1.0, 1.5, 1.0))))
    g = torch.Generator().manual_seed(1)
    rgb = torch.randint(0, 256, (2, 2, 9, 32, 32), dtype=torch.uint8, generator=g)
    flow = torch.randint(0, 256, (2, 2, 4, 32, 32), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        fused = model(rgb, flow).softmax(-1)
        p_rgb = by_hand(model.rgb, rgb[:, :, 3:6], (0.485, 0.456, 0.406),
                        (0.229, 0.224, 0.225)).softmax(-1)
        p_flow = by_hand(model.flow, flow, (0.5, 0.5), (0.5, 0.5)).softmax(-1)
        diff_input = torch.stack([(rgb[:, t, 3:].float() - rgb[:, t, :-3].float()) / 255
                                  / DIFF_STD for t in range(2)], 1)
        p_diff = torch.stack([model.diff(diff_input[:, t]) for t in range(2)]).mean(0)
        p_diff = p_diff.softmax(-1)
    torch.testing.assert_close(fused, (p_rgb + 1.5 * p_flow + p_diff) / 3.5)
    with pytest.raises(ValueError, match="average fusion of 3 streams needs as many weights"):
        resolve(build_parser().parse_args(["--fuse", "average", "--at", "scores", "--diff",
                                           "resnet18", "--fusion-weights", "1", "1.5"]))


def test_difference_stream_on_top_of_mid_level_fusion():
    torch.manual_seed(0)
    model = three_streams(FusionSpec("conv1x1", at="layer4", diff_weight=0.5))
    rgb = torch.randint(0, 256, (2, 1, 9, 32, 32), dtype=torch.uint8)
    flow = torch.randint(0, 256, (2, 1, 4, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        parts = model(rgb, flow, return_parts=True)
        model.diff_fusion = None  # the same model without the third stream on top
        core = model(rgb, flow)
    expected = (core.softmax(-1) + 0.5 * parts["rgbdiff"].softmax(-1)) / 1.5
    torch.testing.assert_close(parts["fused"].softmax(-1), expected)
    assert "rgbdiff" in dict(model.parts())


def test_cross_modality_initialisation_of_a_difference_stream(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r.pth")
    stream = build_stream("resnet18", in_channels=15, modality="rgbdiff",
                          weights=tmp_path / "r.pth")
    expected = reference.conv1.weight.mean(dim=1, keepdim=True).repeat(1, 15, 1, 1)
    assert torch.equal(stream.stages["conv1"][0].weight.detach(), expected)


def test_three_stream_training_from_separately_trained_streams(tmp_path):
    data = make_synthetic(tmp_path / "data", groups=3, clips_per_group=1, height=40, width=48,
                          min_frames=6, max_frames=8, seed=5)
    common = ["--data-root", str(data), "--logdir", str(tmp_path), "--image-size", "32",
              "--flow-stack", "2", "--diff-stack", "2", "--epochs", "1", "--batch-size", "4",
              "--workers", "0", "--val-fraction", "0", "--eval-clips", "1"]

    def run(*argv):
        return train(resolve(build_parser().parse_args([*common, *argv])))
    for stream in ("rgb", "flow", "rgbdiff"):
        run("--fuse", "none", "--stream", stream, "--run-name", stream)
    # epochs 0: assemble the three trained streams and test them, no further training
    run_dir = run("--fuse", "average", "--at", "scores", "--diff", "resnet18",
                  "--fusion-weights", "1", "1.5", "1", "--epochs", "0",
                  "--init-rgb", str(tmp_path / "rgb" / "last.pt"),
                  "--init-flow", str(tmp_path / "flow" / "last.pt"),
                  "--init-diff", str(tmp_path / "rgbdiff" / "last.pt"), "--run-name", "three")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"fused", "rgb", "flow", "rgbdiff"}
    # the three-stream model's streams are the ones trained alone
    alone = torch.load(tmp_path / "rgbdiff" / "last.pt")["model"]
    three = torch.load(run_dir / "last.pt")["model"]
    for key, value in alone.items():
        assert torch.equal(three["diff." + key[len("stream."):]], value), key
    single = SingleStream(build_stream("resnet18", in_channels=6, modality="rgbdiff")).eval()
    assert single(torch.zeros(1, 1, 9, 32, 32), None).shape == (1, 1000)
