"""The one place a Config becomes objects: datasets, loaders and models.

Config sentinels are translated here ("none" weights, dropout -1, empty taps and paths), so
the library functions below it take plain, documented arguments.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fusion import distributed
from fusion.config import Config, from_dict
from fusion.data.extract import RECORDED_DEFAULTS
from fusion.data.loader import SeededSampler, collate_clips
from fusion.data.rawframes import rawframes
from fusion.data.sampling import SPREAD
from fusion.data.splits import VIDEO_DATASETS
from fusion.data.images import images
from fusion.data.synthetic import make_synthetic
from fusion.data.transforms import TSN_FLOW_SCALES, TSN_RGB_SCALES, TrainTransform
from fusion.checkpoint import load_stream_checkpoint
from fusion.model import SingleStream, build_two_stream
from fusion.streams import UV, FlowInput, build_stream


def ensure_synthetic(root: Path) -> None:
    """Generate the demo dataset on first use."""
    if not (root / "ucfTrainTestlist" / "classInd.txt").is_file():
        print(f"generating the synthetic dataset in {root}")
        make_synthetic(root)


def crop_scales(config: Config) -> tuple[float, ...]:
    """The multi-scale crop sizes (fractions of the short side): `crop_scales`, else TSN's per
    modality (tsn-pytorch): 1, .875, .75, .66 for an RGB stream alone, 1, .875, .75 when the
    input holds flow or RGB differences (one crop serves every stream of a sample)."""
    if config.crop_scales:
        return tuple(config.crop_scales)
    rgb_alone = config.modalities == ("rgb",) and not config.uses_rgbdiff
    return TSN_RGB_SCALES if rgb_alone else TSN_FLOW_SCALES


def train_transform(config: Config) -> TrainTransform:
    scales = crop_scales(config)
    if config.augment == "seed001":
        rgb_only = config.modalities == ("rgb",)
        return TrainTransform(config.image_size, scales=scales, flip_p=0.25,
                              color_jitter=(0.4, 0.4, 0.4, 0.3), grayscale_p=0.1,
                              autocontrast_p=0.1, sharpness_p=0.1,
                              rotation=15.0 if rgb_only else 0.0,
                              perspective_p=0.1 if rgb_only else 0.0)
    return TrainTransform(config.image_size, scales=scales)


def check_extraction(config: Config, root: Path) -> None:
    """A dataset written by extract_frames.py records how; the config must agree, since
    predict.py makes frames and flow for new videos the way the config says, and a flow
    frame means something else under each `flow_pairs`."""
    path = root / "extraction.json"
    if not path.is_file():
        return
    recorded = {**RECORDED_DEFAULTS, **json.loads(path.read_text())}
    expected = {"short_side": config.short_side, "pad_square": config.pad_square}
    if "flow" in config.modalities and recorded["flow_method"] != "none":
        spread = config.frame_policy == SPREAD
        expected.update(flow_method=config.flow_method, flow_bound=config.flow_bound,
                        flow_pairs=SPREAD if spread else "consecutive")
        if spread:
            expected["flow_stack"] = config.flow_stack
        if config.flow_method == "raft":
            expected["raft_model"] = config.raft_model
    for key, value in expected.items():
        if key in recorded and recorded[key] != value:
            what = "frame_policy" if key == "flow_pairs" else key
            raise ValueError(f"config key {what}: {getattr(config, what)!r}, but {path} says "
                             f"the data was extracted with {key} = {recorded[key]!r}")


def working_dir_file(config: Config, key: str) -> str:
    """The file a path option names, read like every path option from the working directory
    (the library's rawframes reader takes relative list paths from the dataset root); "" stays
    "". A file missing there but present under data_root is an error that says where it is."""
    value = getattr(config, key)
    if not value:
        return ""
    path = Path(value).absolute()
    beside_data = Path(config.data_root) / value
    if not path.exists() and beside_data.is_file():
        raise FileNotFoundError(f"config key {key}: {value} is not in the working directory "
                                f"{Path.cwd()}, which every path option is read from; the file "
                                f"is under data_root: give {beside_data}")
    return str(path)


def build_dataset(config: Config, subset: str, mode: str):
    """The dataset of a config for subset train / val / test, read in mode train / val / test."""
    root = Path(config.data_root)
    kind = "ucf101" if config.dataset == "synthetic" else config.dataset
    if config.dataset == "synthetic":
        ensure_synthetic(root)
    check_extraction(config, root)
    if kind == "images":
        return images(root, subset=subset, mode=mode,
                      classes=config.classes or config.max_classes or None,
                      val_fraction=config.val_fraction if config.val_fraction > 0 else 0.1,
                      seed=config.seed, oversample=config.oversample,
                      image_size=config.image_size, on_bad=config.on_bad,
                      transform=train_transform(config) if mode == "train" else None)
    options = dict(subset=subset, mode=mode, classes=config.classes or config.max_classes or None,
                   seed=config.seed, oversample=config.oversample, modalities=config.modalities,
                   segments=config.segments, flow_stack=config.flow_stack,
                   rgb_stack=config.rgb_frames, frame_policy=config.frame_policy,
                   image_size=config.image_size, on_bad=config.on_bad)
    if kind == "folder":
        options["val_fraction"] = config.val_fraction if config.val_fraction > 0 else 0.1
    elif kind == "rawframes":
        options.update(val_fraction=config.val_fraction,
                       class_file=working_dir_file(config, "class_names") or None,
                       templates=tuple(config.rawframe_templates),
                       lists={subset: working_dir_file(config, f"{subset}_list")
                              for subset in ("train", "val", "test")})
    else:
        options.update(split=config.split, val_fraction=config.val_fraction)
    if mode == "train":
        options["transform"] = train_transform(config)
    if mode == "test":
        options.update(num_clips=config.eval_clips, crops=config.eval_crops)
    return {**VIDEO_DATASETS, "rawframes": rawframes}[kind](root, **options)


def validation_subset(config: Config) -> str:
    """Where the best epoch is chosen: a validation list or carve-out, else the test split."""
    listed = config.dataset == "rawframes" and config.val_list
    return "val" if config.val_fraction > 0 or listed else "test"


def flow_input(config: Config) -> FlowInput:
    return FlowInput(format=config.flow_format, bound=config.flow_bound,
                     subtract_mean=config.flow_mean_subtraction)


def build_model(config: Config, num_classes: int,
                classes: list[str] | None = None) -> torch.nn.Module:
    """The model of a config; `classes` (the dataset's) are needed for `class_map`."""
    weights = None if config.weights == "none" else config.weights
    dropout = None if config.dropout == -1 else config.dropout
    class_map = config.class_mapping() or None
    if class_map and classes is None:
        raise ValueError("config key class_map needs the dataset's class names")
    if config.fuse == "none":
        backbone, channels, init = {
            "rgb": (config.rgb, 3 * config.rgb_stack, config.init_rgb),
            "flow": (config.flow, flow_input(config).channels(config.flow_stack),
                     config.init_flow),
            "rgbdiff": (config.diff or config.rgb, 3 * config.diff_stack, config.init_diff),
        }[config.stream]
        stream = build_stream(backbone, num_classes=num_classes, in_channels=channels,
                              weights=weights, dropout=dropout, modality=config.stream,
                              flow_input=flow_input(config) if config.stream == "flow" else UV)
        if init:
            load_stream_checkpoint(stream, init, config.stream,
                                   class_map=class_map if config.stream == "rgb" else None,
                                   classes=classes)
        return SingleStream(stream, partial_bn=config.partial_bn, freeze=config.freeze)
    return build_two_stream(
        rgb=config.rgb, flow=config.flow, fuse=config.fuse, at=config.at or None,
        at_flow=config.at_flow or None, num_classes=num_classes, flow_stack=config.flow_stack,
        rgb_stack=config.rgb_stack, weights=weights, dropout=dropout,
        keep_spatial_head=config.keep_spatial_head,
        keep_temporal_tower=config.keep_temporal_tower, fusion_init=config.fusion_init,
        fusion_weights=config.fusion_weights or None, freeze=config.freeze,
        partial_bn=config.partial_bn, init_rgb=config.init_rgb or None,
        init_flow=config.init_flow or None, class_map=class_map, classes=classes,
        diff=config.diff or None, diff_stack=config.diff_stack, diff_weight=config.diff_weight,
        init_diff=config.init_diff or None, fusion_bn=config.fusion_bn,
        kept_average=config.kept_average,
        flow_input=flow_input(config))


def make_loader(dataset, config: Config, *, training: bool,
                context: distributed.Context = distributed.Context()) -> DataLoader:
    """This process's share of `dataset`; call `loader.sampler.set_epoch(epoch)` per epoch.
    Order and augmentation depend on (seed, epoch) only (`SeededSampler`), so workers can
    persist across epochs and a resumed run replays its epochs exactly.

    Every process gets the same number of batches (`SeededSampler` pads the shards). Training
    shuffles and drops the last incomplete batch, as the reference TSN code does, so BatchNorm
    never gets a batch of one; evaluation keeps every video, each counted once."""
    sampler = SeededSampler(len(dataset), shuffle=training, seed=config.seed,
                            rank=context.rank, world=context.world)
    if training and len(sampler) < config.batch_size:
        raise ValueError(f"config key batch_size: {config.batch_size} is more than the "
                         f"{len(sampler)} training videos each of {context.world} process(es) "
                         f"gets ({len(dataset)} in all), and training drops incomplete batches")
    # Its own generator: creating an iterator must not draw from the global RNG, which the
    # model's dropout uses and a checkpoint restores.
    return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                      num_workers=config.workers, collate_fn=collate_clips,
                      persistent_workers=config.workers > 0,
                      generator=torch.Generator().manual_seed(config.seed),
                      pin_memory=torch.cuda.is_available(), drop_last=training)


def model_from_checkpoint(checkpoint: dict) -> torch.nn.Module:
    """The trained model of a checkpoint (its weights, not the initialisation it started from)."""
    config = from_dict({**checkpoint["config"], "init_rgb": "", "init_flow": "", "init_diff": "",
                        "weights": "none", "class_map": []})
    model = build_model(config, len(checkpoint["classes"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def training_runner(model: torch.nn.Module, config: Config, context: distributed.Context,
                    device: torch.device) -> torch.nn.Module:
    """What the training step calls: the model, synchronised (SyncBatchNorm) and wrapped in
    DistributedDataParallel under torchrun, compiled with `compile`. The plain model is what
    is saved and evaluated."""
    runner = model
    if context.enabled:
        if config.sync_bn:
            runner = torch.nn.SyncBatchNorm.convert_sync_batchnorm(runner)
        staged = bool(config.freeze_until or config.unfreeze)
        runner = torch.nn.parallel.DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=staged)  # frozen stages produce no gradients
    if config.compile:
        runner = torch.compile(runner, mode=config.compile_mode)
    return runner
