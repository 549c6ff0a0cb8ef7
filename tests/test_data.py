"""Datasets, sampling and transforms on small datasets written in the official layouts."""
import json
import os

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as F
from torch.utils.data import DataLoader

from fusion.data.clips import read_frames
from fusion.data.loader import FrameError, collate_clips
from fusion.data.splits import (Selection, folder, hmdb51, oversample, stratified_split,
                                ucf101)
from fusion.data.flow import dequantize, quantize
from fusion.data.index import INDEX_NAME
from fusion.data.sampling import (ClipSpec, protocol_clip_starts, segment_starts, snippet_frames,
                                  snippet_indices)
from fusion.data.synthetic import COLOURS, DIRECTIONS, make_synthetic, split_class
from fusion.data.transforms import EvalTransform, TrainTransform, flip_flow
from tests.fakes import flow_index, rgb_index, write_frame, write_ucf101, write_video

CLASSES = ["ApplyEyeMakeup", "HandstandPushups", "YoYo"]


@pytest.fixture
def ucf(tmp_path):
    """UCF101's quirks: the class is HandstandPushups in classInd and in the list paths, but the
    videos are v_HandStandPushups_*; testlists have no labels; flow has one frame fewer."""
    videos = {"v_ApplyEyeMakeup_g01_c01": (20, 19), "v_ApplyEyeMakeup_g02_c01": (12, 11),
              "v_HandStandPushups_g01_c01": (16, 15), "v_HandStandPushups_g02_c01": (9, 9),
              "v_YoYo_g01_c01": (6, 5), "v_YoYo_g02_c01": (22, 21)}
    train = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1",
             "HandstandPushups/v_HandStandPushups_g01_c01.avi 2", "YoYo/v_YoYo_g01_c01.avi 3"]
    test = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi",
            "HandstandPushups/v_HandStandPushups_g02_c01.avi", "YoYo/v_YoYo_g02_c01.avi"]
    return write_ucf101(tmp_path / "ucf101", videos, CLASSES, train, test)


def test_ucf101_split_files_with_the_official_quirks(ucf):
    train = ucf101(ucf, split=1, subset="train", clip=ClipSpec(flow_stack=3), image_size=16)
    test = ucf101(ucf, split=1, subset="test", clip=ClipSpec(flow_stack=3), image_size=16)
    assert train.classes == CLASSES
    assert [(v.video_id, v.label) for v in train.videos] == [
        ("v_ApplyEyeMakeup_g01_c01", 0), ("v_HandStandPushups_g01_c01", 1), ("v_YoYo_g01_c01", 2)]
    assert [v.label for v in test.videos] == [0, 1, 2]  # labels from the class folder
    assert [(v.rgb_frames, v.flow_frames) for v in test.videos] == [(12, 11), (9, 9), (22, 21)]
    rgb, flow, label, video_id = train[1][:4]
    assert rgb.shape == (1, 3, 16, 16) and flow.shape == (1, 6, 16, 16)
    assert (label, video_id) == (1, "v_HandStandPushups_g01_c01")


def test_ucf101_class_subsets_by_count_and_name(ucf):
    assert ucf101(ucf, subset="test", selection=Selection(classes=2)).classes == CLASSES[:2]
    subset = ucf101(ucf, subset="test", selection=Selection(classes=["YoYo", "ApplyEyeMakeup"]))
    assert [(v.video_id, v.label) for v in subset.videos] == [("v_ApplyEyeMakeup_g02_c01", 1),
                                                              ("v_YoYo_g02_c01", 0)]
    with pytest.raises(ValueError, match="unknown classes \\['Yoyo'\\]; valid: ApplyEyeMakeup"):
        ucf101(ucf, subset="test", selection=Selection(classes=["Yoyo"]))


def test_ucf101_bad_layouts_fail_at_start_up_naming_the_path(ucf, tmp_path):
    with pytest.raises(FileNotFoundError, match="expected the folder .*nowhere"):
        ucf101(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="UCF101 split files: expected the folder "
                                                ".*empty/ucfTrainTestlist"):
        ucf101(tmp_path / "empty")
    lists = ucf / "ucfTrainTestlist"
    (lists / "trainlist01.txt").write_text("Skiing/v_Skiing_g01_c01.avi 1\r\n")
    with pytest.raises(ValueError, match="trainlist01.txt:1: unknown class 'Skiing'"):
        ucf101(ucf, subset="train")
    (lists / "trainlist01.txt").write_text("YoYo/v_YoYo_g01_c01.avi 1\r\n")
    with pytest.raises(ValueError, match="label 1 is 'ApplyEyeMakeup', but the path says 'YoYo'"):
        ucf101(ucf, subset="train")
    (lists / "trainlist01.txt").write_text("")
    with pytest.raises(ValueError, match="the train split holds no videos"):
        ucf101(ucf, subset="train")
    import shutil
    shutil.rmtree(ucf / "tvl1_flow" / "v")
    with pytest.raises(FileNotFoundError, match="flow v frames: expected the folder "
                                                ".*tvl1_flow/v"):
        ucf101(ucf, subset="test")
    # RGB-only training does not need the flow folders.
    assert ucf101(ucf, subset="test", clip=ClipSpec(modalities=["rgb"]))[0][1] is None


def test_hmdb51_tags_and_class_subset(tmp_path):
    root = tmp_path / "hmdb51"
    lists = root / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True)
    tags = {"brush_hair": [("April_09_brush_hair_u_nm_np1_ba_goo_0", 1),
                           ("Blonde_hair_brush_hair_f_nm_np1_ri_med_1", 2),
                           ("unused_brush_hair_0", 0)],
            "clap": [("#20_Rhythm_clap_u_nm_np1_fr_goo_0", 1), ("clap_test_0", 2)],
            "wave": [("wave_train_0", 1), ("wave_test_0", 2)]}
    for name, entries in tags.items():
        # The official lines end with a space.
        (lists / f"{name}_test_split1.txt").write_text(
            "".join(f"{video}.avi {tag} \n" for video, tag in entries))
        (lists / f"{name}_test_split2.txt").write_text("")
        for video, _ in entries:
            write_video(root / "jpegs_256" / video, root / "tvl1_flow" / "u" / video,
                        root / "tvl1_flow" / "v" / video, 8, 7)
    train = hmdb51(root, split=1, subset="train", clip=ClipSpec(flow_stack=2), image_size=16)
    assert train.classes == ["brush_hair", "clap", "wave"]
    assert [(v.video_id, v.label) for v in train.videos] == [
        ("April_09_brush_hair_u_nm_np1_ba_goo_0", 0), ("#20_Rhythm_clap_u_nm_np1_fr_goo_0", 1),
        ("wave_train_0", 2)]
    test = hmdb51(root, subset="test", selection=Selection(classes=["wave", "clap"]),
                  clip=ClipSpec(flow_stack=2), image_size=16)
    assert [(v.video_id, v.label) for v in test.videos] == [("wave_test_0", 0),
                                                            ("clap_test_0", 1)]
    with pytest.raises(ValueError, match="unknown classes \\['smoke'\\]"):
        hmdb51(root, selection=Selection(classes=["smoke"]))
    (lists / "clap_test_split1.txt").write_text("clap_test_0.avi 3\n")
    with pytest.raises(ValueError, match="clap_test_split1.txt:1: expected '<video>.avi <tag"):
        hmdb51(root)


def test_folder_dataset_with_lists_and_stratified_split(tmp_path):
    root = tmp_path / "own"
    for cls, n in [("fall", 10), ("walk", 20)]:
        for i in range(n):
            video = root / cls / f"clip{i:02d}"
            write_video(video, video / "u", video / "v", 6, 5)
    train = folder(root, subset="train", selection=Selection(val_fraction=0.2), test_fraction=0.1,
                   clip=ClipSpec(flow_stack=2), image_size=16)
    val = folder(root, subset="val", selection=Selection(val_fraction=0.2), test_fraction=0.1,
                 clip=ClipSpec(flow_stack=2), image_size=16)
    test = folder(root, subset="test", selection=Selection(val_fraction=0.2), test_fraction=0.1,
                  clip=ClipSpec(flow_stack=2), image_size=16)
    ids = [{v.video_id for v in d.videos} for d in (train, val, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == 30
    assert [sum(1 for v in d.videos if v.label == 0) for d in (train, val, test)] == [7, 2, 1]
    assert [sum(1 for v in d.videos if v.label == 1) for d in (train, val, test)] == [14, 4, 2]
    balanced = folder(root, subset="train", selection=Selection(val_fraction=0.2, oversample=True),
                      test_fraction=0.1, clip=ClipSpec(flow_stack=2), image_size=16)
    assert sorted(np.bincount(balanced.labels).tolist()) == [14, 14]
    (root / "train.txt").write_text("walk/clip03\nfall/clip01\n")
    listed = folder(root, subset="train", clip=ClipSpec(flow_stack=2), image_size=16)
    assert [(v.video_id, v.label) for v in listed.videos] == [("walk/clip03", 1),
                                                              ("fall/clip01", 0)]
    assert listed[0][1].shape == (1, 4, 16, 16)
    (root / "train.txt").write_text("run/clip01\n")
    with pytest.raises(ValueError, match="train.txt:1: unknown class 'run'; valid: fall, walk"):
        folder(root, subset="train")


def test_ucf101_validation_is_carved_by_group_never_sharing_one_with_training(tmp_path):
    """The clips of a gXX group share actor and scene; the official splits keep groups apart,
    and so does the validation carve-out (stratified by class). 5 groups of 1 to 4 clips."""
    videos, train = {}, []
    for label, cls in enumerate(CLASSES, 1):
        for g in range(1, 6):
            for c in range(1, 2 + (g + label) % 4):
                name = f"v_{cls}_g{g:02d}_c{c:02d}"
                videos[name] = (4, 3)
                train.append(f"{cls}/{name}.avi {label}")
    root = write_ucf101(tmp_path / "ucf", videos, CLASSES, train, [])
    for seed in range(4):
        parts = [ucf101(root, subset=subset, selection=Selection(val_fraction=0.4, seed=seed),
                        clip=ClipSpec(flow_stack=2), image_size=16) for subset in ("train", "val")]
        groups = [{(v.label, v.video_id.split("_")[-2]) for v in part.videos} for part in parts]
        assert not groups[0] & groups[1]
        assert sum(len(p.videos) for p in parts) == len(videos)
        for label in range(3):  # each class gives round(5 * 0.4) = 2 of its 5 groups
            assert sum(1 for c, _ in groups[1] if c == label) == 2
    with pytest.raises(ValueError, match="'v_YoYo_take1' has no group in its name"):
        from fusion.data.splits import ucf101_group
        ucf101_group("v_YoYo_take1")


def test_folder_validation_comes_from_train_txt_only(tmp_path):
    root = tmp_path / "own"
    for cls in ("fall", "walk"):
        for i in range(8):
            video = root / cls / f"clip{i:02d}"
            write_video(video, video / "u", video / "v", 6, 5)
    listed = [f"{c}/clip{i:02d}" for c in ("fall", "walk") for i in range(5)]
    held_out = [f"{c}/clip{i:02d}" for c in ("fall", "walk") for i in range(5, 8)]
    (root / "train.txt").write_text("\n".join(listed) + "\n")
    options = dict(selection=Selection(val_fraction=0.4), clip=ClipSpec(flow_stack=2),
                   image_size=16)
    with pytest.raises(FileNotFoundError, match="test videos are listed too: expected .*test.txt"):
        folder(root, subset="test", **options)
    (root / "test.txt").write_text("\n".join(held_out) + "\n")
    train, val, test = (folder(root, subset=s, **options) for s in ("train", "val", "test"))
    ids = [{v.video_id for v in d.videos} for d in (train, val, test)]
    assert ids[0] | ids[1] == set(listed) and not ids[0] & ids[1]
    assert [sum(v.label == k for v in val.videos) for k in (0, 1)] == [2, 2]
    assert ids[2] == set(held_out)
    (root / "val.txt").write_text("walk/clip07\n")
    assert [v.video_id for v in folder(root, subset="val", **options).videos] == ["walk/clip07"]
    assert {v.video_id for v in folder(root, subset="train", **options).videos} == set(listed)


def test_stratified_split_and_oversampling_helpers():
    labels = [0] * 20 + [1] * 10 + [2] * 30
    train, val, test = stratified_split(labels, val_fraction=0.1, test_fraction=0.1, seed=3)
    assert sorted(train + val + test) == list(range(60))
    assert [sum(labels[i] == c for i in test) for c in range(3)] == [2, 1, 3]
    assert [sum(labels[i] == c for i in val) for c in range(3)] == [2, 1, 3]
    assert stratified_split(labels, val_fraction=0.1, seed=3) == \
        stratified_split(labels, val_fraction=0.1, seed=3)
    items = list(range(60))
    balanced = oversample(items, labels, seed=0)
    counts = np.bincount([labels[i] for i in balanced])
    assert counts.tolist() == [30, 30, 30] and set(balanced) == set(items)


def test_eval_sampling_is_deterministic_and_covers_the_video():
    starts = segment_starts(100, 5, train=False)
    assert starts == segment_starts(100, 5, train=False) == [10, 30, 50, 70, 90]
    torch.manual_seed(0)
    for _ in range(20):
        train = segment_starts(100, 5, train=True)
        assert all(20 * i <= s < 20 * (i + 1) for i, s in enumerate(train))
    clips = protocol_clip_starts(100, 1, 25)
    assert [c[0] for c in clips] == [int(4 * i + 2) for i in range(25)]
    assert segment_starts(3, 5, train=False) == [0, 0, 1, 2, 2]  # centres 0.3, 0.9, .. 2.7
    assert segment_starts(0, 3, train=True) == [0, 0, 0]


def test_dataset_reads_the_right_frames_and_loops_short_videos(ucf):
    # YoYo g01: 6 RGB frames, 5 flow frames; a stack of 8 must loop.
    data = ucf101(ucf, subset="train", selection=Selection(classes=["YoYo"]),
                  clip=ClipSpec(flow_stack=8), mode="val", image_size=16)
    rgb, flow, _, _ = data[0][:4]
    assert [flow_index(flow[0, 2 * i]) for i in range(8)] == snippet_indices(0, 8, 5) == \
        [0, 1, 2, 3, 4, 0, 1, 2]
    assert [200 - round(flow[0, 2 * i + 1].float().mean().item()) - 1 for i in range(8)] == \
        [0, 1, 2, 3, 4, 0, 1, 2]  # v components in the same order, interleaved u1 v1 u2 v2
    # flow frames 0..7 span RGB frames 0..8, whose centre is frame 4
    assert rgb_index(rgb[0]) == 4
    # A long video: 3 segments at evaluation take the centres, RGB stacks of 2 centred in L=4.
    data = ucf101(ucf, subset="test", selection=Selection(classes=["YoYo"]),
                  clip=ClipSpec(segments=3, flow_stack=4, rgb_stack=2), image_size=16)
    rgb, flow, _, _ = data[0][:4]  # 22 RGB, 21 flow frames: 18 positions
    assert [flow_index(flow[t, 0]) for t in range(3)] == [3, 9, 15]
    assert [[rgb_index(rgb[t, 3 * i:3 * i + 3]) for i in range(2)] for t in range(3)] == \
        [[4, 5], [10, 11], [16, 17]]


def test_rgb_frames_sit_at_the_centre_of_the_flow_span():
    """Flow frames s..s+L-1 are the motion across RGB frames s..s+L, whose centre is s + L/2
    (docs/design.md §4): the RGB stack's centre is there, within half a frame when parities
    differ."""
    for flow_stack in range(1, 12):
        for rgb_stack in range(1, 4):
            rgb, flow = snippet_frames([7], flow_stack=flow_stack, rgb_stack=rgb_stack,
                                       flow_frames=100, rgb_frames=101, use_flow=True,
                                       use_rgb=True)
            assert flow == list(range(7, 7 + flow_stack))
            assert rgb == list(range(rgb[0], rgb[0] + rgb_stack))
            assert abs(sum(rgb) / rgb_stack - (7 + flow_stack / 2)) <= 0.5
    # the hand-worked case of the issue: L = 10 puts the single RGB frame at s + 5
    assert snippet_frames([0], flow_stack=10, rgb_stack=1, flow_frames=50, rgb_frames=51,
                          use_flow=True, use_rgb=True)[0] == [5]


def test_rgb_stream_beside_a_difference_stream_sees_the_same_centred_frames():
    """The clip carries extra RGB frames for the difference stream; the RGB stream's share of
    them (the model's `centre_frames`) is exactly what it would read alone."""
    from fusion.config import Config
    from fusion.model import centre_frames
    for flow_stack in range(1, 11):
        for rgb_stack in (1, 2, 3):
            for diff_stack in range(1, 7):
                config = Config(flow_stack=flow_stack, rgb_stack=rgb_stack, diff="resnet18",
                                diff_stack=diff_stack)
                carried = config.rgb_frames
                assert carried >= max(rgb_stack, diff_stack + 1)
                options = dict(flow_stack=flow_stack, flow_frames=100, rgb_frames=101,
                               use_flow=True, use_rgb=True)
                wide = snippet_frames([3], rgb_stack=carried, **options)[0]
                alone = snippet_frames([3], rgb_stack=rgb_stack, **options)[0]
                x = torch.tensor(wide).repeat_interleave(3).view(1, 1, -1, 1, 1)
                taken = centre_frames(x, 3 * rgb_stack)[0, 0, ::3, 0, 0].tolist()
                assert taken == alone, (flow_stack, rgb_stack, diff_stack)


@pytest.mark.parametrize("policy, expected", [("first", 0), ("first-middle", 5), ("middle", 11),
                                              ("middle-last", 16), ("last", 21)])
def test_single_frame_policies(ucf, policy, expected):
    data = ucf101(ucf, subset="test", selection=Selection(classes=["YoYo"]),
                  clip=ClipSpec(modalities=["rgb"], frame_policy=policy), image_size=16)
    # 22 frames: round(fraction * 21), ties to even; the middle is 22 // 2 (seed 001's rule)
    assert rgb_index(data[0][0][0]) == expected


def test_test_protocol_returns_clips_times_crops_views(ucf):
    data = ucf101(ucf, subset="test", selection=Selection(classes=["YoYo"]), mode="test",
                  clip=ClipSpec(flow_stack=2, num_clips=5), crops="ten", image_size=16)
    rgb, flow, _, _ = data[0][:4]
    assert rgb.shape == (50, 1, 3, 16, 16) and flow.shape == (50, 1, 4, 16, 16)
    # View-major: the 5 clips of the first crop come first, uniformly spaced over 20 positions.
    assert [flow_index(flow[k, 0, 0]) for k in range(5)] == [2, 6, 10, 14, 18]
    # Views 5..9 are mirrored: u inverted, v not.
    assert round(flow[25, 0, 0].float().mean().item()) == 255 - (100 + 3)
    assert round(flow[25, 0, 1].float().mean().item()) == 200 - 3


def test_corrupt_and_missing_frames(ucf):
    bad = ucf / "jpegs_256" / "v_YoYo_g02_c01" / "frame000010.jpg"
    bad.write_bytes(b"\xff\xd8 this is not a jpeg")
    data = ucf101(ucf, subset="test", selection=Selection(classes=["YoYo"]),
                  clip=ClipSpec(modalities=["rgb"], segments=22), image_size=16)
    with pytest.raises(FrameError, match=r"cannot read frame .*frame000010.jpg of video "
                                         r"v_YoYo_g02_c01"):
        data[0]
    skipping = ucf101(ucf, subset="test", clip=ClipSpec(modalities=["rgb"], segments=22),
                      image_size=16, on_bad="skip")
    batch = collate_clips([skipping[i] for i in range(len(skipping))])
    assert skipping.skipped == 1
    assert [s.video_id for s in batch.skipped] == ["v_YoYo_g02_c01"]
    # the batch keeps its size: the next readable video (wrapping round) stands in for the
    # unreadable one, and counts in no metric
    assert batch.video_id == ["v_ApplyEyeMakeup_g02_c01", "v_HandStandPushups_g02_c01",
                              "v_ApplyEyeMakeup_g02_c01"]
    assert batch.rgb.shape[0] == 3 and batch.label.tolist() == [0, 1, 0]
    assert batch.counted.tolist() == [True, True, False]
    os.remove(ucf / "jpegs_256" / "v_ApplyEyeMakeup_g02_c01" / "frame000003.jpg")
    data = ucf101(ucf, subset="test", selection=Selection(classes=["ApplyEyeMakeup"]),
                  clip=ClipSpec(modalities=["rgb"], segments=11), image_size=16)
    with pytest.raises(FrameError, match="frame000003.jpg of video v_ApplyEyeMakeup_g02_c01"):
        data[0]
    import shutil
    shutil.rmtree(ucf / "tvl1_flow" / "u" / "v_YoYo_g02_c01")
    with pytest.raises(FrameError, match="video v_YoYo_g02_c01: expected its flow in "
                                         ".*tvl1_flow/u/v_YoYo_g02_c01"):
        ucf101(ucf, subset="test")
    assert ucf101(ucf, subset="test", on_bad="skip").skipped == 1


def test_frame_index_is_cached_as_json_and_rebuilt_when_a_folder_changes(ucf):
    ucf101(ucf, subset="test")
    index = json.loads((ucf / INDEX_NAME).read_text())
    key = os.path.join("jpegs_256", "v_YoYo_g02_c01", "frame{:06d}.jpg")
    assert index["folders"][key][1] == 22
    write_frame(ucf / "jpegs_256" / "v_YoYo_g02_c01" / "frame000023.jpg", 0, 3)
    assert ucf101(ucf, subset="test").videos[2].rgb_frames == 23
    assert json.loads((ucf / INDEX_NAME).read_text())["folders"][key][1] == 23


def pattern(n, channels):
    """Frames that all show the same asymmetric gradient."""
    x = torch.arange(40).view(1, 1, 1, 40).expand(n, channels, 30, 40)
    y = torch.arange(30).view(1, 1, 30, 1)
    return (x * 5 + y).to(torch.uint8)


def test_train_crops_and_flips_are_identical_across_frames_and_modalities():
    torch.manual_seed(0)
    transform = TrainTransform(16)
    flips = set()
    for _ in range(30):
        rgb, flow = transform(pattern(4, 3), pattern(4, 2))
        reference = rgb[0, 0]
        assert (rgb == reference).all()  # every frame and channel: the same crop
        assert (flow[:, 1] == reference).all()  # v: the same crop, unchanged values
        flipped = bool((flow[:, 0] == 255 - reference).all())
        assert flipped or (flow[:, 0] == reference).all()
        flips.add(flipped)
        if flipped:  # the image itself is mirrored: the gradient now falls from left to right
            assert reference[0, 0] > reference[0, -1]
    assert flips == {True, False}


def test_flip_inverts_u_and_only_u():
    flow = torch.randint(0, 256, (3, 2, 5, 7), dtype=torch.uint8)
    flipped = flip_flow(flow)
    assert torch.equal(flipped[:, 0], 255 - flow[:, 0].flip(-1))
    assert torch.equal(flipped[:, 1], flow[:, 1].flip(-1))


def test_seed001_augments_the_whole_rgb_frame_with_the_notebooks_list_and_leaves_flow():
    """augment seed001 + augment_flow none: the RGB frames get exactly torchvision's v2 list
    of the notebooks (same random draws) on the whole frame, no crop; flow is only resized."""
    import torchvision.transforms.v2 as v2
    transform = TrainTransform(16, rgb="seed001", flow="none")
    reference = v2.Compose([v2.Resize([16, 16], antialias=True),
                            v2.ColorJitter(0.4, 0.4, 0.4, 0.3), v2.RandomGrayscale(0.1),
                            v2.RandomAutocontrast(p=0.1), v2.RandomAdjustSharpness(2, p=0.1),
                            v2.RandomHorizontalFlip(0.25), v2.RandomPerspective(0.3, p=0.1),
                            v2.RandomRotation(15)])
    changed = 0
    for seed in range(20):
        torch.manual_seed(seed)
        rgb, flow = transform(pattern(2, 3), pattern(2, 2))
        torch.manual_seed(seed)
        assert torch.equal(rgb, reference(pattern(2, 3)))
        assert torch.equal(rgb[0], rgb[1])  # the same draws for every frame of the sample
        assert torch.equal(flow, F.resize(pattern(2, 2), [16, 16], antialias=True))
        changed += not torch.equal(rgb, F.resize(pattern(2, 3), [16, 16], antialias=True))
    assert changed == 20  # the jitter always changes something


def test_none_is_the_whole_frame_and_tsn_flow_may_go_alone():
    torch.manual_seed(0)
    rgb, flow = TrainTransform(16, rgb="none", flow="none")(pattern(2, 3), pattern(2, 2))
    assert torch.equal(rgb, F.resize(pattern(2, 3), [16, 16], antialias=True))
    assert torch.equal(flow, F.resize(pattern(2, 2), [16, 16], antialias=True))
    flips = set()
    for _ in range(20):
        rgb, flow = TrainTransform(16, rgb="none", flow="tsn")(pattern(1, 3), pattern(1, 2))
        assert torch.equal(rgb, F.resize(pattern(1, 3), [16, 16], antialias=True))
        flips.add(bool(flow[0, 1, 0, 0] > flow[0, 1, 0, -1]))
    assert flips == {True, False}
    with pytest.raises(ValueError, match="unknown augment_flow 'seed001'"):
        TrainTransform(16, flow="seed001")


def test_eval_crops():
    rgb = pattern(2, 3)
    assert EvalTransform(16, "center")(rgb, None)[0].shape == (1, 2, 3, 16, 16)
    three = EvalTransform(16, "three")(rgb, None)[0]
    assert three.shape == (3, 2, 3, 16, 16)
    assert three[0, 0, 0, 0, 0] < three[2, 0, 0, 0, 0]  # left, centre, right
    full = EvalTransform(16, "full")(rgb, pattern(2, 2))
    assert torch.equal(full[0][0], F.resize(rgb, [16, 16], antialias=True))  # columns 0 .. 39
    assert full[1].shape == (1, 2, 2, 16, 16)
    with pytest.raises(ValueError, match="unknown crops 'five'"):
        EvalTransform(16, "five")


def test_quantisation_round_trip_and_clip():
    flow = np.linspace(-20, 20, 1001, dtype=np.float32)
    q = quantize(flow)
    assert q.dtype == np.uint8 and q[0] == 0 and q[-1] == 255 and quantize(np.zeros(1))[0] == 128
    assert np.abs(dequantize(q) - flow).max() <= 20 / 255 + 1e-5  # half a grey level
    assert (quantize(np.array([-50.0, 50.0])) == [0, 255]).all()
    # 255 - q mirrors the flow, which is why a flip may invert u on the stored values.
    assert np.abs(dequantize(255 - q) + flow).max() <= 2 * 20 / 255


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), num_classes=4, groups=3,
                          clips_per_group=3, seed=1)


def test_synthetic_labels_need_both_appearance_and_motion(synthetic):
    train = ucf101(synthetic, subset="train")
    test = ucf101(synthetic, subset="test")
    assert train.classes == ["RedUp", "RedDown", "BlueUp", "BlueDown"]
    assert {v.video_id for v in train.videos}.isdisjoint(v.video_id for v in test.videos)
    seen = []
    for dataset in (train, test):
        for video in dataset.videos:
            # Whole frames, as written: the first RGB frame and the first flow frame.
            colour, direction = split_class(dataset.classes[video.label])
            frame = read_frames(video.rgb_dir, [0], gray=False, video_id="")[0].float()
            flow = read_frames(video.flow_dirs, [0], gray=True, video_id="")[0]
            label = video.label
            red, blue = (frame[0] - frame[2] > 100).sum(), (frame[2] - frame[0] > 100).sum()
            seen_colour = "Red" if red > blue else "Blue"
            motion = dequantize(flow.numpy())  # 2 x H x W, pixels
            moving = np.hypot(motion[0], motion[1]) > 1.5
            mean = motion[:, moving].mean(axis=1)
            seen_direction = "Down" if mean[1] > 0 else "Up"
            assert (seen_colour, seen_direction) == (colour, direction)
            assert abs(mean[1]) > 2.5 and abs(mean[0]) < 0.5
            square = (frame[0] - frame[2]).abs() > 100
            y = torch.nonzero(square)[:, 0].float().mean().item()
            seen.append((seen_colour, seen_direction, label, y))
    # A single cue is worth at most half: each colour (motion) is shared by two classes.
    for cue in (0, 1):
        best = sum(max(sum(1 for s in seen if s[cue] == value and s[2] == label)
                       for label in range(4)) for value in {s[cue] for s in seen})
        assert best / len(seen) <= 0.5 + 1e-9
    assert len({(s[0], s[1]) for s in seen}) == 4  # both cues together: every class
    # Where the square is does not give away where it goes: both motions fill the frame.
    for direction in ("Up", "Down"):
        ys = [s[3] for s in seen if s[1] == direction]
        assert min(ys) < 36 < max(ys)
    assert list(DIRECTIONS)[:2] == ["Up", "Down"] and set(COLOURS) == {"Red", "Blue"}


def test_dataloader_with_two_workers_over_synthetic(synthetic):
    data = ucf101(synthetic, subset="train", clip=ClipSpec(segments=2, flow_stack=5), image_size=64)
    loader = DataLoader(data, batch_size=4, shuffle=True, num_workers=2,
                        collate_fn=collate_clips, persistent_workers=False)
    batches = list(loader)
    assert sum(len(b.label) for b in batches) == len(data) == 24
    first = batches[0]
    assert first.rgb.shape == (4, 2, 3, 64, 64) and first.rgb.dtype == torch.uint8
    assert first.flow.shape == (4, 2, 10, 64, 64)
    assert first.label.dtype == torch.long and first.label.max() < 4
    assert first.skipped == []


def test_class_folder_datasets_need_class_folders(tmp_path):
    from fusion.data.images import images
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="one folder of videos per class in .*empty"):
        folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="one folder of images per class in .*empty"):
        images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="image folder root: expected the folder"):
        images(tmp_path / "missing")
