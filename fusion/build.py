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
from fusion.data.jobs import RECORDED_DEFAULTS
from fusion.data.loader import SeededSampler, collate_clips
from fusion.data.rawframes import rawframes
from fusion.data.sampling import SPREAD, ClipSpec
from fusion.data.splits import VIDEO_DATASETS, Selection
from fusion.data.images import images
from fusion.data.synthetic import make_synthetic
from fusion.data.transforms import (TSN_FLOW_SCALES, TSN_RGB_SCALES, TrainTransform,
                                    device_unsupported)
from fusion.fusers import FusionOptions
from fusion.model import SingleStream
from fusion.parts import FusionSpec, StreamSpec, assemble
from fusion.policy import hold_for_training
from fusion.streams import UV, FlowInput


def ensure_synthetic(root: Path) -> None:
    """Generate the demo dataset on first use."""
    if not (root / "ucfTrainTestlist" / "classInd.txt").is_file():
        print(f"generating the synthetic dataset in {root}")
        make_synthetic(root)


def crop_scales(config: Config) -> tuple[float, ...]:
    """The multi-scale crop sizes (fractions of the short side): `crop_scales`, else TSN's per
    modality (tsn-pytorch): 1, .875, .75, .66 for an RGB stream cropped alone, 1, .875, .75
    when the crop also serves flow or RGB differences (one crop serves every stream of a
    sample)."""
    if config.crop_scales:
        return tuple(config.crop_scales)
    flow_cropped = "flow" in config.modalities and config.augment_flow == "tsn"
    rgb_alone = not flow_cropped and not config.uses_rgbdiff
    return TSN_RGB_SCALES if rgb_alone else TSN_FLOW_SCALES


def train_transform(config: Config) -> TrainTransform:
    return TrainTransform(config.image_size, rgb=config.augment, flow=config.augment_flow,
                          scales=crop_scales(config))


def check_extraction(config: Config, root: Path) -> None:
    """A dataset written by extract_frames.py records how; the config must agree, since
    predict.py makes frames and flow for new videos the way the config says, and a flow
    frame means something else under each `flow_pairs`."""
    path = root / "extraction.json"
    if path.is_file():
        check_recorded(config, json.loads(path.read_text()), str(path))


def check_recorded(config: Config, recorded: dict, source: str) -> None:
    """`check_extraction` against extraction settings as extraction.json records them, from
    `source` (the file, or what a recipe will extract)."""
    recorded = {**RECORDED_DEFAULTS, **recorded}
    expected = {"short_side": config.short_side, "pad_square": config.pad_square}
    if "flow" in config.modalities and recorded["flow_method"] != "none":
        spread = config.frame_policy == SPREAD
        expected.update(flow_method=config.flow_method, flow_format=config.flow_format,
                        flow_pairs=SPREAD if spread else "consecutive")
        if config.flow_format == "uv":  # colour images are made from the float flow
            expected["flow_bound"] = config.flow_bound
        if spread:
            expected["flow_stack"] = config.flow_stack
        if config.flow_method == "raft":
            expected["raft_model"] = config.raft_model
    for key, value in expected.items():
        if key in recorded and recorded[key] != value:
            what = "frame_policy" if key == "flow_pairs" else key
            raise ValueError(f"config key {what}: {getattr(config, what)!r}, but {source} says "
                             f"the data was extracted with {key} = {recorded[key]!r}")


def resolve_decode(config: Config, device: torch.device | None) -> tuple[str, str]:
    """Where the frames of a config's datasets are decoded, "cpu" or "device", and why (for the
    run's log; "" when there is nothing to say). decode = device fails naming the config key
    that it cannot reproduce; auto then decodes on the CPU, saying why."""
    on_cuda = device is not None and device.type == "cuda"
    if config.decode == "cpu" or (config.decode == "auto" and not on_cuda):
        return "cpu", ""
    if config.dataset == "images":
        blocker = "dataset 'images' (still images, padded to squares on the CPU)"
    elif config.flow_format == "rgb" and "flow" in config.modalities:
        blocker = "flow_format = 'rgb' (flow stored as PNG colour images; it decodes JPEGs)"
    else:
        blocker = ", ".join(device_unsupported(train_transform(config)))
    if blocker and config.decode == "device":
        raise ValueError(f"config key decode: 'device' cannot reproduce {blocker} exactly; "
                         f"use decode = 'cpu' (or 'auto', which falls back to it)")
    if blocker:
        return "cpu", f"decode = auto: JPEG frames decoded on the CPU, since the device " \
                      f"path cannot reproduce {blocker} exactly"
    return "device", f"decode = {config.decode}: JPEG frames decoded and cropped on " \
                     f"{device if device is not None else 'the CPU'}"


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


def build_dataset(config: Config, subset: str, mode: str, *, device: torch.device | None = None):
    """The dataset of a config for subset train / val / test, read in mode train / val / test;
    `device`: where the model runs, which decode = auto decodes on when it is a GPU (the
    batches then need `device_decode.decode_batch`, which the training loop and the test
    protocol call)."""
    decode, why = resolve_decode(config, device)
    root = Path(config.data_root)
    kind = "ucf101" if config.dataset == "synthetic" else config.dataset
    if config.dataset == "synthetic":
        ensure_synthetic(root)
    check_extraction(config, root)
    if kind == "images":
        return images(root, subset=subset, mode=mode,  # decoded on the CPU: resolve_decode
                      selection=selection(config, kind), image_size=config.image_size,
                      on_bad=config.on_bad,
                      transform=train_transform(config) if mode == "train" else None)
    options = dict(subset=subset, mode=mode, selection=selection(config, kind),
                   clip=clip_spec(config), image_size=config.image_size, on_bad=config.on_bad,
                   frames=config.frames)
    if kind == "rawframes":
        options.update(class_file=working_dir_file(config, "class_names") or None,
                       templates=tuple(config.rawframe_templates),
                       frames_dir=config.rawframes_dir,
                       lists={key: working_dir_file(config, f"{key}_list")
                              for key in ("train", "val", "test")})
    else:
        options["flow_format"] = config.flow_format
    if kind in ("ucf101", "hmdb51"):
        options["split"] = config.split
    if mode == "train":
        options["transform"] = train_transform(config)
    options["crops"] = config.eval_crops  # validation takes its single view from it
    dataset = {**VIDEO_DATASETS, "rawframes": rawframes}[kind](root, decode=decode, **options)
    if why:
        dataset.notes.append(why)
    return dataset


def selection(config: Config, kind: str) -> Selection:
    """Which videos (images) the config's dataset of `kind` holds. The readers that split by
    fractions (folder, images) keep their own carve-out, 0.1, where the config asks for none."""
    val_fraction = config.val_fraction
    if kind in ("folder", "images") and val_fraction <= 0:
        val_fraction = 0.1
    return Selection(classes=config.classes or config.max_classes or None,
                     val_fraction=val_fraction, seed=config.seed, oversample=config.oversample)


def clip_spec(config: Config) -> ClipSpec:
    """What a sample of the config's video datasets reads (`rgb_frames`: the RGB frames the
    streams together need, an RGB-difference stream's included)."""
    return ClipSpec(modalities=config.modalities, segments=config.segments,
                    flow_stack=config.flow_stack, rgb_stack=config.rgb_frames,
                    frame_policy=config.frame_policy, num_clips=config.eval_clips)


def validation_subset(config: Config) -> str:
    """Where the best epoch is chosen: a validation list or carve-out, else the test split."""
    listed = config.dataset == "rawframes" and config.val_list
    return "val" if config.val_fraction > 0 or listed else "test"


def flow_input(config: Config) -> FlowInput:
    return FlowInput(format=config.flow_format, bound=config.flow_bound,
                     subtract_mean=config.flow_mean_subtraction)


def stream_spec(config: Config, modality: str, classes: list[str] | None = None) -> StreamSpec:
    """The config's stream of `modality` (rgb, flow or rgbdiff), its sentinels translated."""
    backbone, frames, init = {
        "rgb": (config.rgb, config.rgb_stack, config.init_rgb),
        "flow": (config.flow, config.flow_stack, config.init_flow),
        "rgbdiff": (config.diff or config.rgb, config.diff_stack, config.init_diff),
    }[modality]
    class_map = (config.class_mapping() or None) if modality == "rgb" else None
    if class_map and classes is None:
        raise ValueError("config key class_map needs the dataset's class names")
    return StreamSpec(backbone, modality, frames=frames,
                      flow_input=flow_input(config) if modality == "flow" else UV,
                      weights=None if config.weights == "none" else config.weights,
                      init=init or None, class_map=class_map,
                      classes=tuple(classes) if classes else None,
                      dropout=None if config.dropout == -1 else config.dropout)


def fusion_spec(config: Config) -> FusionSpec:
    options = FusionOptions(init=config.fusion_init,
                            weights=tuple(config.fusion_weights) or None,
                            batchnorm=config.fusion_bn)
    return FusionSpec(config.fuse, at=config.at or None, at_flow=config.at_flow or None,
                      options=options, keep_spatial_head=config.keep_spatial_head,
                      keep_temporal_tower=config.keep_temporal_tower,
                      kept_average=config.kept_average, diff_weight=config.diff_weight,
                      head_dropout=None if config.dropout == -1 else config.dropout)


def build_model(config: Config, num_classes: int,
                classes: list[str] | None = None) -> torch.nn.Module:
    """The model of a config, assembled from its parts, with the config's training policy
    (freeze, partial BN) applied; `classes` (the dataset's) are needed for `class_map`."""
    if config.fuse == "none":
        model = SingleStream(stream_spec(config, config.stream, classes).build(num_classes))
    else:
        diff = stream_spec(config, "rgbdiff").build(num_classes) if config.diff else None
        model = assemble(stream_spec(config, "rgb", classes).build(num_classes),
                         stream_spec(config, "flow").build(num_classes), fusion_spec(config),
                         num_classes=num_classes, diff=diff)
    hold_for_training(model, freeze=config.freeze, partial_bn=config.partial_bn)
    return model


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
