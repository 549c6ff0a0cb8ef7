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
CROP_MODES = ("center", "three", "ten")


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


@dataclass(frozen=True)
class CropFlip:
    """A training sample's drawn geometry: the crop box (top, left, height, width) in its
    frames, resized to the input side, then mirrored if `flip`."""

    box: tuple[int, int, int, int]
    flip: bool


# The TrainTransform options that decoding on the device reproduces (it crops, resizes and
# flips: `fusion.data.device_decode`); any other option set is refused there.
DEVICE_OPTIONS = ("image_size", "scales", "max_distort", "flip_p")


@dataclass
class TrainTransform:
    """TSN multi-scale corner cropping with scale jittering, flip, optional RGB photometrics.

    scales: crop sides as fractions of the short side, height and width chosen independently
        within `max_distort` steps of each other; the crop is resized to image_size.
    color_jitter: (brightness, contrast, saturation, hue) or None; grayscale_p, autocontrast_p,
        sharpness_p: probabilities of seed 001's other photometric augmentations.
    rotation, perspective_p: seed 001's geometric extras, for RGB-only training (they would
        misalign flow vectors, so a sample with flow refuses them).
    """

    image_size: int
    scales: tuple[float, ...] = TSN_RGB_SCALES
    max_distort: int = 1
    flip_p: float = 0.5
    color_jitter: tuple[float, float, float, float] | None = None
    grayscale_p: float = 0.0
    autocontrast_p: float = 0.0
    sharpness_p: float = 0.0
    rotation: float = 0.0
    perspective_p: float = 0.0

    def __post_init__(self):
        photometric = []
        if self.color_jitter is not None:
            photometric.append(v2.ColorJitter(*self.color_jitter))
        if self.grayscale_p:
            photometric.append(v2.RandomGrayscale(self.grayscale_p))
        if self.autocontrast_p:
            photometric.append(v2.RandomAutocontrast(p=self.autocontrast_p))
        if self.sharpness_p:
            photometric.append(v2.RandomAdjustSharpness(2, p=self.sharpness_p))
        self.photometric = v2.Compose(photometric) if photometric else None
        geometric = []
        if self.rotation:
            geometric.append(v2.RandomRotation(self.rotation))
        if self.perspective_p:
            geometric.append(v2.RandomPerspective(0.3, p=self.perspective_p))
        self.geometric = v2.Compose(geometric) if geometric else None

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        base = min(height, width)
        sizes = [int(base * s) for s in self.scales]
        pairs = [(ch, cw) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes)
                 if abs(i - j) <= self.max_distort]
        crop_h, crop_w = pairs[_randint(len(pairs))]
        offsets = fixed_crop_offsets(height, width, crop_h, crop_w)
        top, left = offsets[_randint(len(offsets))]
        return top, left, crop_h, crop_w

    def draw(self, height: int, width: int) -> CropFlip:
        """The sample's crop and flip for frames of height x width, drawn from torch's generator
        in this order: the one drawing of both paths (decoding on the device draws it in the
        loader, from the sample's seed, as this transform does)."""
        box = self.crop_box(height, width)
        return CropFlip(box, torch.rand(()).item() < self.flip_p)

    def device_unsupported(self) -> list[str]:
        """The options set here that decoding on the device cannot reproduce exactly."""
        return [f.name for f in fields(self)
                if f.name not in DEVICE_OPTIONS and getattr(self, f.name) != f.default]

    def __call__(self, rgb: torch.Tensor | None, flow: torch.Tensor | None):
        height, width = (rgb if rgb is not None else flow).shape[-2:]
        drawn = self.draw(height, width)
        box, flip = drawn.box, drawn.flip
        if rgb is not None:
            rgb = resized_crop(rgb, box, self.image_size)
            rgb = F.horizontal_flip(rgb) if flip else rgb
            if self.photometric is not None:
                rgb = self.photometric(rgb)
            if self.geometric is not None:
                if flow is not None:
                    raise ValueError("rotation and perspective augmentations would misalign flow "
                                     "vectors; use them for RGB-only training")
                rgb = self.geometric(rgb)
        if flow is not None:
            flow = resized_crop(flow, box, self.image_size)
            flow = flip_flow(flow) if flip else flow
        return rgb, flow


@dataclass
class EvalTransform:
    """Deterministic test-time views, stacked on a new first axis (V x N x C x H x W).

    center: resize the short side to image_size * 256 / 224, centre crop (V = 1);
    three: resize the short side to image_size, three squares along the long side (V = 3);
    ten: as center, the four corners and the centre, each also flipped (V = 10).
    """

    image_size: int
    crops: str = "center"

    def __post_init__(self):
        resolve_name(self.crops, CROP_MODES, "crops")

    @property
    def views(self) -> int:
        return {"center": 1, "three": 3, "ten": 10}[self.crops]

    def _views(self, x: torch.Tensor, is_flow: bool) -> torch.Tensor:
        size = self.image_size
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
