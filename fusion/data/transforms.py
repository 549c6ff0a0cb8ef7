"""Clip transforms: the same random parameters for every frame of both modalities of a sample.

Frames stay uint8 (`N x C x H x W`, N frames of one sample) until the model normalises them.
A horizontal flip mirrors the flow images and inverts u (`255 - u` on the quantised values, as
twostreamfusion and MMAction2 do); photometric changes apply to RGB only.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F

from fusion.choices import resolve_name

# TSN's multi-scale crop sides (tsn-pytorch): {256, 224, 192, 168} px of 256-px RGB frames, the
# smallest left out for flow and RGB differences
TSN_RGB_SCALES = (1.0, 0.875, 0.75, 0.66)
TSN_FLOW_SCALES = (1.0, 0.875, 0.75)
CROP_MODES = ("center", "three", "ten", "full")


def single_view(crops: str) -> str:
    """The one view validation and prediction use for a test protocol's `crops`: the whole
    frame where the protocol tests on it, else the centre crop."""
    return "full" if crops == "full" else "center"


def flip_flow(flow: torch.Tensor) -> torch.Tensor:
    """Mirror `... x 2 x H x W` quantised flow (u, v): the image flips and u changes sign."""
    flipped = F.horizontal_flip(flow)
    flipped[..., 0, :, :] = 255 - flipped[..., 0, :, :]
    return flipped


def fixed_crop_offsets(height: int, width: int, crop_h: int, crop_w: int) -> list[tuple[int, int]]:
    """TSN's 13 crop positions (corners, centre, edge middles, quarter points), as (top, left)."""
    h, w = (height - crop_h) // 4, (width - crop_w) // 4
    grid = [(0, 0), (0, 4), (4, 0), (4, 4), (2, 2),  # corners and centre
            (2, 0), (2, 4), (4, 2), (0, 2),  # edge middles
            (1, 1), (1, 3), (3, 1), (3, 3)]  # quarter points
    return [(i * h, j * w) for i, j in grid]


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """N x C x H x W uint8 frames -> N x C x size x size, 4 channels per image where possible:
    resizing treats channels independently, and torch's fast uint8 path takes up to 4."""
    n, c, h, w = x.shape
    if c < 3 and (n * c) % 4 == 0:
        grouped = F.resize(x.reshape(n * c // 4, 4, h, w), [size, size], antialias=True)
        return grouped.reshape(n, c, size, size)
    return F.resize(x, [size, size], antialias=True)


def resized_crop(x: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """`F.resized_crop` for N x C x H x W uint8 frames (`resize_square` of the crop)."""
    return resize_square(F.crop(x, *box), size)


def _randint(high: int) -> int:
    return int(torch.randint(high, (1,)).item())


# What each stream's training augmentation may be (config keys augment, augment_flow).
RGB_AUGMENTS = ("tsn", "seed001", "none")
FLOW_AUGMENTS = ("tsn", "none")


def seed001_rgb_augmentation() -> v2.Compose:
    """Seed 001's notebooks' RGB list (spatial_model_*.ipynb, twostream_model_hmdb51.ipynb),
    in their order, applied to the whole padded frame after resizing: no crop."""
    return v2.Compose([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.3),
                       v2.RandomGrayscale(p=0.1), v2.RandomAutocontrast(p=0.1),
                       v2.RandomAdjustSharpness(sharpness_factor=2, p=0.1),
                       v2.RandomHorizontalFlip(p=0.25),
                       v2.RandomPerspective(distortion_scale=0.3, p=0.1),
                       v2.RandomRotation(degrees=15)])


def whole_frame(x: torch.Tensor, size: int) -> torch.Tensor:
    """The whole frame resized to size x size (seed 001's Resize((224, 224)) of padded frames)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.resize(x, [size, size], antialias=True)


@dataclass(frozen=True)
class CropFlip:
    """A training sample's drawn geometry: the crop box (top, left, height, width) in its
    frames, resized to the input side, then mirrored if `flip`."""

    box: tuple[int, int, int, int]
    flip: bool


# What decoding on the device reproduces of a TrainTransform (`fusion.data.device_decode`: it
# crops, resizes and flips, or takes the whole frame); anything else is refused there.
DEVICE_OPTIONS = ("image_size", "rgb", "flow", "scales", "max_distort", "flip_p")
DEVICE_AUGMENTS = ("tsn", "none")


@dataclass
class TrainTransform:
    """Training augmentation chosen per stream; the same random parameters for every frame of a
    stream of a sample.

    rgb (the RGB stream and RGB differences): "tsn" (multi-scale corner crop with scale
        jittering, flip), "seed001" (seed 001's list on the whole frame:
        `seed001_rgb_augmentation`) or "none" (the whole frame).
    flow: "tsn" or "none" (the whole frame: seed 001 trained its flow stream unaugmented).
    Where both are "tsn", one crop and one flip serve both streams (the maps stay aligned, as
    TSN does); otherwise each stream is augmented on its own, as seed 001's notebooks do.
    scales: crop sides as fractions of the short side, height and width chosen independently
        within `max_distort` steps of each other; the crop is resized to image_size.
    """

    image_size: int
    rgb: str = "tsn"
    flow: str = "tsn"
    scales: tuple[float, ...] = TSN_RGB_SCALES
    max_distort: int = 1
    flip_p: float = 0.5

    def __post_init__(self):
        resolve_name(self.rgb, RGB_AUGMENTS, "augment")
        resolve_name(self.flow, FLOW_AUGMENTS, "augment_flow")
        self.seed001 = seed001_rgb_augmentation() if self.rgb == "seed001" else None

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        base = min(height, width)
        sizes = [int(base * s) for s in self.scales]
        pairs = [(ch, cw) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes)
                 if abs(i - j) <= self.max_distort]
        crop_h, crop_w = pairs[_randint(len(pairs))]
        offsets = fixed_crop_offsets(height, width, crop_h, crop_w)
        top, left = offsets[_randint(len(offsets))]
        return top, left, crop_h, crop_w

    def draw(self, rgb_size: tuple[int, int] | None,
             flow_size: tuple[int, int] | None) -> CropFlip | None:
        """The sample's crop and flip, one for the streams under "tsn", drawn for the first of
        them (RGB, else flow; None: that stream is off) from torch's generator in this order;
        None when no stream is cropped. The one drawing of both paths: decoding on the device
        draws it in the loader, from the sample's seed, as this transform does."""
        sizes = [size for size, mode in ((rgb_size, self.rgb), (flow_size, self.flow))
                 if size is not None and mode == "tsn"]
        if not sizes:
            return None
        return CropFlip(self.crop_box(*sizes[0]), torch.rand(()).item() < self.flip_p)

    def device_unsupported(self) -> list[str]:
        """What of this transform decoding on the device cannot reproduce exactly: augment
        seed001 (random photometric and geometric transforms drawn inside torchvision)."""
        modes = [f"augment = {self.rgb!r}"] if self.rgb not in DEVICE_AUGMENTS else []
        modes += [f"augment_flow = {self.flow!r}"] if self.flow not in DEVICE_AUGMENTS else []
        return modes + [f.name for f in fields(self)
                        if f.name not in DEVICE_OPTIONS and getattr(self, f.name) != f.default]

    def __call__(self, rgb: torch.Tensor | None, flow: torch.Tensor | None):
        drawn = self.draw(None if rgb is None else tuple(rgb.shape[-2:]),
                          None if flow is None else tuple(flow.shape[-2:]))
        if rgb is not None:
            if self.rgb == "tsn":
                rgb = resized_crop(rgb, drawn.box, self.image_size)
                rgb = F.horizontal_flip(rgb) if drawn.flip else rgb
            else:
                rgb = whole_frame(rgb, self.image_size)
                rgb = self.seed001(rgb) if self.seed001 is not None else rgb
        if flow is not None:
            if self.flow == "tsn":
                flow = resized_crop(flow, drawn.box, self.image_size)
                flow = flip_flow(flow) if drawn.flip else flow
            else:
                flow = whole_frame(flow, self.image_size)
        return rgb, flow


@dataclass
class EvalTransform:
    """Deterministic test-time views, stacked on a new first axis (V x N x C x H x W).

    center: resize the short side to image_size * 256 / 224, centre crop (V = 1);
    three: resize the short side to image_size, three squares along the long side (V = 3);
    ten: as center, the four corners and the centre, each also flipped (V = 10);
    full: the whole frame resized to image_size x image_size (seed 001's test view, V = 1).
    """

    image_size: int
    crops: str = "center"

    def __post_init__(self):
        resolve_name(self.crops, CROP_MODES, "crops")

    @property
    def views(self) -> int:
        return {"center": 1, "three": 3, "ten": 10, "full": 1}[self.crops]

    def _views(self, x: torch.Tensor, is_flow: bool) -> torch.Tensor:
        size = self.image_size
        if self.crops == "full":
            return whole_frame(x, size).unsqueeze(0)
        if self.crops == "three":
            x = F.resize(x, size, antialias=True)
            h, w = x.shape[-2:]
            if h > w:
                return torch.stack([x[..., t:t + size, :] for t in (0, (h - size) // 2, h - size)])
            return torch.stack([x[..., :, t:t + size] for t in (0, (w - size) // 2, w - size)])
        x = F.resize(x, round(size * 256 / 224), antialias=True)
        if self.crops == "center":
            return F.center_crop(x, [size, size]).unsqueeze(0)
        views = list(F.ten_crop(x, [size, size]))  # 5 crops, then the same 5 mirrored
        if is_flow:
            for i in range(5, 10):
                views[i] = views[i].clone()
                views[i][..., 0, :, :] = 255 - views[i][..., 0, :, :]
        return torch.stack(views)

    def __call__(self, rgb: torch.Tensor | None, flow: torch.Tensor | None):
        return (None if rgb is None else self._views(rgb, is_flow=False),
                None if flow is None else self._views(flow, is_flow=True))


def device_unsupported(transform) -> list[str]:
    """Why decoding on the device cannot reproduce `transform` exactly: the options of a
    `TrainTransform` beyond crop, resize and flip, or a transform of another kind; [] when it
    can (`EvalTransform`'s views are deterministic)."""
    if type(transform) is EvalTransform:
        return []
    if type(transform) is TrainTransform:
        return transform.device_unsupported()
    return [f"transform {type(transform).__name__}"]
