"""Still-image pre-training (seed 001): the image folder, and carrying its RGB stream into a video
model through a class mapping."""
import numpy as np
import pytest
import torch
from PIL import Image

from fusion.config import build_parser, resolve
from fusion.data.images import images, pad_square
from fusion.data.splits import Selection
from fusion.data.synthetic import make_synthetic
from fusion.build import build_model
from fusion.checkpoint import load_checkpoint
from fusion.engine import train

# three still-image classes of very different sizes, and colours a stream can learn
SIZES = {"applauding": 12, "climbing": 4, "waving_hands": 8}
COLOURS = {"applauding": (200, 40, 40), "climbing": (40, 60, 210), "waving_hands": (40, 200, 40)}


@pytest.fixture(scope="module")
def stills(tmp_path_factory):
    root = tmp_path_factory.mktemp("stanford")
    g = torch.Generator().manual_seed(0)
    for name, count in SIZES.items():
        (root / name).mkdir()
        for i in range(count):
            h, w = (30, 50) if i % 2 else (44, 26)  # portrait and landscape, never square
            image = torch.randint(0, 60, (3, h, w), dtype=torch.uint8, generator=g)
            image[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = torch.tensor(
                COLOURS[name], dtype=torch.uint8).view(3, 1, 1)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(
                root / name / f"{i:03d}.{'png' if i == 0 else 'jpg'}", quality=95)
    (root / "climbing" / "notes.txt").write_text("not an image")
    return root


def test_pad_square_centres_the_image_on_zeros():
    image = torch.full((3, 2, 6), 9, dtype=torch.uint8)
    padded = pad_square(image)
    assert padded.shape == (3, 6, 6)
    assert (padded[:, :2] == 0).all() and (padded[:, 4:] == 0).all()
    assert (padded[:, 2:4] == 9).all()


def test_image_split_is_stratified_and_oversampling_balances(stills):
    train = images(stills, subset="train", selection=Selection(val_fraction=0.25),
                   test_fraction=0.25, image_size=32)
    val = images(stills, subset="val", selection=Selection(val_fraction=0.25), test_fraction=0.25,
                 image_size=32)
    test = images(stills, subset="test", selection=Selection(val_fraction=0.25), test_fraction=0.25,
                  image_size=32)
    assert train.classes == sorted(SIZES)
    per_class = [np.bincount(d.labels, minlength=3).tolist() for d in (train, val, test)]
    assert per_class == [[7, 2, 4], [2, 1, 2], [3, 1, 2]]  # each split in proportion
    paths = [{p for p, _ in d.items} for d in (train, val, test)]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    balanced = images(stills, subset="train",
                      selection=Selection(val_fraction=0.25, oversample=True), test_fraction=0.25,
                      image_size=32)
    assert np.bincount(balanced.labels).tolist() == [7, 7, 7]
    assert {p for p, _ in balanced.items} == paths[0]  # duplicates only, nothing from val/test
    rgb, flow, label, name = val[0][:4]
    assert rgb.shape == (1, 3, 32, 32) and rgb.dtype == torch.uint8 and flow is None
    # eval: padded to a square and resized, no crop: the zero bands of the padding are there
    assert name.startswith("applauding/") and rgb[0, :, :, 0].float().mean() < 40
    assert train[(5, 0)][0].shape == (1, 3, 32, 32)
    assert test.views_per_video == 1


def test_still_image_stream_initialises_a_video_model_through_a_class_map(stills, tmp_path):
    common = ["--image-size", "32", "--batch-size", "4", "--workers", "0", "--eval-clips", "1",
              "--optimizer", "adam", "--lr", "1e-3", "--logdir", str(tmp_path)]
    train(resolve(build_parser().parse_args([
        "--dataset", "images", "--data-root", str(stills), "--fuse", "none", "--stream", "rgb",
        "--epochs", "1", "--run-name", "stills", "--oversample", *common])))
    source = load_checkpoint(tmp_path / "stills" / "last.pt")
    assert source["classes"] == ["applauding", "climbing", "waving_hands"]
    video_data = make_synthetic(tmp_path / "video", groups=3, clips_per_group=1, height=40,
                                width=48, min_frames=4, max_frames=6)
    # 4 video classes; two of them take the classifier rows of two still-image classes
    mapping = ["applauding:RedUp", "climbing:BlueDown"]
    config = resolve(build_parser().parse_args([
        "--data-root", str(video_data), "--fuse", "conv1x1", "--keep-spatial-head",
        "--flow-stack", "2",
        "--init-rgb", str(tmp_path / "stills" / "last.pt"), "--class-map", *mapping, *common]))
    classes = ["RedUp", "RedDown", "BlueUp", "BlueDown"]
    torch.manual_seed(0)
    model = build_model(config, 4, classes)
    weights = source["model"]
    for key, value in model.rgb.state_dict().items():
        if not key.startswith("stages.scores"):
            assert torch.equal(value, weights["stream." + key]), key
    fc, old = model.rgb.classifier, {k: weights[f"stream.stages.scores.3.{k}"]
                                     for k in ("weight", "bias")}
    assert torch.equal(fc.weight[0], old["weight"][0])  # applauding -> RedUp
    assert torch.equal(fc.weight[3], old["weight"][1])  # climbing -> BlueDown
    assert torch.equal(fc.bias[3], old["bias"][1])
    assert not torch.equal(fc.weight[1], old["weight"][0])  # unmapped: a fresh row
    bad = ["applause:RedUp"]
    with pytest.raises(ValueError, match="'applause' is not one of the classes of"):
        build_model(resolve(build_parser().parse_args([
            "--data-root", str(video_data), "--init-rgb", str(tmp_path / "stills" / "last.pt"),
            "--class-map", *bad])), 4, classes)
    bare = tmp_path / "bare.pt"  # a plain state dict knows no class names
    torch.save({k[len("stream."):]: v for k, v in weights.items()}, bare)
    with pytest.raises(ValueError, match="bare.pt records no class names, which class_map"):
        build_model(resolve(build_parser().parse_args([
            "--data-root", str(video_data), "--init-rgb", str(bare), "--class-map", *mapping])),
            4, classes)
    with pytest.raises(ValueError, match="class_map: maps the classes of init_rgb"):
        resolve(build_parser().parse_args(["--class-map", "a:b"]))
    with pytest.raises(ValueError, match="still images train an RGB stream alone"):
        resolve(build_parser().parse_args(["--dataset", "images"]))
