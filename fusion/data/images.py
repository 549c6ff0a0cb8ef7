"""Still images for pre-training the spatial stream (seed 001: Stanford 40 Actions, then HMDB51).

`<root>/<class>/*.jpg` (or .jpeg, .png), split per class into train / val / test
(`stratified_split`), small classes oversampled in training if asked. Each image is zero-padded
to a square and resized to `image_size` (as in the report), then augmented like a video frame in
training. Samples look like one-frame clips, `(rgb 1 x 3 x S x S, None, label, path)`, so a
single RGB stream trains on them with the video engine.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from fusion.data.loader import FrameError, Sample, read_sample, seeded
from fusion.data.splits import (Selection, class_folders, oversample, select_classes,
                                stratified_split)
from fusion.data.imagefiles import DecodeError, read_image
from fusion.data.transforms import TrainTransform
from fusion.choices import MODES, ON_BAD, SUBSETS, resolve_name

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def pad_square(image: torch.Tensor) -> torch.Tensor:
    """C x H x W -> C x S x S with S = max(H, W), the image centred on zeros."""
    h, w = image.shape[-2:]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    return F.pad(image, (left, side - w - left, top, side - h - top))


class ImageFolderDataset(Dataset):
    def __init__(self, items: list[tuple[Path, int]], classes: list[str], *, root: Path,
                 mode: str = "train", image_size: int = 224, transform=None,
                 on_bad: str = "raise"):
        resolve_name(mode, MODES, "mode")
        resolve_name(on_bad, ON_BAD, "on_bad")
        if not items:
            raise ValueError(f"the {mode} split of {root} holds no images")
        self.items, self.classes, self.root = items, classes, root
        self.mode, self.image_size, self.on_bad = mode, image_size, on_bad
        self.transform = transform if transform is not None else (
            TrainTransform(image_size) if mode == "train" else None)
        self.views_per_video, self.skipped = 1, 0
        self.notes: list[str] = []

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def load(self, path: Path) -> torch.Tensor:
        try:
            image = torch.from_numpy(read_image(str(path), gray=False)).permute(2, 0, 1)
        except DecodeError as err:
            raise FrameError(f"cannot read image {path}: {err}") from err
        image = TF.resize(pad_square(image), [self.image_size, self.image_size], antialias=True)
        if self.mode == "train":
            image, _ = self.transform(image.unsqueeze(0), None)  # 1 x 3 x S x S
            return image
        image = image.unsqueeze(0)  # T = 1
        return image.unsqueeze(0) if self.mode == "test" else image  # one view in the test

    def __getitem__(self, key) -> Sample:
        return read_sample(self, key)

    def sample(self, seed: int | None, i: int) -> Sample:
        path, label = self.items[i]
        return Sample(seeded(seed, self.load, path), None, label, self.item_id(i))

    def item_id(self, i: int) -> str:
        return str(self.items[i][0].relative_to(self.root))


def images(root: str | Path, *, subset: str = "train",
           selection: Selection = Selection(val_fraction=0.1), test_fraction: float = 0.1,
           mode: str | None = None, image_size: int = 224, transform=None,
           on_bad: str = "raise") -> ImageFolderDataset:
    """The image-folder dataset; the split is stratified per class (seed 001: 10 % test, then
    10 % of the rest for validation), oversampling applies to the training part only.
    `selection`: the classes, validation fraction, seed and oversampling, as the video readers
    take them (`fusion.data.splits.Selection`)."""
    root = Path(root)
    resolve_name(subset, SUBSETS, "subset")
    chosen = select_classes(class_folders(root, "image folder root", "images"),
                            selection.classes)
    every = [(path, chosen.index(c)) for c in chosen for path in sorted((root / c).iterdir())
             if path.suffix.lower() in IMAGE_EXTENSIONS]
    parts = stratified_split([label for _, label in every], val_fraction=selection.val_fraction,
                             test_fraction=test_fraction, seed=selection.seed)
    items = [every[i] for i in parts[SUBSETS.index(subset)]]
    if subset == "train" and selection.oversample:
        items = oversample(items, [label for _, label in items], seed=selection.seed)
    return ImageFolderDataset(items, chosen, root=root,
                              mode=mode or ("train" if subset == "train" else "val"),
                              image_size=image_size, transform=transform, on_bad=on_bad)
