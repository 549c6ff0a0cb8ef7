"""MMAction2's rawframes layout and list files, read as they are."""
import json

import pytest

from fusion.data.rawframes import rawframes
from fusion.data.sampling import ClipSpec
from fusion.data.splits import Selection
from tests.fakes import flow_index, rgb_index, write_frame

CLASSES = ("Run", "Jump")


def write_rawframes(root, *, flow_from: int, frames: int = 12, videos_per_class: int = 4,
                    total_off: str | None = None):
    """MMAction2's tree: rawframes/<class>/<video>/img_00001.jpg (RGB frame k holds 10 k),
    flow_x_/flow_y_ numbered from `flow_from`, one fewer than RGB (0-based flow frame i holds
    u = 101 + i, v = 199 - i); lists 'train.txt' / 'test.txt' with labels from 0."""
    lines = {"train": [], "test": []}
    for label, cls in enumerate(CLASSES):
        for v in range(videos_per_class):
            name = f"{cls}/v_{cls}_g{v:02d}"
            folder = root / "rawframes" / name
            for k in range(1, frames + 1):
                write_frame(folder / f"img_{k:05d}.jpg", 10 * k, 3)
            for i in range(frames - 1):
                write_frame(folder / f"flow_x_{i + flow_from:05d}.jpg", 101 + i, 1)
                write_frame(folder / f"flow_y_{i + flow_from:05d}.jpg", 199 - i, 1)
            total = frames + 5 if name == total_off else frames
            lines["train" if v < 3 else "test"].append(f"{name} {total} {label}")
    for subset, entries in lines.items():
        (root / f"{subset}.txt").write_text("\n".join(entries) + "\n")
    return root


@pytest.mark.parametrize("flow_from", [0, 1])
def test_flow_numbered_from_0_or_1_reads_the_same_frames(tmp_path, flow_from):
    root = write_rawframes(tmp_path / "mm", flow_from=flow_from)
    data = rawframes(root, subset="test", mode="val", lists={"train": "train.txt",
                                                             "test": "test.txt"},
                     clip=ClipSpec(segments=2, flow_stack=3), image_size=16)
    assert [v.video_id for v in data.videos] == ["Run/v_Run_g03", "Jump/v_Jump_g03"]
    assert data.classes == ["0", "1"] and data.labels == [0, 1]
    assert (data.videos[0].rgb_frames, data.videos[0].flow_frames) == (12, 11)
    rgb, flow = data[0][:2]
    # 11 flow frames, L = 3: 9 positions; val takes the segment centres 2 and 6
    assert [flow_index(flow[t, 2 * i]) for t in range(2) for i in range(3)] == \
        [2, 3, 4, 6, 7, 8]
    # the RGB frame centred in the span of flow s .. s+2 (RGB frames s .. s+3): the earlier
    # middle, s + (4 - 1) // 2 = s + 1
    assert [rgb_index(rgb[t]) for t in range(2)] == [3, 7]
    assert f"rawframes flow numbered from {flow_from} in 2 videos" in data.notes
    assert "rawframes RGB minus flow frames: 1 in 2 videos" in data.notes


def test_lists_class_names_and_validation(tmp_path):
    root = write_rawframes(tmp_path / "mm", flow_from=0, total_off="Jump/v_Jump_g01")
    lists = {"train": "train.txt", "test": str(root / "test.txt")}
    train = rawframes(root, subset="train", lists=lists, selection=Selection(val_fraction=0.34),
                      image_size=16)
    val = rawframes(root, subset="val", lists=lists, selection=Selection(val_fraction=0.34),
                    image_size=16)
    assert len(train) == 4 and len(val) == 2  # one of each class's three held out
    assert not {v.video_id for v in train.videos} & {v.video_id for v in val.videos}
    every = rawframes(root, subset="train", lists=lists, image_size=16)
    assert any("total_frames that matches neither" in n and "Jump/v_Jump_g01 (17 listed, 12 "
               "on disk)" in n for n in every.notes)
    (root / "val.txt").write_text("Run/v_Run_g00 12 0\n")
    listed = rawframes(root, subset="val", lists={**lists, "val": "val.txt"}, image_size=16)
    assert [v.video_id for v in listed.videos] == ["Run/v_Run_g00"]
    (root / "names.txt").write_text("running\njumping\n")
    named = rawframes(root, subset="test", lists=lists, class_file=root / "names.txt",
                      selection=Selection(classes=["jumping"]), image_size=16)
    assert named.classes == ["jumping"] and [v.video_id for v in named.videos] == \
        ["Jump/v_Jump_g03"]
    (root / "short.txt").write_text("running\n")
    with pytest.raises(ValueError, match="short.txt names 1 classes, but the lists use label 1"):
        rawframes(root, subset="test", lists=lists, class_file=root / "short.txt")


def test_a_bad_list_line_or_a_missing_folder_is_named(tmp_path):
    root = write_rawframes(tmp_path / "mm", flow_from=1)
    (root / "bad.txt").write_text("Run/v_Run_g00 12 0\nRun/v_Run_g01 twelve 0\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: expected '<video dir> <total_frames> "
                                         r"<label from 0>' .* got 'Run/v_Run_g01 twelve 0'"):
        rawframes(root, subset="train", lists={"train": "bad.txt", "test": "test.txt"})
    (root / "gone.txt").write_text("Run/v_Run_g09 12 0\nJump/v_Jump_g00 12 1\n")
    with pytest.raises(Exception, match=r"video Run/v_Run_g09: expected the folder .*"
                                        r"rawframes/Run/v_Run_g09 \(listed in .*gone.txt\)"):
        rawframes(root, subset="train", lists={"train": "gone.txt", "test": "test.txt"})


@pytest.mark.parametrize("flow_from", [0, 1])
def test_a_rawframes_tree_trains_and_tests(tmp_path, flow_from, capsys, load_script):
    root = write_rawframes(tmp_path / "mm", flow_from=flow_from)
    code = load_script("train_fusion").main([
        "--dataset", "rawframes", "--data-root", str(root), "--train-list",
        str(root / "train.txt"), "--test-list", str(root / "test.txt"),
        "--logdir", str(tmp_path / "runs"), "--run-name", "mm",
        "--image-size", "32", "--flow-stack", "2", "--segments", "2", "--epochs", "1",
        "--batch-size", "2", "--workers", "0", "--val-fraction", "0.34", "--eval-clips", "2",
        "--fuse", "conv1x1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"note: rawframes flow numbered from {flow_from} in 4 videos" in printed
    metrics = json.loads((tmp_path / "runs" / "mm" / "metrics.json").read_text())
    assert metrics["protocol"]["videos"] == 2 and metrics["classes"] == ["0", "1"]


def test_ucf101_names_carve_validation_by_group_in_rawframes_and_folder_layouts(tmp_path):
    """A (class, group) pair never sits on both sides of a carve-out, whichever reader found
    the UCF101 videos (two clips per group, 7 groups per class)."""
    from fusion.data.splits import folder
    lines = []
    for label, cls in enumerate(CLASSES):
        for g in range(7):
            for c in (1, 2):
                name = f"{cls}/v_{cls}_g{g:02d}_c{c:02d}"
                for k in range(1, 4):
                    write_frame(tmp_path / "mm" / "rawframes" / name / f"img_{k:05d}.jpg", k, 3)
                    write_frame(tmp_path / "own" / name / f"frame{k:06d}.jpg", k, 3)
                lines.append(f"{name} 3 {label}")
    (tmp_path / "mm" / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "mm" / "test.txt").write_text("\n".join(lines[:2]) + "\n")

    def pairs(data):
        return {(v.label, v.video_id.split("_")[-2]) for v in data.videos}
    for seed in range(3):
        options = dict(clip=ClipSpec(modalities=("rgb",)), image_size=16,
                       selection=Selection(val_fraction=0.3, seed=seed))
        lists = {"train": "train.txt", "test": "test.txt"}
        train = rawframes(tmp_path / "mm", subset="train", lists=lists, **options)
        val = rawframes(tmp_path / "mm", subset="val", lists=lists, **options)
        assert len(train) + len(val) == 28 and not pairs(train) & pairs(val)
        parts = [pairs(folder(tmp_path / "own", subset=s, test_fraction=0.3, **options))
                 for s in ("train", "val", "test")]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_labels_with_no_training_video_are_named(tmp_path):
    """Labels 0 and 3 only, no class-name file: classes 1 and 2 would be trained on nothing
    (an error naming them); with a class-name file they are declared, and the run's notes
    name them."""
    root = tmp_path / "mm"
    lines = []
    for label in (0, 3):
        for v in range(2):
            name = f"c{label}/vid{v}"
            for k in range(1, 4):
                write_frame(root / "rawframes" / name / f"img_{k:05d}.jpg", k, 3)
            lines.append(f"{name} 3 {label}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "test.txt").write_text(lines[0] + "\n")
    options = dict(lists={"train": "train.txt", "test": "test.txt"},
                   clip=ClipSpec(modalities=("rgb",)), image_size=16)
    with pytest.raises(ValueError, match=r"labels 1, 2 without a video in .*train.txt, which "
                                         r"uses labels up to 3"):
        rawframes(root, subset="train", **options)
    (root / "names.txt").write_text("zero\none\ntwo\nthree\n")
    data = rawframes(root, subset="train", class_file=root / "names.txt", **options)
    assert data.classes == ["zero", "one", "two", "three"]
    assert any("one (1), two (2)" in note and "never predict" in note for note in data.notes)


def test_the_frames_folder_is_an_option(tmp_path):
    """MMAction2 configs name the frames folder freely (data_prefix): rawframes_train, ..."""
    write_rawframes(tmp_path / "mm", flow_from=1)
    (tmp_path / "mm" / "rawframes").rename(tmp_path / "mm" / "frames_train")
    lists = {"train": "train.txt", "test": "test.txt"}
    with pytest.raises(FileNotFoundError, match=r"frames folder .*rawframes \(config key "
                                                r"rawframes_dir"):
        rawframes(tmp_path / "mm", subset="test", lists=lists, image_size=16)
    data = rawframes(tmp_path / "mm", subset="test", lists=lists, image_size=16,
                     frames_dir="frames_train")
    assert len(data) == 2 and data[0][0].shape[-2:] == (16, 16)
    from fusion.build import build_dataset
    from fusion.config import Config
    config = Config(dataset="rawframes", data_root=str(tmp_path / "mm"),
                    train_list=str(tmp_path / "mm" / "train.txt"),
                    test_list=str(tmp_path / "mm" / "test.txt"), rawframes_dir="frames_train",
                    image_size=16, fuse="none", stream="rgb")
    assert len(build_dataset(config, "test", "val")) == 2
