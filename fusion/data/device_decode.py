"""Decoding and augmenting on the device (config key `decode`, docs/design.md §8).

With decode = device the loader's workers only read each clip's JPEG bytes and draw its crop and
flip (`VideoDataset.encode`: the CPU path's draws, from the same seed). The training loop then
decodes the whole batch on its device, one `torchvision.io.decode_jpeg` call per modality (nvJPEG
on CUDA), and crops, resizes and flips it there (or takes the whole frame, or the evaluation
views) with the CPU path's own functions, all samples of a crop size in one call. JPEG frames
only: colour flow (PNG, flow_format rgb) and seed 001's random RGB list stay on the CPU. What
follows, the input normalisation (and the flow's mean subtraction), is the model's first step
and runs on the device either way (`Stream.normalize`). The CPU path stays the reference: the
two agree to within the JPEG decoders' difference (README, Performance).

    batch = decode_batch(batch, device)   # EncodedBatch -> Batch on `device`; a Batch as it is
    for batch in DecodeAhead(loader, device):  # the next batch decoded while this one trains

A file that the device cannot decode fails like a frame that the CPU path cannot read: a
`FrameError` naming the file and the video, or with on_bad = skip a stand-in that counts in no
metric, here the next readable clip of the same batch.
"""
from __future__ import annotations

import re
import warnings
from collections import defaultdict
from itertools import accumulate
from concurrent.futures import ThreadPoolExecutor

import torch
import torchvision.transforms.v2.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from fusion.data.clips import arrange_frames, match_flow_size
from fusion.data.loader import (Batch, ClipLayout, EncodedBatch, EncodedFrames, EncodedSample,
                                FrameError, Skipped)
from fusion.data.transforms import (CropFlip, EvalTransform, flip_flow, resize_square,
                                    whole_frame)

# torchvision 0.29 deprecates its codec for TorchCodec, warning at every call; its batched nvJPEG
# decoding is why it is used here (the CPU path decodes with OpenCV). A filter set once, not
# `catch_warnings`, which is not thread-safe and decoding runs in a background thread.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                        "TorchVision are deprecated", category=DeprecationWarning)


def decode_files(files: list[torch.Tensor], *, gray: bool,
                 device: torch.device) -> list[torch.Tensor | RuntimeError]:
    """JPEG bytes (1-D uint8 CPU tensors) -> C x H x W uint8 images on `device` (C = 1 gray,
    else 3), in one call; if that call fails, one file at a time, a failing file giving its
    error in its place."""
    mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB
    try:
        return decode_jpeg(files, mode=mode, device=device)
    except RuntimeError:
        pass
    images = []
    for data in files:
        try:
            images.append(decode_jpeg(data, mode=mode, device=device))
        except RuntimeError as err:
            images.append(err)
    return images


def decode_frames(samples: list[EncodedSample], modality: str,
                  device: torch.device) -> list[torch.Tensor | FrameError | None]:
    """One modality of every sample -> N x C x H x W uint8 on `device` (frames in
    `clip_frames`' order; flow: u, v planes), the `FrameError` of the sample's first unreadable
    file, or None where the modality is off."""
    encoded: list[EncodedFrames | None] = [getattr(s, modality) for s in samples]
    present = [e for e in encoded if e is not None]
    files = [part for e in present for part in torch.split(e.data, e.lengths)]
    if not files:
        return [None] * len(samples)
    images = decode_files(files, gray=modality == "flow", device=device)
    starts = [0, *accumulate(len(e.lengths) for e in present)]  # each sample's first file
    shapes = {getattr(image, "shape", None) for image in images}  # None: unreadable
    if len(shapes) == 1 and None not in shapes and len({len(e.order) for e in present}) == 1:
        # the usual batch, every file read and of one size: one stack, one gather
        planes = present[0].planes  # files per frame; distinct frame k of a sample: its files
        frames = torch.stack(images).view(len(images) // planes, -1, *images[0].shape[-2:])
        index = [start // planes + k for start, e in zip(starts, present) for k in e.order]
        gathered = frames.index_select(0, torch.tensor(index, device=device))
        each = iter(gathered.view(len(present), -1, *frames.shape[1:]).unbind(0))
        return [None if e is None else next(each) for e in encoded]
    out, mine = [], iter(zip(starts, present))
    for sample, e in zip(samples, encoded):
        if e is None:
            out.append(None)
            continue
        start, _ = next(mine)
        files_of = images[start:start + len(e.lengths)]
        bad = next((k for k, image in enumerate(files_of) if isinstance(image, Exception)), None)
        if bad is not None:
            # "decode_jpeg, <source file>:<line>, Invalid JPEG file structure: ..." -> the reason
            reason = re.sub(r"^decode_jpeg\S*, \S+:\d+, ", "", str(files_of[bad]))
            out.append(FrameError(f"cannot read frame {e.names[bad]} of video "
                                  f"{sample.video_id}: {reason}"))
            continue
        # files -> distinct frames (planes files each) -> the clip's frames
        frames = torch.cat(files_of).view(len(files_of) // e.planes, -1, *e.size)
        out.append(frames[torch.tensor(e.order, device=device)])
    return out


def _by_shape(frames: list[torch.Tensor]) -> list[list[int]]:
    """The samples grouped by the shape of their frames (one call serves each group)."""
    groups = defaultdict(list)
    for i, x in enumerate(frames):
        groups[x.shape].append(i)
    return list(groups.values())


def _crops(frames: list[torch.Tensor], views: list[CropFlip], size: int, flip) -> list:
    """Crop, resize and flip each sample's N x C x H x W frames as its drawn `CropFlip` says
    (`TrainTransform`'s "tsn"): the samples of one crop size are resized in one call."""
    groups = defaultdict(list)  # crop height, width -> samples
    for i, view in enumerate(views):
        groups[view.box[2:]].append(i)
    out = [None] * len(frames)
    for members in groups.values():
        crops = torch.stack([F.crop(frames[i], *views[i].box) for i in members])
        g, n, c, h, w = crops.shape  # G x N x C x h x w -> (G N) x C x S x S
        resized = resize_square(crops.view(g * n, c, h, w), size).view(g, n, c, size, size)
        flips = [k for k, i in enumerate(members) if views[i].flip]
        if flips:
            resized[flips] = flip(resized[flips])
        for k, i in enumerate(members):
            out[i] = resized[k]
    return out


def _whole_frames(frames: list[torch.Tensor], size: int) -> list:
    """Each sample's whole frames resized to size x size (`TrainTransform`'s "none")."""
    out = [None] * len(frames)
    for members in _by_shape(frames):
        resized = whole_frame(torch.stack([frames[i] for i in members]), size)
        for k, i in enumerate(members):
            out[i] = resized[k]
    return out


def _train_views(rgb: list, flow: list, views: list[CropFlip | None], layout: ClipLayout):
    """Each stream of each sample as the dataset's `TrainTransform` augments it: the drawn
    crop and flip ("tsn"; one for both streams) or the whole frame ("none")."""
    out = []
    for frames, augment, flip in ((rgb, layout.augment[0], F.horizontal_flip),
                                  (flow, layout.augment[1], flip_flow)):
        if frames[0] is None:
            out.append(frames)
        elif augment == "tsn":
            out.append(_crops(frames, views, layout.image_size, flip))
        else:
            out.append(_whole_frames(frames, layout.image_size))
    return out


def _eval_views(rgb: list, flow: list, transforms: list):
    """The evaluation views of each sample (V x N x C x S x S), the samples of one frame size
    through the dataset's `EvalTransform` in one call."""
    groups = defaultdict(list)  # frame sizes -> samples
    for i in range(len(transforms)):
        groups[tuple(None if x[i] is None else x[i].shape for x in (rgb, flow))].append(i)
    out_rgb, out_flow = [None] * len(transforms), [None] * len(transforms)
    for members in groups.values():
        stacked = [None if x[members[0]] is None else torch.stack([x[i] for i in members])
                   for x in (rgb, flow)]  # G x N x C x H x W
        views = transforms[members[0]](*stacked)  # V x G x N x C x S x S
        for x, out in zip(views, (out_rgb, out_flow)):
            if x is not None:
                for k, i in enumerate(members):
                    out[i] = x[:, k]
    return out_rgb, out_flow


def decode_batch(batch: Batch | EncodedBatch, device: torch.device | str) -> Batch:
    """An `EncodedBatch` decoded and augmented on `device`: the `Batch` the CPU path would
    have made (uint8 frames on `device`; labels and flags stay on the CPU). A `Batch` is
    returned as it is."""
    if not isinstance(batch, EncodedBatch):
        return batch
    device = torch.device(device)
    samples, layout = batch.samples, batch.samples[0].layout
    rgb, flow = (decode_frames(samples, m, device) for m in ("rgb", "flow"))
    errors = {}  # sample -> the error of its first unreadable file (flow first, as on the CPU)
    for i, frames in enumerate(zip(flow, rgb)):
        for error in (x for x in frames if isinstance(x, FrameError)):
            errors.setdefault(i, error)
    if errors and layout.on_bad == "raise":
        raise errors[min(errors)]
    good = [i for i in range(len(samples)) if i not in errors]
    if not good:
        raise FrameError(f"no clip of the batch can be read; the first: {errors[min(errors)]}")
    rgb = [rgb[i] for i in good]
    flow = [match_flow_size(r, f) for r, f in zip(rgb, (flow[i] for i in good))]
    views = [samples[i].view for i in good]
    evaluating = isinstance(views[0], EvalTransform)
    rgb, flow = _eval_views(rgb, flow, views) if evaluating else \
        _train_views(rgb, flow, views, layout)
    # on_bad = skip: an unreadable clip's place goes to the next readable one of the batch,
    # counted in no metric (as the CPU path's stand-in from the dataset)
    source = [i if i in good else next((j for j in good if j > i), good[0])
              for i in range(len(samples))]
    position = {i: k for k, i in enumerate(good)}
    counted, skipped = batch.counted.clone(), list(batch.skipped)
    for i, err in sorted(errors.items()):
        counted[i] = False
        skipped.append(Skipped(samples[i].video_id, str(err)))

    args = dict(views=evaluating, segments=layout.segments, single_view=layout.single_view)

    def stack(frames, length):  # B x N x C x S x S (B x V x N x ... with views) -> model input
        if frames[0] is None:
            return None
        return arrange_frames(torch.stack([frames[position[i]] for i in source]), length, **args)
    return Batch(stack(rgb, layout.rgb_stack), stack(flow, layout.flow_stack),
                 batch.label[source], [batch.video_id[i] for i in source], skipped, counted)


class DecodeAhead:
    """The batches of `loader` through `decode_batch`, each decoded in a background thread
    while the caller works on the one before (the decoder releases the GIL, and nvJPEG works
    on its own stream): what the training loop and the test protocol iterate. Batches come
    in order, errors at the batch they belong to; a loader of plain `Batch`es is iterated as
    it is."""

    def __init__(self, loader, device: torch.device | str):
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        first = next(batches, None)
        if not isinstance(first, EncodedBatch):  # decoded in the loader: nothing to do here
            if first is not None:
                yield first
                yield from batches
            return
        with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
            pending = pool.submit(decode_batch, first, self.device)
            for batch in batches:
                ahead = pool.submit(decode_batch, batch, self.device)
                yield pending.result()
                pending = ahead
            yield pending.result()
