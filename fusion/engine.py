"""Training and evaluation: the loop, checkpoints, exact resume, TensorBoard, the test protocol.

    run_dir = train(config)              # runs/<name>/: config.toml, events, last.pt, best.pt,
                                         # metrics.json
    metrics = test_checkpoint("runs/x/best.pt")

All randomness in training draws from torch's generators: the model's from the global one (saved
in every checkpoint), the data's from seeds fixed by (seed, epoch, sample) (`SeededSampler`). A
run resumed from `last.pt` therefore ends with the same weights as one that was never stopped.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from fusion.config import RESUMABLE, Config, from_dict, to_toml
from fusion import distributed
from fusion.files import load_tensors, write_atomic, write_json_atomic
from fusion.data.datasets import DATASETS, SeededSampler, collate_clips
from fusion.data.images import images
from fusion.data.synthetic import make_synthetic
from fusion.data.transforms import TSN_FLOW_SCALES, TSN_RGB_SCALES, TrainTransform
from fusion.model import SingleStream, build_two_stream, freeze_until, load_stream_checkpoint
from fusion.schedules import (EPOCH_SIZED, build_optimizer, build_scheduler,
                              rebuilt_for_epochs, step_scheduler)
from fusion.streams import build_stream, count_parameters


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# ---------------------------------------------------------------------------- data and model

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
    rgb_alone = config.modalities == ("rgb",) and not config.diff and not (
        config.fuse == "none" and config.stream == "rgbdiff")
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
    predict.py makes flow for new videos the way the config says."""
    path = root / "extraction.json"
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    for key in ("flow_method", "flow_bound", "short_side"):
        if key in recorded and recorded[key] != "none" and recorded[key] != getattr(config, key):
            raise ValueError(f"config key {key}: {getattr(config, key)!r}, but {path} says the "
                             f"data was extracted with {recorded[key]!r}")


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
    else:
        options.update(split=config.split, val_fraction=config.val_fraction)
    if mode == "train":
        options["transform"] = train_transform(config)
    if mode == "test":
        options.update(num_clips=config.eval_clips, crops=config.eval_crops)
    return DATASETS[kind](root, **options)


def validation_subset(config: Config) -> str:
    return "val" if config.val_fraction > 0 else "test"


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
            "flow": (config.flow, 2 * config.flow_stack, config.init_flow),
            "rgbdiff": (config.diff or config.rgb, 3 * config.diff_stack, config.init_diff),
        }[config.stream]
        stream = build_stream(backbone, num_classes=num_classes, in_channels=channels,
                              weights=weights, dropout=dropout, modality=config.stream,
                              subtract_mean=config.flow_mean_subtraction
                              and config.stream == "flow")
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
        flow_mean_subtraction=config.flow_mean_subtraction)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16/fp16 on GPUs that support it, none on the CPU unless asked."""
    if mode == "none" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def to_channels_last(model: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """NHWC weights for faster convolutions with AMP: "auto" on GPUs, "on" anywhere (the CPU
    suite then takes the GPU's path), "off". Applied per module, because one memory format
    cannot serve every weight: 4-D conv weights get channels_last, the 5-D weights of a
    `conv3d` fusion channels_last_3d (`model.to(memory_format=torch.channels_last)` refuses
    5-D tensors)."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return model
    for module in model.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.to(memory_format=torch.channels_last_3d)
        elif isinstance(module, torch.nn.Conv2d):
            module.to(memory_format=torch.channels_last)
    return model


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def move(x: torch.Tensor | None, device) -> torch.Tensor | None:
    """`x.to(device)`, letting a switched-off modality (None) through."""
    return None if x is None else x.to(device, non_blocking=True)


def to_device(batch, device):
    return (move(batch.rgb, device), move(batch.flow, device), move(batch.label, device),
            move(batch.counted, device))


# ---------------------------------------------------------------------------- one epoch

SYNC_EVERY = 20  # steps between reads of the running sums: each read waits for the GPU


def run_epoch(model, loader, device, *, optimizer=None, scaler=None, dtype=None,
              grad_clip: float = 0.0, desc: str = "", on_step=None,
              context: distributed.Context = distributed.Context()) -> dict:
    """Train (with an optimizer) or evaluate one pass; returns loss and accuracy per output,
    summed over all processes.

    Losses and correct counts add up on the device and are read every SYNC_EVERY steps, so the
    host queues the next step's kernels while the GPU runs this one. A non-finite loss stops
    the pass at that read, naming the first step it appeared in; every rank reads at the same
    steps (every rank has as many batches: `make_loader`) and they stop together.

    The metrics count only the samples marked `counted`: a distributed shard's padding
    duplicates and the stand-ins for unreadable videos train like the others (as
    DistributedSampler's padding does) but are never counted twice.
    """
    training = optimizer is not None
    model.train(training)
    sums: dict[str, torch.Tensor] = {}  # output name -> [loss sum, correct], on the device
    unchecked: list[tuple[int, torch.Tensor]] = []  # (step, fused loss) not read yet
    seen = processed = skipped = 0  # counted samples, all samples, unreadable ones
    start = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=None if context.main else True)

    def read():
        """Wait for the device: stop on a non-finite loss, show the running figures."""
        flags = torch.isfinite(torch.stack([loss for _, loss in unchecked])).tolist() \
            if unchecked else []
        bad = flags.count(False)
        if context.enabled:  # every rank, every read, even with nothing to read: none hangs
            bad = int(distributed.sum_across([float(bad)], context, device)[0])
        if bad:
            if all(flags):
                raise TrainingDiverged(f"the {desc or 'training'} loss became non-finite on "
                                       f"another process")
            step, loss = unchecked[flags.index(False)]
            raise TrainingDiverged(f"the {desc or 'training'} loss became {loss.item()} at "
                                   f"step {step}")
        unchecked.clear()
        if seen:
            bar.set_postfix(loss=f"{sums['fused'][0].item() / seen:.3f}",
                            clips_s=f"{processed / (time.perf_counter() - start):.1f}")

    with torch.set_grad_enabled(training):
        for step, batch in enumerate(bar):
            skipped += len(batch.skipped)
            rgb, flow, labels, counted = to_device(batch, device)
            with autocast(device, dtype):
                parts = model(rgb, flow, return_parts=True)
                losses = F.cross_entropy(parts["fused"].float(), labels, reduction="none")
                loss = losses.mean()
            if training:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(optimizer)
                scaler.update()
                if on_step is not None:
                    on_step(step, batch)
            seen += int(batch.counted.sum())  # a CPU tensor: no wait for the device
            processed += len(batch.label)
            unchecked.append((step, loss.detach()))
            weight = counted.double()
            for name, logits in parts.items():
                part_losses = losses if name == "fused" else F.cross_entropy(
                    logits.float(), labels, reduction="none")
                correct = ((logits.argmax(-1) == labels).double() * weight).sum()
                acc = sums.setdefault(name, torch.zeros(2, dtype=torch.float64, device=device))
                acc += torch.stack([(part_losses.detach().double() * weight).sum(), correct])
            if (step + 1) % SYNC_EVERY == 0:
                read()
        read()
    elapsed = time.perf_counter() - start
    names = sorted(sums)
    values = torch.cat([sums[n] for n in names]).tolist() if names else []
    totals = distributed.sum_across([seen, processed, skipped, *values], context, device)
    seen, processed, skipped = (int(t) for t in totals[:3])
    sums = {n: totals[3 + 2 * i:5 + 2 * i] for i, n in enumerate(names)}
    metrics = {"clips_per_s": processed / elapsed if elapsed > 0 else 0.0, "skipped": skipped,
               "clips": seen}
    for name, (loss_sum, correct) in sums.items():
        metrics[f"loss/{name}"] = loss_sum / max(seen, 1)
        metrics[f"acc/{name}"] = correct / max(seen, 1)
    return metrics


def is_better(metrics: dict, best: dict | None, rule: str) -> bool:
    """seed 001's rule ("both"): a new best needs a lower loss and a higher accuracy."""
    if best is None:
        return True
    lower = metrics["loss/fused"] < best["loss/fused"]
    higher = metrics["acc/fused"] > best["acc/fused"]
    return {"both": lower and higher, "loss": lower, "accuracy": higher}[rule]


# ---------------------------------------------------------------------------- checkpoints

def save_atomic(state: dict, path: Path) -> None:
    """A crash never leaves a half-written checkpoint (`write_atomic`)."""
    write_atomic(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    state = load_tensors(path, "checkpoint")
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a training checkpoint of this project")
    state["path"] = str(path)
    return state


def resume_config(checkpoint: dict, overrides: dict) -> Config:
    """The checkpoint's config; only RESUMABLE keys may be changed on the command line."""
    saved = checkpoint["config"]
    for key, value in overrides.items():
        if key not in RESUMABLE and saved.get(key) != value:
            raise ValueError(f"cannot change {key} when resuming {checkpoint['path']} "
                             f"(saved: {saved.get(key)!r}, given: {value!r}); only "
                             f"{', '.join(RESUMABLE)} may change")
    return from_dict({**saved, **{k: v for k, v in overrides.items() if k in RESUMABLE}})


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- the test protocol

def aggregate(scores: torch.Tensor, mode: str) -> torch.Tensor:
    """Clip logits B x V x K -> video scores B x K (argmax gives the prediction).

    mean-softmax: mean of the clips' softmax; sum-logits: sum of logits (the older PyTorch
    repositories); vote: share of the clips voting for each class (seed 002), ties broken by
    the mean softmax.
    """
    if mode == "mean-softmax":
        return scores.float().softmax(-1).mean(1)
    if mode == "sum-logits":
        return scores.float().sum(1)
    votes = F.one_hot(scores.argmax(-1), scores.shape[-1]).float().mean(1)
    return votes + 1e-6 * scores.float().softmax(-1).mean(1)


@torch.no_grad()
def predict_videos(model, dataset, device, *, dtype=None, batch_size: int = 2, workers: int = 0,
                   mode: str = "mean-softmax") -> dict:
    """Run the test protocol: every view of every video, aggregated per output."""
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        collate_fn=collate_clips)
    scores: dict[str, list[torch.Tensor]] = {}
    labels, ids, skipped = [], [], []
    for batch in tqdm(loader, desc="test", leave=False, dynamic_ncols=True, disable=None):
        skipped += [s.video_id for s in batch.skipped]
        rgb, flow, _, _ = to_device(batch, device)
        b, v = batch.label.shape[0], (rgb if rgb is not None else flow).shape[1]
        with autocast(device, dtype):  # B x V x T x ... -> (B V) x T x ...
            parts = model(*(None if x is None else x.flatten(0, 1) for x in (rgb, flow)),
                          return_parts=True)
        keep = batch.counted  # a stand-in for an unreadable video is not a test video
        for name, logits in parts.items():
            scores.setdefault(name, []).append(aggregate(logits.view(b, v, -1).cpu(), mode)[keep])
        labels.append(batch.label[keep])
        ids += [video for video, counted in zip(batch.video_id, keep.tolist()) if counted]
    return {"scores": {k: torch.cat(v) for k, v in scores.items()},
            "labels": torch.cat(labels), "video_ids": ids, "skipped": skipped}


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict:
    k = len(classes)
    predictions = scores.argmax(-1)
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    totals = confusion.sum(1)
    return {"accuracy": (predictions == labels).float().mean().item(),
            "per_class": {c: (confusion[i, i] / totals[i]).item() if totals[i] else None
                          for i, c in enumerate(classes)},
            "confusion": confusion.tolist()}


def confusion_image(confusion: list[list[int]], cell: int = 16) -> torch.Tensor:
    """Row-normalised confusion matrix as a 3 x H x W image (white: all of the row)."""
    m = torch.tensor(confusion, dtype=torch.float32)
    m = m / m.sum(1, keepdim=True).clamp(min=1)
    image = m.repeat_interleave(cell, 0).repeat_interleave(cell, 1)
    return torch.stack([image, image, image ** 0.5])  # a faint blue tint shows small values


def print_table(metrics: dict) -> None:
    print(f"{'output':<8} {'video accuracy':>15}")
    for name, m in metrics["test"].items():
        print(f"{name:<8} {100 * m['accuracy']:>14.1f}%")


# ---------------------------------------------------------------------------- training

def run_name(config: Config) -> str:
    if config.run_name:
        return config.run_name
    what = f"{config.stream}" if config.fuse == "none" else f"{config.fuse}_{config.at}"
    return f"{what}_{time.strftime('%Y%m%d-%H%M%S')}"


def train(config: Config, *, overrides: dict | None = None) -> Path:
    """Train per `config` (or continue `config.resume`), then test the best checkpoint."""
    return fit(config, overrides=overrides)[0]


def fit(config: Config, *, overrides: dict | None = None):
    """`train`, returning (run folder, trained model). Under torchrun every process trains its
    share of each batch (DistributedDataParallel); only rank 0 writes."""
    checkpoint = None
    if config.resume:
        checkpoint = load_checkpoint(config.resume)
        config = resume_config(checkpoint, overrides or {})
        run_dir = Path(checkpoint["path"]).parent
    else:
        run_dir = Path(config.logdir) / run_name(config)
    context, device = distributed.setup(config.device)
    try:
        return _fit(config, checkpoint, run_dir, context, device)
    finally:
        distributed.cleanup(context)


def _fit(config, checkpoint, run_dir, context, device):
    main = context.main
    if checkpoint is None and main:
        if (run_dir / "last.pt").exists():
            raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume "
                                  f"{run_dir} or choose another --run-name")
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(to_toml(config))
    dtype = amp_dtype(config.amp, device)
    torch.manual_seed(config.seed)

    train_set = build_dataset(config, "train", "train")
    val_set = build_dataset(config, validation_subset(config), "val")
    if config.val_fraction == 0 and main:
        print("note: val_fraction = 0, so the best checkpoint is chosen on the test split")
    classes = train_set.classes
    model = build_model(config, len(classes), classes).to(device)  # plain: saved, evaluated
    model = to_channels_last(model, config.channels_last, device)
    runner = model  # what the training step calls: maybe synchronised, wrapped, compiled
    staged = bool(config.freeze_until or config.unfreeze)
    if context.enabled:
        if config.sync_bn:
            runner = torch.nn.SyncBatchNorm.convert_sync_batchnorm(runner)
        runner = torch.nn.parallel.DistributedDataParallel(
            runner, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=staged)  # frozen stages produce no gradients
    if config.compile:
        runner = torch.compile(runner, mode=config.compile_mode)
    # epochs = 0 assembles and tests a model (say, late fusion of trained streams): no optimizer
    optimizer = build_optimizer(model.parameters(), config) if config.epochs else None
    scheduler = build_scheduler(optimizer, config) if optimizer is not None else None
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    start_epoch, best, history, train_time = 0, None, [], 0.0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        if checkpoint["optimizer"] is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            planned = checkpoint["config"]["epochs"]
            if config.epochs != planned and config.schedule in EPOCH_SIZED:
                scheduler = rebuilt_for_epochs(optimizer, config, checkpoint["epoch"])
                if main:
                    print(f"schedule {config.schedule!r} rebuilt for {config.epochs} epochs "
                          f"(was {planned}); epoch {checkpoint['epoch'] + 1} trains at lr "
                          f"{optimizer.param_groups[0]['lr']:.3g}")
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        start_epoch, best = checkpoint["epoch"], checkpoint["best"]
        history, train_time = checkpoint["history"], checkpoint["train_time"]
        if main:
            print(f"resuming {run_dir} after epoch {start_epoch}")
    train_loader = make_loader(train_set, config, training=True, context=context)
    val_loader = make_loader(val_set, config, training=False, context=context)
    steps_per_epoch = len(train_loader)
    writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_epoch * steps_per_epoch) \
        if main else None
    if main:
        print(f"run {run_dir}: {count_parameters(model):,} parameters, {len(train_set)} "
              f"training and {len(val_set)} validation videos, {len(classes)} classes, "
              f"device {device}" + (f", {context.world} processes" if context.enabled else ""))

    def checkpoint_state(epoch: int) -> dict:
        """Everything a resume needs after `epoch` epochs (no optimizer when epochs = 0)."""
        return {"model": model.state_dict(),
                "optimizer": None if optimizer is None else optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "scaler": scaler.state_dict(), "epoch": epoch, "best": best,
                "history": history, "train_time": train_time, "config": config.to_dict(),
                "rng": rng_state(), "classes": classes}

    def log_step(epoch):
        def on_step(step, batch):
            global_step = epoch * steps_per_epoch + step
            writer.add_scalar("lr", optimizer.param_groups[0]["lr"], global_step)
            if epoch == 0 and step == 0:
                if batch.rgb is not None:
                    writer.add_images("inputs/rgb", batch.rgb[:4, 0, :3], 0)
                if batch.flow is not None:  # u of the first flow frame, grey = no motion
                    writer.add_images("inputs/flow_u", batch.flow[:4, 0, :1], 0)
        return on_step if main else None

    for epoch in range(start_epoch, config.epochs):
        began = time.perf_counter()
        train_loader.sampler.set_epoch(epoch)
        if staged:
            tap = config.frozen_until(epoch)
            freeze_until(model, tap)
            if main and (epoch == start_epoch or tap != config.frozen_until(epoch - 1)):
                print(f"epoch {epoch + 1}: stream stages frozen up to {tap or 'nothing'}")
        try:
            train_metrics = run_epoch(runner, train_loader, device, optimizer=optimizer,
                                      scaler=scaler, dtype=dtype, grad_clip=config.grad_clip,
                                      desc=f"epoch {epoch + 1}/{config.epochs}",
                                      on_step=log_step(epoch), context=context)
        except TrainingDiverged as err:
            if writer is not None:
                writer.close()
            kept = run_dir / "last.pt"
            raise TrainingDiverged(f"{err} in epoch {epoch + 1}; stopped. The last good "
                                   f"checkpoint is {kept if kept.exists() else 'none yet'}; "
                                   f"try a lower --lr or --grad-clip") from None
        # Evaluation runs the plain model: each process its shard, no gradient sync.
        val_metrics = run_epoch(model, val_loader, device, dtype=dtype, desc="validate",
                                context=context)
        lr_used = optimizer.param_groups[0]["lr"]  # before the step sets the next epoch's
        step_scheduler(scheduler, val_metrics["loss/fused"])
        train_time += time.perf_counter() - began
        improved = is_better(val_metrics, best, config.best_rule)
        if improved:
            best = {**val_metrics, "epoch": epoch + 1}
        history.append({"epoch": epoch + 1, "train": train_metrics, "val": val_metrics,
                        "lr": lr_used})
        if not main:
            continue
        state = checkpoint_state(epoch + 1)
        save_atomic(state, run_dir / "last.pt")
        if improved:
            save_atomic(state, run_dir / "best.pt")
        for split, metrics in (("train", train_metrics), ("val", val_metrics)):
            for key, value in metrics.items():
                if key.startswith(("loss/", "acc/")) or key == "clips_per_s":
                    writer.add_scalar(f"{split}/{key}", value, epoch + 1)
        print(f"epoch {epoch + 1}: train loss {train_metrics['loss/fused']:.3f} "
              f"acc {train_metrics['acc/fused']:.3f} | val loss {val_metrics['loss/fused']:.3f} "
              f"acc {val_metrics['acc/fused']:.3f}{' (best)' if improved else ''} | "
              f"{train_metrics['clips_per_s']:.1f} clips/s")
        skipped = train_metrics["skipped"] + val_metrics["skipped"]
        if skipped:
            print(f"  skipped {skipped} unreadable samples (on_bad = skip)")

    if config.epochs == 0 and main:  # nothing trained: the assembled model is the checkpoint
        state = checkpoint_state(0)
        save_atomic(state, run_dir / "last.pt")
        save_atomic(state, run_dir / "best.pt")
    distributed.barrier(context)
    if main:
        metrics = test_checkpoint(run_dir / "best.pt", device=device, workers=config.workers,
                                  train_time_s=train_time)
        writer.add_image("test/confusion",
                         confusion_image(metrics["test"]["fused"]["confusion"]), 0)
        hparams = {k: v for k, v in config.to_dict().items()
                   if isinstance(v, (int, float, str, bool)) and k not in ("resume", "run_name")}
        writer.add_hparams(hparams, {f"hparam/test_acc_{k}": m["accuracy"]
                                     for k, m in metrics["test"].items()}, run_name=".")
        writer.close()
    distributed.barrier(context)
    return run_dir, model


def model_from_checkpoint(checkpoint: dict) -> torch.nn.Module:
    """The trained model of a checkpoint (its weights, not the initialisation it started from)."""
    config = from_dict({**checkpoint["config"], "init_rgb": "", "init_flow": "", "init_diff": "",
                        "weights": "none", "class_map": []})
    model = build_model(config, len(checkpoint["classes"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


def test_checkpoint(path: str | Path, *, device: torch.device | str = "auto", workers: int = 0,
                    overrides: dict | None = None, out: str | Path | None = None,
                    train_time_s: float | None = None) -> dict:
    """The standard test protocol on a checkpoint; writes metrics.json next to it (or `out`).
    `train_time_s`: the whole run's training time (default: the time up to this checkpoint)."""
    checkpoint = load_checkpoint(path)
    config = from_dict({**checkpoint["config"], **(overrides or {})})
    device = distributed.device_for(device) if isinstance(device, str) else device
    dataset = build_dataset(config, "test", "test")
    if dataset.classes != checkpoint["classes"]:
        raise ValueError(f"the test set's classes {dataset.classes} differ from the "
                         f"checkpoint's {checkpoint['classes']}")
    model = model_from_checkpoint(checkpoint).to(device)
    result = predict_videos(model, dataset, device, dtype=amp_dtype(config.amp, device),
                            batch_size=max(1, config.batch_size // dataset.views_per_video),
                            workers=workers,
                            mode=config.aggregate)
    best = checkpoint["best"] or {}
    metrics = {
        "run": Path(checkpoint["path"]).parent.name, "checkpoint": checkpoint["path"],
        "epoch": checkpoint["epoch"], "best_epoch": best.get("epoch"),
        "parameters": count_parameters(model),
        "train_time_s": checkpoint["train_time"] if train_time_s is None else train_time_s,
        "protocol": {"clips": config.eval_clips, "crops": config.eval_crops,
                     "aggregate": config.aggregate, "videos": len(result["labels"])},
        "skipped": result["skipped"], "classes": dataset.classes,
        "val": {k: v for k, v in best.items() if k.startswith(("acc/", "loss/"))},
        "test": {name: classification_metrics(s, result["labels"], dataset.classes)
                 for name, s in result["scores"].items()},
        "config": config.to_dict(),
    }
    write_json_atomic(Path(out) if out else Path(checkpoint["path"]).parent / "metrics.json",
                      metrics)
    return metrics
