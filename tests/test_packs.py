"""The packed frame store: a tar per video, read as the loose files are (docs/design.md §8).

Every layout is written loose, packed with `pack_tree` (what scripts/pack_frames.py runs), and
read both ways: the samples must be the same bit for bit, the errors the same errors."""
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fusion.build import build_dataset
from fusion.config import Config
from fusion.data import packs, stores
from fusion.data.device_decode import decode_batch
from fusion.data.extract import Execution, extract_all
from fusion.data.imagefiles import write_png
from fusion.data.index import FrameIndex
from fusion.data.jobs import Settings
from fusion.data.loader import FrameError, SeededSampler, collate_clips
from fusion.data.pack_index import INDEX_FILE, load_pack_index
from fusion.data.packing import pack_tree, verify_pack
from fusion.data.rawframes import rawframes
from fusion.data.sampling import ClipSpec
from fusion.data.splits import Selection, folder, hmdb51, ucf101
from fusion.data.stores import open_store
from fusion.data.transforms import TrainTransform
from fusion.benchmark import write_videos
from tests.fakes import write_ucf101, write_video
from tests.test_rawframes import write_rawframes


def texture(root):
    """Every JPEG of a tree rewritten with random pixels (of its size and mode), so that crops,
    flips and resizes all show in the samples."""
    rng = np.random.default_rng(0)
    for path in sorted(root.rglob("*.jpg")):
        with Image.open(path) as image:
            mode, size = image.mode, image.size
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        Image.fromarray(rng.integers(0, 256, shape).astype(np.uint8)).save(path, quality=90)


def ucf_tree(root, colour_flow=False):
    """Classes A, B with two groups each (frame counts 5 to 20, so stacks loop), flow one
    frame shorter; and with `colour_flow` PNG colour flow in tvl1_flow/rgb/."""
    counts = {"v_A_g01_c01": 20, "v_A_g02_c01": 5, "v_A_g03_c01": 9, "v_B_g01_c01": 12,
              "v_B_g02_c01": 7, "v_B_g03_c01": 16}
    train = [f"{n[2]}/{n}.avi {1 + 'AB'.index(n[2])}" for n in counts if "_g02_" not in n]
    test = [f"{n[2]}/{n}.avi" for n in counts if "_g02_" in n]
    write_ucf101(root, {n: (k, k - 1) for n, k in counts.items()}, ["A", "B"], train, test)
    if colour_flow:
        rng = np.random.default_rng(1)
        for name, k in counts.items():
            for i in range(1, k):
                path = root / "tvl1_flow" / "rgb" / name / f"frame{i:06d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_png(path, rng.integers(0, 256, (24, 32, 3)).astype(np.uint8))
    texture(root)
    return root


def hmdb_tree(root):
    lists = root / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True)
    for c, name in enumerate(("clap", "wave")):
        entries = [(f"{name}_{k}", 1 if k < 3 else 2) for k in range(4)]
        (lists / f"{name}_test_split1.txt").write_text(
            "".join(f"{v}.avi {tag} \n" for v, tag in entries))
        for k, (video, _) in enumerate(entries):
            write_video(root / "jpegs_256" / video, root / "tvl1_flow" / "u" / video,
                        root / "tvl1_flow" / "v" / video, 6 + 3 * k + c, 5 + 3 * k + c)
    texture(root)
    return root


def folder_tree(root):
    for c, name in enumerate(("fall", "walk")):
        for k in range(5):
            video = root / name / f"clip{k:02d}"
            write_video(video, video / "u", video / "v", 6 + k + c, 5 + k + c)
    texture(root)
    return root


LISTS = {"train": "train.txt", "test": "test.txt"}
READERS = {  # layout -> (tree, reader, its arguments)
    "ucf101": (ucf_tree, ucf101, dict(selection=Selection(val_fraction=0.5))),
    "hmdb51": (hmdb_tree, hmdb51, dict(selection=Selection(val_fraction=0.34))),
    "folder": (folder_tree, folder, dict(selection=Selection(val_fraction=0.25),
                                         test_fraction=0.2)),
    "rawframes": (lambda r: texture(write_rawframes(r, flow_from=0, frames=9)) or r,
                  rawframes, dict(lists=LISTS, selection=Selection(val_fraction=0.34))),
}


def samples(dataset, seed=11):
    """Every item, each with its own seed as SeededSampler gives them."""
    return [dataset[(seed + 1000 * i, i, True)] for i in range(len(dataset))]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.label, x.video_id, x.counted) == (y.label, y.video_id, y.counted)
        for u, v in ((x.rgb, y.rgb), (x.flow, y.flow)):
            assert (u is None) == (v is None) and (u is None or torch.equal(u, v))


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Each layout loose, and packed by pack_tree."""
    made = {}
    for layout, (write, _, _) in READERS.items():
        base = tmp_path_factory.mktemp(layout)
        loose = write(base / "loose")
        summary = pack_tree(loose, base / "packed", progress=False)
        assert not summary.failed and summary.packed
        made[layout] = loose, base / "packed"
    return made


@pytest.mark.parametrize("layout", list(READERS))
def test_packed_roots_give_the_loose_samples_in_every_mode(trees, layout):
    loose, packed = trees[layout]
    _, reader, options = READERS[layout]
    assert open_store(packed).kind == "packed" and open_store(loose).kind == "loose"
    # one file per video (plus the lists) instead of one per frame
    assert sum(1 for p in (packed / "packs").rglob("*.tar")) < \
        sum(1 for p in loose.rglob("*.jpg")) / 10
    clip = ClipSpec(segments=2, flow_stack=3, num_clips=2)  # clips: the test protocol's
    for subset, mode, extra in [("train", "train", {}), ("val", "val", {}),
                                ("test", "test", dict(crops="three"))]:
        kwargs = dict(subset=subset, mode=mode, clip=clip, image_size=16, **options, **extra)
        a, b = reader(loose, **kwargs), reader(packed, frames="packed", **kwargs)
        assert [v.video_id for v in a.videos] == [v.video_id for v in b.videos]
        assert [(v.rgb_frames, v.flow_frames, v.rgb_first, v.flow_first) for v in a.videos] == \
            [(v.rgb_frames, v.flow_frames, v.rgb_first, v.flow_first) for v in b.videos]
        assert_same(samples(a), samples(b))
        assert a.notes == b.notes
    # the packed root says nothing into itself: no frame-index cache is written there
    assert not any(p.name == ".fusion_frame_index.json" for p in packed.iterdir())


def test_slow_header_reads_overlap_in_threads_to_the_same_dataset(trees, monkeypatch):
    loose, packed = trees["ucf101"]
    kwargs = dict(subset="train", clip=ClipSpec(segments=2, flow_stack=3), image_size=16)
    serial = ucf101(packed, **kwargs)
    monkeypatch.setattr(stores, "load_pack_index", lambda root: None)  # the headers are read
    monkeypatch.setattr(stores, "PROBE", 1)
    monkeypatch.setattr(stores, "SLOW_READ", 0.0)  # every read counts as slow
    store = open_store(packed)
    store.prefetch(["v_A_g01_c01", "v_b_G03_C01", "v_B_g01_c01", "missing"], by_name=True)
    assert sorted(Path(p).name for p in store._headers) == \
        ["v_A_g01_c01.tar", "v_B_g01_c01.tar", "v_B_g03_c01.tar"]
    assert_same(samples(serial), samples(ucf101(packed, **kwargs)))


def test_colour_flow_pngs_pack_and_read_the_same(tmp_path):
    loose = ucf_tree(tmp_path / "loose", colour_flow=True)
    pack_tree(loose, tmp_path / "packed", progress=False)
    names = tarfile.open(tmp_path / "packed" / "packs" / "v_A_g02_c01.tar").getnames()
    assert "tvl1_flow/rgb/v_A_g02_c01/frame000004.png" in names
    kwargs = dict(subset="train", flow_format="rgb", clip=ClipSpec(segments=2, flow_stack=2),
                  image_size=16, transform=TrainTransform(16, flow="none"))
    assert_same(samples(ucf101(loose, **kwargs)), samples(ucf101(tmp_path / "packed", **kwargs)))


def test_device_decoding_reads_the_same_bytes_from_packs(trees):
    loose, packed = trees["ucf101"]
    kwargs = dict(subset="train", clip=ClipSpec(segments=2, flow_stack=3), image_size=16,
                  decode="device")
    a, b = samples(ucf101(loose, **kwargs)), samples(ucf101(packed, **kwargs))
    for x, y in zip(a, b):
        for u, v in ((x.rgb, y.rgb), (x.flow, y.flow)):
            assert torch.equal(u.data, v.data) and (u.order, u.size) == (v.order, v.size)
            assert all(".tar/" in name for name in v.names)
        assert x.view == y.view
    for x, y in zip(decode_batch(collate_clips(a), "cpu")[:2],
                    decode_batch(collate_clips(b), "cpu")[:2]):
        assert torch.equal(x, y)


def test_build_dataset_detects_the_store_and_frames_packed_insists(trees):
    loose, packed = trees["ucf101"]
    config = Config(dataset="ucf101", data_root=str(packed), image_size=16, flow_stack=3,
                    val_fraction=0.5).validate()
    a = build_dataset(Config(**{**config.to_dict(), "data_root": str(loose)}), "val", "val")
    b = build_dataset(config, "val", "val")  # frames = auto: the packs
    assert_same(samples(a), samples(b))
    build_dataset(Config(**{**config.to_dict(), "frames": "packed"}), "test", "test")
    with pytest.raises(FileNotFoundError, match="frames = 'packed': expected the packs of "
                                                ".*loose in the folder .*loose/packs"):
        build_dataset(Config(**{**config.to_dict(), "data_root": str(loose),
                                "frames": "packed"}), "test", "test")
    with pytest.raises(FileNotFoundError, match="RGB frames: expected the folder .*jpegs_256"):
        build_dataset(Config(**{**config.to_dict(), "frames": "loose"}), "test", "test")
    with pytest.raises(ValueError, match="config key frames: 'tar' is not one of auto, loose, packed"):
        Config(frames="tar").validate()


def test_a_pack_is_a_plain_tar_that_gives_the_loose_files_back(trees, tmp_path):
    loose, packed = trees["folder"]
    with tarfile.open(packed / "packs" / "walk" / "clip02.tar") as tar:
        members = tar.getnames()
        assert members[0] == ".pack-index/walk/clip02.jsonl"
        assert members[1:5] == ["walk/clip02/frame000001.jpg", "walk/clip02/u/frame000001.jpg",
                                "walk/clip02/v/frame000001.jpg", "walk/clip02/frame000002.jpg"]
        assert "walk/clip02/u/frame000007.jpg" in members
    if shutil.which("tar") is None:
        pytest.skip("no tar command here")
    out = tmp_path / "unpacked"
    out.mkdir()
    for pack in sorted((packed / "packs").rglob("*.tar")):
        subprocess.run(["tar", "-xf", str(pack), "-C", str(out), "--exclude=.pack-index"],
                       check=True)
    frames = sorted(p.relative_to(loose) for p in loose.rglob("*.jpg"))
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == frames
    assert all((loose / p).read_bytes() == (out / p).read_bytes() for p in frames)


def test_the_index_counts_as_a_loose_folder_does(tmp_path):
    """Runs of numbered names, gaps, unpadded numbers, other files, and a first index line
    longer than the first read."""
    folder_path = tmp_path / "loose" / "odd"
    folder_path.mkdir(parents=True)
    names = ([f"frame{k:06d}.jpg" for k in (1, 2, 3, 5, 6, 9)] + [f"img{k}.jpg" for k in
             range(1, 13)] + ["Thumbs.db", "frame.jpg", "x{1}.jpg"]
             + [f"other_{chr(97 + k % 26)}{k // 26}x.png" for k in range(400)])
    for name in names:
        (folder_path / name).write_bytes(name.encode())
    pack = tmp_path / "odd.tar"
    packs.write_pack(pack, [(f"odd/{n}", folder_path / n) for n in names], "odd")
    header = packs.read_header(pack)
    assert header.size == pack.stat().st_size
    index = FrameIndex(tmp_path / "loose")
    for template in ("frame{:06d}.jpg", "img{:d}.jpg", "frame0000{:02d}.jpg", "img1{:d}.jpg",
                     "{:d}.db", "other_{:d}x.png", "x{:d}.jpg"):
        assert header.count("odd", template) == index.count(folder_path, template), template
    assert header.has("odd", "frame000005.jpg") and not header.has("odd", "frame000004.jpg")
    assert header.has("odd", "img10.jpg") and header.has("odd", "Thumbs.db")
    assert sorted(header.names("odd")) == sorted(names)
    with packs.PackReader(pack) as r:
        assert all(r.read(f"odd/{n}") == n.encode() for n in names)


def test_verify_catches_a_changed_byte_and_a_missing_file(trees, tmp_path, load_script, capsys):
    loose, _ = trees["ucf101"]
    src = shutil.copytree(loose, tmp_path / "loose")
    dst = tmp_path / "packed"
    assert load_script("pack_frames").main([str(src), str(dst), "--verify", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "6 videos packed" in out and "verified 6 packs against the loose files: 0 differ" \
        in out and "copied beside the packs: ucfTrainTestlist" in out
    assert sorted(load_pack_index(dst).packs) == sorted(p.name for p in (src / "jpegs_256").iterdir())
    frame = src / "tvl1_flow" / "v" / "v_B_g01_c01" / "frame000004.jpg"
    data = bytearray(frame.read_bytes())
    data[len(data) // 2] ^= 1
    frame.write_bytes(bytes(data))
    (src / "jpegs_256" / "v_A_g03_c01" / "frame000002.jpg").unlink()
    assert load_script("pack_frames").main([str(src), str(dst), "--verify", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "0 videos packed" in out and "6 already packed and skipped" in out
    assert "verified 6 packs against the loose files: 2 differ" in out
    assert "differs: v_B_g01_c01: tvl1_flow/v/v_B_g01_c01/frame000004.jpg: its bytes in " \
           f"{dst}/packs/v_B_g01_c01.tar differ from {frame}" in out
    assert "differs: v_A_g03_c01: jpegs_256/v_A_g03_c01/frame000002.jpg: in " in out


def test_a_pack_killed_mid_write_or_cut_short_is_redone(trees, tmp_path, load_script, capsys):
    loose, _ = trees["ucf101"]
    dst = tmp_path / "packed"
    pack_tree(loose, dst, progress=False)
    killed = dst / "packs" / "v_A_g01_c01.tar"
    data = killed.read_bytes()
    killed.unlink()
    (dst / "packs" / "v_A_g01_c01.tar.partial").write_bytes(data[:len(data) // 2])
    cut = dst / "packs" / "v_B_g01_c01.tar"
    cut.write_bytes(cut.read_bytes()[:-3000])  # a copy that stopped
    assert not packs.complete(cut) and packs.complete(dst / "packs" / "v_B_g02_c01.tar")
    # the store never takes a partial pack for a video
    assert open_store(dst).pack_named("v_A_g01_c01") is None
    assert load_script("pack_frames").main([str(loose), str(dst), "--workers", "2",
                                            "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 videos packed" in out and "1 of them redone" in out and \
        "4 already packed and skipped" in out
    assert packs.read_header(killed).size == len(data) == killed.stat().st_size
    assert load_pack_index(dst).header("v_A_g01_c01").size == len(data)  # the resumed run's
    assert not (dst / "packs" / "v_A_g01_c01.tar.partial").exists()
    assert verify_pack(cut, [(n, loose / n) for n in sorted(
        str(p.relative_to(loose)) for d in ("jpegs_256", "tvl1_flow/u", "tvl1_flow/v")
        for p in (loose / d / "v_B_g01_c01").iterdir())]) == []
    # a writer that fails leaves no pack and no partial file
    src = tmp_path / "gone.jpg"
    with pytest.raises(FileNotFoundError):
        packs.write_pack(tmp_path / "x.tar", [("a/gone.jpg", src)], "x")
    assert not list(tmp_path.glob("x.tar*"))


def test_shards_share_the_videos(trees, tmp_path):
    loose, _ = trees["ucf101"]
    dst = tmp_path / "packed"
    first = pack_tree(loose, dst, shard=(1, 2), progress=False)
    second = pack_tree(loose, dst, shard=(2, 2), progress=False)
    assert len(first.packed) == len(second.packed) == 3
    assert not set(first.packed) & set(second.packed)
    with pytest.raises(ValueError, match="outside the loose root"):
        pack_tree(loose, loose / "packed", progress=False)


def test_damaged_packs_are_named_errors_and_skipped_on_request(trees, tmp_path):
    loose, _ = trees["ucf101"]
    src = shutil.copytree(loose, tmp_path / "loose")
    (src / "jpegs_256" / "v_A_g02_c01" / "frame000003.jpg").unlink()  # a missing frame
    for frame in (src / "jpegs_256" / "v_B_g02_c01").iterdir():  # members that are no JPEGs
        frame.write_bytes(b"not a JPEG")
    dst = tmp_path / "packed"
    pack_tree(src, dst, progress=False)
    cut = dst / "packs" / "v_A_g03_c01.tar"
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 4])  # RGB frames 7 on are gone
    packs.close_all()
    kwargs = dict(clip=ClipSpec(modalities=["rgb"], segments=5), image_size=16)
    test = ucf101(dst, subset="test", **kwargs)
    with pytest.raises(FrameError, match=r"cannot read frame .*packed/packs/v_A_g02_c01\.tar/"
                                         r"jpegs_256/v_A_g02_c01/frame000003\.jpg of video "
                                         r"v_A_g02_c01: no file .*frame000003\.jpg in the pack"):
        test[0]  # 4 files (1, 2, 4, 5) count as frames 1 to 4, as loose ones do
    with pytest.raises(FrameError, match=r"packs/v_B_g02_c01\.tar/jpegs_256/v_B_g02_c01/"
                                         r"frame00000\d\.jpg of video v_B_g02_c01: not a "
                                         r"decodable image"):
        test[1]
    train = ucf101(dst, subset="train", **kwargs)
    cut_at = [v.video_id for v in train.videos].index("v_A_g03_c01")
    with pytest.raises(FrameError, match=r"packs/v_A_g03_c01\.tar/jpegs_256/v_A_g03_c01/"
                                         r"frame0000\d\d\.jpg of video v_A_g03_c01: the pack is "
                                         r"truncated"):
        train[cut_at]
    skipping = ucf101(dst, subset="train", on_bad="skip", **kwargs)
    batch = collate_clips(samples(skipping))
    assert [s.video_id for s in batch.skipped] == ["v_A_g03_c01"] and skipping.skipped == 1
    # the loose root with the same damage fails alike
    with pytest.raises(FrameError, match="frame000003.jpg of video v_A_g02_c01: No such file"):
        ucf101(src, subset="test", **kwargs)[0]
    # a pack overwritten in place (not renamed: the root's index of the packs stays current)
    # is named when read; without that index, already at start-up
    (dst / "packs" / "v_B_g01_c01.tar").write_bytes(b"\0" * 2048)
    packs.close_all()
    indexed = ucf101(dst, subset="train", **kwargs)
    with pytest.raises(FrameError, match=r"packs/v_B_g01_c01\.tar/jpegs_256/v_B_g01_c01/"
                                         r"frame0000\d\d\.jpg of video v_B_g01_c01: .*not a "
                                         r"frame pack"):
        indexed[[v.video_id for v in indexed.videos].index("v_B_g01_c01")]
    (dst / INDEX_FILE).unlink()
    with pytest.raises(FrameError, match=r"video v_B_g01_c01: cannot read the pack "
                                         r".*v_B_g01_c01\.tar: not a frame pack"):
        ucf101(dst, subset="train", **kwargs)
    assert ucf101(dst, subset="train", on_bad="skip", **kwargs).skipped == 1


def test_three_workers_read_one_pack_at_once(trees):
    _, packed = trees["ucf101"]
    data = ucf101(packed, subset="train", clip=ClipSpec(segments=3, flow_stack=3), image_size=16)
    data.videos = [data.videos[0]] * 12  # every item from one pack
    data[0]  # opened in this process before the workers fork
    assert packs.open_count() >= 1

    def batches(workers):
        loader = DataLoader(data, batch_size=2, num_workers=workers, collate_fn=collate_clips,
                            sampler=SeededSampler(len(data), shuffle=True, seed=3))
        return list(loader)
    for a, b in zip(batches(0), batches(3)):
        assert torch.equal(a.rgb, b.rgb) and torch.equal(a.flow, b.flow)


def test_a_clip_is_one_positioned_read_of_its_pack(trees, monkeypatch):
    """A clip's frames lie together in its pack: read ahead, its 11 files (1 RGB, 5 u, 5 v)
    are one positioned read, not 11 (two where the stack loops past the video's last frame
    to its first), and give the samples that reading file by file gives; nothing read ahead
    is kept once the clip is made."""
    _, packed = trees["ucf101"]
    data = ucf101(packed, subset="train", clip=ClipSpec(segments=1, flow_stack=5),
                  image_size=16)
    packs.close_all()
    data[(5, 0, True)]  # opens the pack
    reads, real = [], os.pread
    monkeypatch.setattr(packs.os, "pread", lambda fd, n, at: reads.append(n) or real(fd, n, at))
    counts, ahead = [], []
    for seed in range(6, 14):
        reads.clear()
        ahead.append(data[(seed, 0, True)])
        counts.append(len(reads))
        assert not packs._ahead.frames
    assert max(counts) <= 2 and counts.count(1) >= len(counts) // 2, counts
    monkeypatch.setattr(packs, "read_ahead", lambda paths: None)  # file by file
    reads.clear()
    one_by_one = [data[(seed, 0, True)] for seed in range(6, 14)]
    assert len(reads) == 11 * len(counts)
    assert_same(ahead, one_by_one)


@pytest.fixture
def bound():
    before = packs.max_open()
    packs.close_all()
    packs.set_max_open(2)
    yield 2
    packs.set_max_open(before)


def open_packs():
    return sum(1 for fd in os.listdir("/proc/self/fd")
               if os.path.realpath(f"/proc/self/fd/{fd}").endswith(".tar"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_open_packs_stay_within_the_bound(trees, bound):
    _, packed = trees["folder"]
    data = folder(packed, subset="train", selection=Selection(val_fraction=0.0), test_fraction=0.0,
                  clip=ClipSpec(flow_stack=2), image_size=16)
    assert len({v.video_id for v in data.videos}) == 10 > bound
    for i in range(len(data)):
        data[i]
        assert packs.open_count() <= bound and open_packs() <= bound
    assert packs.open_count() == bound


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    videos = tmp_path_factory.mktemp("videos")
    write_videos(videos / "Biking", count=2, frames=7, size=(48, 32), source="generated")
    return videos


@pytest.mark.parametrize("method, settings, layout", [
    ("farneback", dict(), "ucf101"),
    ("dis", dict(flow_pairs="spread-around-middle", flow_stack=2, flow_format="rgb"), "folder"),
])
def test_extracting_packed_equals_extracting_then_packing(clips, tmp_path, method, settings,
                                                          layout):
    settings = Settings(method, short_side=32, **settings)
    options = dict(layout=layout, execution=Execution(device="cpu", progress=False))
    extract_all(clips, tmp_path / "loose", settings, **options)
    pack_tree(tmp_path / "loose", tmp_path / "packed", progress=False)
    summary = extract_all(clips, tmp_path / "direct", settings, store="packed", **options)
    assert len(summary.done) == 2 and not summary.failed
    assert not (tmp_path / "direct" / ".partial").exists()
    assert sorted(p.name for p in (tmp_path / "direct").iterdir()) == \
        [INDEX_FILE, "extraction.json", "packs"]
    made = sorted(p.relative_to(tmp_path / "packed")
                  for p in (tmp_path / "packed" / "packs").rglob("*.tar"))
    assert made == sorted(p.relative_to(tmp_path / "direct")
                          for p in (tmp_path / "direct" / "packs").rglob("*.tar")) and made
    for pack in made:
        with tarfile.open(tmp_path / "packed" / pack) as a, \
                tarfile.open(tmp_path / "direct" / pack) as b:
            assert a.getnames() == b.getnames()
            for name in a.getnames():
                assert a.extractfile(name).read() == b.extractfile(name).read(), name
    # done videos are skipped; a loose run into a packed root is refused
    assert extract_all(clips, tmp_path / "direct", settings, store="packed",
                       **options).skipped == ["Biking/v_00", "Biking/v_01"]
    with pytest.raises(ValueError, match="holds packed frames"):
        extract_all(clips, tmp_path / "direct", settings, **options)


class ShiftEstimator:
    """A batched flow method's interface (tvl1-torch, raft: `extract_on_device`), computing
    the mean difference of the two frames as a constant field, in no time."""

    batch_size = 3

    def prepare(self, frame):
        return frame.astype(np.float32)

    def many(self, firsts, seconds):
        return [np.full((*a.shape[:2], 2), (b - a).mean() / 8, np.float32)
                for a, b in zip(firsts, seconds)]


def test_the_device_pipeline_packs_as_it_moves(clips, tmp_path):
    from fusion.data.extract import find_videos
    from fusion.data.pipeline import extract_on_device

    settings = Settings("tvl1-torch", short_side=32)
    jobs = find_videos(clips, ("avi",))
    for store in ("loose", "packed"):
        reports = []
        extract_on_device(jobs, tmp_path / store, settings, ShiftEstimator(), layout="ucf101",
                          strict=False, workers=2, report=lambda *r: reports.append(r[1]),
                          store=store)
        assert reports == ["done", "done"]
    pack_tree(tmp_path / "loose", tmp_path / "packed_after", progress=False)
    for name in ("v_00", "v_01"):
        with tarfile.open(tmp_path / "packed" / "packs" / f"{name}.tar") as a, \
                tarfile.open(tmp_path / "packed_after" / "packs" / f"{name}.tar") as b:
            assert a.getnames() == b.getnames() and len(a.getnames()) == 1 + 7 + 2 * 6
            assert all(a.extractfile(n).read() == b.extractfile(n).read()
                       for n in a.getnames())


def test_extract_frames_script_takes_the_store(clips, tmp_path, load_script, capsys):
    out = tmp_path / "ucf"
    assert load_script("extract_frames").main([
        "--videos", str(clips), "--out", str(out), "--flow", "none", "--short-side", "24",
        "--store", "packed"]) == 0
    assert "2 videos extracted" in capsys.readouterr().out
    assert load_pack_index(out).header("v_00").count("jpegs_256/v_00", "frame{:06d}.jpg") == 7
    assert packs.read_header(out / "packs" / "v_00.tar").count(
        "jpegs_256/v_00", "frame{:06d}.jpg") == 7


def test_the_root_index_of_the_packs_is_trusted_while_current(trees, tmp_path, monkeypatch):
    """The index pack_tree writes gives the datasets the headers' own counts without opening a
    pack; a pack replaced (by a rename, as every writer does) makes it stale, and a damaged one
    is never trusted: the packs are read instead, as without one."""
    loose = shutil.copytree(trees["ucf101"][0], tmp_path / "loose")
    dst = tmp_path / "packed"
    pack_tree(loose, dst, progress=False)
    kwargs = dict(subset="train", clip=ClipSpec(segments=2, flow_stack=3), image_size=16)
    index = (dst / INDEX_FILE).read_bytes()
    with monkeypatch.context() as m:  # trusted: no pack's header read, the same samples
        m.setattr(stores, "_read_header", lambda pack: pytest.fail(f"read {pack}"))
        indexed = ucf101(dst, **kwargs)
    (dst / INDEX_FILE).unlink()
    assert_same(samples(indexed), samples(ucf101(dst, **kwargs)))
    # a damaged, foreign or malformed index is read past
    for text in (index[:len(index) // 2], b"[1, 2]", b"\xff\xfe",
                 index.replace(b'"dirs":', b'"dits":')):
        (dst / INDEX_FILE).write_bytes(text)
        assert_same(samples(indexed), samples(ucf101(dst, **kwargs)))
    # v_A_g01_c01 re-packed with 12 RGB frames instead of 20: the old index is stale
    for frame in sorted((loose / "jpegs_256" / "v_A_g01_c01").iterdir())[12:]:
        frame.unlink()
    (dst / "packs" / "v_A_g01_c01.tar").unlink()
    pack_tree(loose, dst, progress=False)
    assert load_pack_index(dst).header("v_A_g01_c01").count(
        "jpegs_256/v_A_g01_c01", "frame{:06d}.jpg") == 12  # the new run's index
    (dst / INDEX_FILE).write_bytes(index)
    assert load_pack_index(dst) is None
    repacked = ucf101(dst, **kwargs)
    assert {v.video_id: v.rgb_frames for v in repacked.videos}["v_A_g01_c01"] == 12
    assert_same(samples(repacked), samples(ucf101(loose, **kwargs)))
    # a pack renamed into place over another: stale as well
    (dst / "packs" / "v_A_g01_c01.tar").rename(dst / "packs" / "v_A_g03_c01.tar")
    (dst / INDEX_FILE).write_bytes(index)
    assert load_pack_index(dst) is None


def test_the_index_of_a_folder_layout_records_every_class_folder(trees, tmp_path):
    _, packed = trees["folder"]
    dst = shutil.copytree(packed, tmp_path / "packed")  # folder mtimes kept, as cp -a keeps them
    index = load_pack_index(dst)
    assert set(index.folders) == {"", "fall", "walk"} and len(index.packs) == 10
    kwargs = dict(subset="train", clip=ClipSpec(segments=2, flow_stack=3), image_size=16,
                  selection=Selection(val_fraction=0.25), test_fraction=0.2)
    with_index = samples(folder(dst, **kwargs))
    assert open_store(dst).videos_in("walk") == [f"clip{k:02d}" for k in range(5)]
    (dst / "packs" / "walk" / "clip04.tar").rename(dst / "packs" / "walk" / "clip05.tar")
    assert load_pack_index(dst) is None  # a class folder changed
    assert open_store(dst).videos_in("walk")[-1] == "clip05"
    (dst / "packs" / "walk" / "clip05.tar").rename(dst / "packs" / "walk" / "clip04.tar")
    (dst / INDEX_FILE).unlink()
    assert_same(with_index, samples(folder(dst, **kwargs)))
