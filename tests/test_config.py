"""Config loading, overrides and errors; every shipped config builds its model."""
from pathlib import Path

import pytest

from fusion.config import Config, build_parser, load_toml, resolve, to_toml
from fusion.build import build_model

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.toml"))


def parse(*argv):
    return resolve(build_parser().parse_args(list(argv)))


def test_defaults_file_and_flags_in_that_order(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('fuse = "sum"\nflow_stack = 4\nlr = 1\nfusion_weights = [1, 1.5]\n')
    config = parse("--config", str(path), "--flow-stack", "6", "--keep-spatial-head")
    assert (config.fuse, config.flow_stack, config.lr) == ("sum", 6, 1.0)
    assert config.fusion_weights == [1.0, 1.5] and config.keep_spatial_head is True
    assert config.segments == Config().segments  # untouched keys keep their defaults
    assert parse("--no-keep-spatial-head").keep_spatial_head is False


def test_unknown_and_ill_typed_keys_name_the_key(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('fuse = "conv1x1"\nflow_stacks = 4\n')
    with pytest.raises(ValueError, match="c.toml: unknown key 'flow_stacks'"):
        load_toml(path)
    path.write_text('flow_stack = "ten"\n')
    with pytest.raises(ValueError, match="key flow_stack must be int, got 'ten'"):
        load_toml(path)
    path.write_text('keep_spatial_head = 1\n')
    with pytest.raises(ValueError, match="key keep_spatial_head must be bool"):
        load_toml(path)
    path.write_text('fuse = \n')
    with pytest.raises(ValueError, match="is not valid TOML"):
        load_toml(path)
    with pytest.raises(FileNotFoundError, match="config file .*nope.toml does not exist"):
        load_toml(tmp_path / "nope.toml")
    with pytest.raises(SystemExit):  # argparse: an unknown flag
        build_parser().parse_args(["--flow-stacks", "3"])


@pytest.mark.parametrize("argv, message", [
    (["--fuse", "mean"],
     "config key fuse: 'mean' is not one of sum, max, concat, conv1x1, bilinear, conv3d, average, none"),
    (["--schedule", "linear"], "config key schedule: 'linear' is not one of step"),
    (["--flow-stack", "0"], "config key flow_stack: must be > 0"),
    (["--val-fraction", "1.5"], "config key val_fraction: must be in"),
    (["--dropout", "2"], "config key dropout"),
    (["--fuse", "average", "--at", "layer4"], "config key at: average fusion combines scores"),
    (["--rgb", "alexnet"], "config key rgb: 'alexnet' is not one of"),
    (["--split", "4"], "config key split"),
    (["--sync-bn", "--partial-bn"], "config key sync_bn"),
])
def test_bad_values_name_the_key(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(*argv)


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = parse("--fuse", "average", "--at", "scores", "--fusion-weights", "1", "1.5",
                   "--classes", "RedUp", "Blue \"quoted\"", "--run-name", "a\\b")
    path = tmp_path / "config.toml"
    path.write_text(to_toml(config))
    assert Config(**load_toml(path)) == config


# What README's config tables say each shipped config builds: (RGB backbone, flow backbone,
# fusion, RGB tap, RGB input channels, flow input channels, kept spatial head); a single stream
# is (backbone, modality).
DESCRIBED = {
    "synthetic_demo": ("resnet18", "resnet18", "conv1x1", "layer4", 3, 10, False),
    "ucf101_resnet18_conv1x1": ("resnet18", "resnet18", "conv1x1", "layer4", 3, 20, True),
    "ucf101_resnet18_average": ("resnet18", "resnet18", "average", "scores", 3, 20, False),
    "ucf101_vgg19_average": ("vgg19", "vgg19", "average", "scores", 3, 20, False),
    "ucf101_vgg19_conv1x1": ("vgg19", "vgg19", "conv1x1", "conv5", 3, 20, False),
    "hmdb51_seed001_googlenet_resnet18": ("googlenet", "resnet18", "conv1x1", "inception5b", 3,
                                          24, True),
    "seed000_ucf101_resnet101_average": ("resnet101", "resnet101", "average", "scores", 3, 20,
                                         False),
    "simonyan2014_ucf101_vgg16_average": ("vgg16", "vgg16", "average", "scores", 3, 20, False),
    "feichtenhofer2016_ucf101_vgg16_conv3d": ("vgg16", "vgg16", "conv3d", "conv5", 3, 20,
                                              False),
    "seed001_stanford40_googlenet": ("googlenet", "rgb"),
    "seed001_hmdb51_frames": ("googlenet", "rgb"),
    "seed001_hmdb51_flow": ("resnet18", "flow"),
    "seed002_ucf101_inception_scratch_flow": ("inception_v3", "inception_v3", "average",
                                              "scores", 3, 20, False),
    "seed003_ucf101_vgg19_rgbstack_conv": ("vgg19", "vgg19", "conv1x1", "conv5", 30, 100,
                                           False),
    "seed004_own_videos_three_streams": ("resnet101", "resnet101", "average", "scores", 3, 10,
                                         False),
    "seed004_own_videos_inception_v4": ("timm:inception_v4", "timm:inception_v4", "average",
                                        "scores", 3, 10, False),
    "seed004_own_videos_inception_resnet_v2": ("timm:inception_resnet_v2",
                                               "timm:inception_resnet_v2", "average", "scores", 3,
                                               10, False),
    "seed004_own_videos_resnest101": ("timm:resnest101e", "timm:resnest101e", "average",
                                      "scores", 3, 10, False),
}
README_NAMES = {"resnet18": "ResNet-18", "resnet101": "ResNet-101", "vgg19": "VGG-19",
                "vgg16": "VGG-16", "conv3d": "conv3d",
                "googlenet": "GoogLeNet", "inception_v3": "Inception-v3",
                "conv1x1": "conv", "average": "averag", "timm:inception_v4": "Inception-v4",
                "timm:inception_resnet_v2": "Inception-ResNet-v2",
                "timm:resnest101e": "ResNeSt-101"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_config_builds_the_model_its_readme_row_describes(path):
    # no downloads and no earlier runs here: random weights, no initialising checkpoints
    config = parse("--config", str(path), "--weights", "none", "--init-rgb", "",
                   "--init-flow", "", "--init-diff", "", "--class-map")
    num_classes = len(config.classes) or config.max_classes or 5
    model = build_model(config, num_classes)
    described = DESCRIBED[path.stem]
    if len(described) == 2:
        assert (model.stream.name, model.stream.modality) == described
    else:
        assert (model.rgb.name, model.flow.name, model.fusion.name, model.at,
                model.rgb.in_channels, model.flow.in_channels,
                model.keep_spatial_head) == described
    if path.stem.startswith("seed004_own_videos"):
        assert model.diff is not None and model.diff.name == described[0]
    docs = Path(__file__).resolve().parents[1] / "docs"
    pages = (docs / "training.md").read_text() + (docs / "reports.md").read_text()
    rows = [line for line in pages.splitlines() if line.startswith(f"| `{path.name}` |")]
    assert rows, f"docs/training.md and docs/reports.md have no row for {path.name}"
    for row in rows:
        for name in {described[0], *described[1:3]} - {"rgb", "flow"}:
            assert README_NAMES[name] in row, (name, row)


def test_mean_flow_subtraction_and_crop_scales_reach_the_model_and_the_transform():
    from fusion.build import train_transform
    two = resolve(build_parser().parse_args(["--flow-mean-subtraction", "--flow-stack", "2"]))
    model = build_model(two, 3)
    assert model.flow.flow_input.subtract_mean and not model.rgb.flow_input.subtract_mean
    alone = resolve(build_parser().parse_args(["--flow-mean-subtraction", "--fuse", "none",
                                               "--stream", "flow", "--flow-stack", "2"]))
    assert build_model(alone, 3).stream.flow_input.subtract_mean
    # TSN's crop scales per modality (tsn-pytorch), unless the key sets them
    assert train_transform(two).scales == (1.0, 0.875, 0.75)
    rgb = resolve(build_parser().parse_args(["--fuse", "none", "--stream", "rgb"]))
    assert train_transform(rgb).scales == (1.0, 0.875, 0.75, 0.66)
    diff = resolve(build_parser().parse_args(["--fuse", "none", "--stream", "rgbdiff"]))
    assert train_transform(diff).scales == (1.0, 0.875, 0.75)
    chosen = resolve(build_parser().parse_args(["--crop-scales", "1", "0.5"]))
    transform = train_transform(chosen)
    sides = {side for _ in range(50) for side in transform.crop_box(100, 120)[2:]}
    assert sides == {100, 50}
    with pytest.raises(ValueError, match="config key crop_scales"):
        resolve(build_parser().parse_args(["--crop-scales", "1.5"]))


def test_every_path_option_is_read_from_the_working_directory(tmp_path, monkeypatch):
    """The README's rawframes command, run from the folder above the dataset: list files and
    the class-name file alike are relative to the working directory, not to data_root."""
    from fusion.build import build_dataset
    from tests.test_rawframes import write_rawframes
    write_rawframes(tmp_path / "mm", flow_from=1)
    (tmp_path / "mm" / "names.txt").write_text("running\njumping\n")
    monkeypatch.chdir(tmp_path)
    common = ["--dataset", "rawframes", "--data-root", "mm", "--image-size", "16"]
    config = parse(*common, "--train-list", "mm/train.txt", "--test-list", "mm/test.txt",
                   "--class-names", "mm/names.txt")
    assert build_dataset(config, "test", "val").classes == ["running", "jumping"]
    # a list named as it was once read, from data_root: the error says where it is
    config = parse(*common, "--train-list", "train.txt", "--test-list", "mm/test.txt")
    with pytest.raises(FileNotFoundError, match=r"config key train_list: train.txt is not in "
                                                r"the working directory .*; the file is under "
                                                r"data_root: give mm/train.txt"):
        build_dataset(config, "train", "train")
