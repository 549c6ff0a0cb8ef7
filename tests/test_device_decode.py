"""Decoding on the device (decode = device) against the CPU path, the device path run on the
CPU: the same samples within the JPEG decoders' difference (on the CPU both are libjpeg-turbo),
the same errors. nvJPEG's difference on a GPU is measured, not tested (README, Performance)."""
import numpy as np
import pytest
import torch
from PIL import Image

from fusion.build import build_dataset, build_model, resolve_decode
from fusion.config import Config
from fusion.data.device_decode import decode_batch, decode_files
from fusion.data.imagefiles import read_bytes, read_image
from fusion.data.loader import EncodedBatch, FrameError, collate_clips
from fusion.data.sampling import SPREAD, ClipSpec
from fusion.data.splits import ucf101
from fusion.data.transforms import TrainTransform
from fusion.engine import run_epoch
from tests.fakes import write_ucf101


def textured(root, videos, flow_sizes=None):
    """UCF101's layout (classes A, B, C, one training and one test video each) with smooth
    random frames, so crops and resizes show; the flow of the videos in `flow_sizes` at another
    size than their RGB frames."""
    train = [f"{c}/v_{c}_g01_c01.avi {k}" for k, c in enumerate("ABC", 1)]
    test = [f"{c}/v_{c}_g02_c01.avi" for c in "ABC"]
    write_ucf101(root, videos, list("ABC"), train, test)
    rng = np.random.default_rng(0)
    for path in sorted(root.rglob("*.jpg")):
        gray = "tvl1_flow" in path.parts
        h, w = (flow_sizes or {}).get(path.parent.name, (24, 32)) if gray else (24, 32)
        coarse = rng.integers(0, 256, (h // 4, w // 4) if gray else (h // 4, w // 4, 3))
        image = Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BILINEAR)
        image.save(path, quality=90)
    return root


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    names = [f"v_{c}_g{g:02d}_c01" for c in "ABC" for g in (1, 2)]
    return textured(tmp_path_factory.mktemp("decode"), {n: (10, 9) for n in names},
                    flow_sizes={"v_B_g01_c01": (20, 28)})


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    """Flow extracted for spread-around-middle: flow_stack = 4 frames per video."""
    names = [f"v_{c}_g{g:02d}_c01" for c in "ABC" for g in (1, 2)]
    return textured(tmp_path_factory.mktemp("spread"), {n: (12, 4) for n in names})


def both(root, seed=7, **options):
    """A batch of every video from the CPU path and from the device path, same seeds."""
    cpu, encoded = ucf101(root, **options), ucf101(root, decode="device", **options)
    keys = [(seed + i, i, True) for i in range(len(cpu))]
    batch = collate_clips([encoded[k] for k in keys])
    assert isinstance(batch, EncodedBatch)
    return collate_clips([cpu[k] for k in keys]), batch, decode_batch(batch, "cpu")


def assert_within_decoders(reference, decoded):
    """Grey levels: mean |diff| < 0.5, max <= 3 (the JPEG decoders' difference, after resize)."""
    assert decoded.dtype == torch.uint8 and reference.shape == decoded.shape
    diff = (reference.int() - decoded.cpu().int()).abs()
    assert diff.float().mean() < 0.5 and diff.max() <= 3, (diff.float().mean(), diff.max())


def test_batched_decode_equals_per_frame_decode(frames):
    files = sorted(frames.glob("jpegs_256/v_A_g01_c01/*.jpg"))[:4] + \
        sorted(frames.glob("tvl1_flow/u/v_B_g01_c01/*.jpg"))[:4]
    data = [torch.frombuffer(bytearray(read_bytes(str(f))), dtype=torch.uint8) for f in files]
    for gray, chunk, paths in ((False, data[:4], files[:4]), (True, data[4:], files[4:])):
        batched = decode_files(chunk, gray=gray, device=torch.device("cpu"))
        for path, one, image in zip(paths, chunk, batched):
            assert torch.equal(image, decode_files([one], gray=gray, device="cpu")[0])
            opencv = torch.from_numpy(read_image(str(path), gray=gray))  # the CPU path's decoder
            assert_within_decoders(opencv.permute(2, 0, 1) if not gray else opencv[None], image)


@pytest.mark.parametrize("options", [
    # TSN segments, flow stacks
    dict(subset="train", mode="train", clip=ClipSpec(segments=3, flow_stack=2)),
    dict(subset="train", mode="train",
         clip=ClipSpec(flow_stack=4, rgb_stack=3, frame_policy="random")),
    dict(subset="train", mode="train", clip=ClipSpec(modalities=["flow"], flow_stack=5)),
    dict(subset="test", mode="val", clip=ClipSpec(segments=2, flow_stack=3)),
    # clips x crops
    dict(subset="test", mode="test", clip=ClipSpec(flow_stack=2, num_clips=3), crops="ten"),
    dict(subset="test", mode="test", clip=ClipSpec(modalities=["rgb"], num_clips=2), crops="three"),
    # seed 001's
    dict(subset="test", mode="test", clip=ClipSpec(flow_stack=2, num_clips=2), crops="full"),
    dict(subset="train", mode="train", clip=ClipSpec(flow_stack=2),  # whole-frame RGB, cropped flow
         transform=TrainTransform(16, rgb="none", flow="tsn")),
    dict(subset="train", mode="train", clip=ClipSpec(flow_stack=2),  # cropped RGB, whole-frame flow
         transform=TrainTransform(16, rgb="tsn", flow="none")),
], ids=["tsn", "random-rgb-stack", "flow-alone", "val", "test-ten", "test-three-rgb",
        "test-full", "augment-none", "augment-flow-none"])
def test_device_path_equals_the_cpu_path_for_every_sampling_mode(frames, options):
    cpu, encoded, decoded = both(frames, image_size=16, **options)
    for name in ("rgb", "flow"):
        if getattr(cpu, name) is None:
            assert getattr(decoded, name) is None
        else:
            assert_within_decoders(getattr(cpu, name), getattr(decoded, name))
    assert decoded.video_id == cpu.video_id and torch.equal(decoded.label, cpu.label)
    if options["mode"] == "train":  # the drawn crops vary and both flips occur
        views = [s.view for s in encoded.samples]
        assert len({v.box for v in views}) > 1 and {v.flip for v in views} == {True, False}
        if "transform" in options:  # the whole frames are the whole frames
            whole = cpu.rgb if options["transform"].rgb == "none" else cpu.flow
            assert whole.shape[-1] == 16


def test_spread_around_middle_on_the_device(spread):
    cpu, _, decoded = both(spread, subset="train", mode="train",
                           clip=ClipSpec(flow_stack=4, frame_policy=SPREAD), image_size=16)
    assert_within_decoders(cpu.rgb, decoded.rgb)
    assert_within_decoders(cpu.flow, decoded.flow)


@pytest.mark.parametrize("subtract_mean", [False, True])
def test_flow_input_is_the_same_from_the_device_path(frames, subtract_mean):
    """Normalisation and mean flow subtraction are the model's first step, on the device either
    way: the training loop gives the same loss from both paths."""
    cpu, encoded, _ = both(frames, subset="train", mode="train", clip=ClipSpec(flow_stack=2),
                           image_size=32)
    config = Config(flow_mean_subtraction=subtract_mean, flow_stack=2, image_size=32,
                    fuse="none", stream="flow").validate()
    model = build_model(config, 3)
    losses = [run_epoch(model, [batch], torch.device("cpu"))["loss/fused"]
              for batch in (cpu, encoded)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def header_only(path):
    """A JPEG whose header reads well but whose image data is gone: only decoding finds out."""
    data = path.read_bytes()
    path.write_bytes(data[:data.find(b"\xff\xda")] + b"\xff\xd9")


def test_a_corrupt_jpeg_in_a_device_decoded_batch_is_named_and_skipped(tmp_path):
    root = textured(tmp_path, {f"v_{c}_g{g:02d}_c01": (6, 5) for c in "ABC" for g in (1, 2)})
    header_only(root / "jpegs_256" / "v_B_g02_c01" / "frame000003.jpg")
    options = dict(subset="test", mode="val", clip=ClipSpec(modalities=["rgb"], segments=6),
                   image_size=16)
    raising = ucf101(root, decode="device", **options)
    batch = collate_clips([raising[i] for i in range(3)])  # the loader reads it: the header is fine
    with pytest.raises(FrameError, match=r"cannot read frame .*v_B_g02_c01/frame000003.jpg of "
                                         r"video v_B_g02_c01: .*SOS"):
        decode_batch(batch, "cpu")
    skipping = ucf101(root, decode="device", on_bad="skip", **options)
    decoded = decode_batch(collate_clips([skipping[i] for i in range(3)]), "cpu")
    assert [s.video_id for s in decoded.skipped] == ["v_B_g02_c01"]
    # the batch keeps its size: the next readable clip of the batch stands in, not counted
    assert decoded.video_id == ["v_A_g02_c01", "v_C_g02_c01", "v_C_g02_c01"]
    assert decoded.counted.tolist() == [True, False, True] and decoded.label.tolist() == [0, 2, 2]
    assert torch.equal(decoded.rgb[1], decoded.rgb[2]) and decoded.rgb.shape[0] == 3
    # what the bytes already tell (truncated, empty, missing) fails in the loader, as on the
    # CPU path, with the same message
    (root / "jpegs_256" / "v_A_g02_c01" / "frame000002.jpg").write_bytes(b"\xff\xd8 cut")
    for decode in ("cpu", "device"):
        with pytest.raises(FrameError, match=r"cannot read frame .*v_A_g02_c01/frame000002.jpg "
                                             r"of video v_A_g02_c01: the JPEG is truncated"):
            ucf101(root, decode=decode, **options)[0]
    skipped = ucf101(root, decode="device", on_bad="skip", **options)
    assert skipped[0].video_id == "v_B_g02_c01" and skipped[0].counted is False


def test_decode_device_refuses_what_it_cannot_reproduce_and_auto_says_why(frames):
    with pytest.raises(ValueError, match="cannot reproduce the train transform's augment = "
                                         "'seed001'"):
        ucf101(frames, decode="device", transform=TrainTransform(16, rgb="seed001"))
    config = Config(data_root=str(frames), dataset="ucf101", augment="seed001",
                    decode="device").validate()
    with pytest.raises(ValueError, match=r"config key decode: 'device' cannot reproduce "
                                         r"augment = 'seed001' exactly"):
        build_dataset(config, "train", "train")
    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    config.decode = "auto"
    decode, why = resolve_decode(config, cuda)
    assert decode == "cpu" and "augment = 'seed001'" in why
    config.augment = "tsn"
    assert resolve_decode(config, cuda)[0] == "device"
    assert resolve_decode(config, torch.device("cpu")) == ("cpu", "")
    colour = Config(flow_format="rgb", augment_flow="none", decode="device").validate()
    with pytest.raises(ValueError, match="cannot reproduce flow_format = 'rgb'"):
        resolve_decode(colour, cuda)
    images = Config(dataset="images", fuse="none", decode="device").validate()
    with pytest.raises(ValueError, match="config key decode: 'device' cannot reproduce dataset "
                                         "'images'"):
        resolve_decode(images, cuda)
