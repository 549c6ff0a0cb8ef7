"""The training loop: `fit` reads top to bottom, one epoch is `run_epoch`.

    run_dir = train(config)              # runs/<name>/: config.toml, events, last.pt, best.pt,
                                         # metrics.json

Objects come from `fusion.build`, checkpoints and resume from `fusion.checkpoint`, the final
test from `fusion.evaluate`. All randomness in training draws from torch's generators: the
model's from the global one (saved in every checkpoint), the data's from seeds fixed by (seed,
epoch, sample) (`SeededSampler`). A run resumed from `last.pt` therefore ends with the same
weights as one that was never stopped.
"""
from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams
from tqdm import tqdm

from fusion import distributed
from fusion.build import (build_dataset, build_model, make_loader, training_runner,
                          validation_subset)
from fusion.checkpoint import (checkpoint_state, load_for_resume, restore, resume_config,
                               save_atomic, weights_only)
from fusion.config import Config, to_toml
from fusion.data.device_decode import DecodeAhead
from fusion.device import amp_dtype, autocast, cpu_threads, move, to_channels_last
from fusion.evaluate import metric_figures, shown_outputs, test_checkpoint
from fusion.figures import first_flow_picture, rgb_beside_flow
from fusion.lock import acquire, release
from fusion.policy import freeze_until
from fusion.schedules import build_optimizer, build_scheduler, step_scheduler
from fusion.streams import count_parameters


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or the training loss finite but DIVERGED times that of
    a uniform guess; the last good checkpoint is kept."""


# A loss this many times that of a uniform guess over K classes (ln K, where an untrained
# classifier starts) has diverged even while finite (Adam at lr 1e6 reaches 2e14): it stops
# the run as a NaN does. Overconfident but sane models stay orders of magnitude below.
DIVERGED = 1e4


def to_device(batch, device):
    return (move(batch.rgb, device), move(batch.flow, device), move(batch.label, device),
            move(batch.counted, device))


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
    limit = None  # the training loss that counts as diverged (DIVERGED x a uniform guess's)
    seen = processed = skipped = 0  # counted samples, all samples, unreadable ones
    start = time.perf_counter()
    # decode = device: batches of JPEG bytes, decoded here one batch ahead
    bar = tqdm(DecodeAhead(loader, device), desc=desc, leave=False, dynamic_ncols=True,
               disable=None if context.main else True)

    def read():
        """Wait for the device: stop on a diverged loss, show the running figures."""
        flags = []
        if unchecked:
            losses = torch.stack([loss for _, loss in unchecked])
            flags = (torch.isfinite(losses) & (losses < limit)).tolist()
        bad = flags.count(False)
        if context.enabled:  # every rank, every read, even with nothing to read: none hangs
            bad = int(distributed.sum_across([float(bad)], context, device)[0])
        if bad:
            if all(flags):
                raise TrainingDiverged(f"the {desc or 'training'} loss diverged on another "
                                       f"process")
            step, loss = unchecked[flags.index(False)]
            value = loss.item()
            why = "" if not math.isfinite(value) else \
                f", over {DIVERGED:g} times a uniform guess's ({limit / DIVERGED:.3g}): diverged"
            raise TrainingDiverged(f"the {desc or 'training'} loss became {value:.3g} at step "
                                   f"{step}{why}")
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
            if limit is None:  # training only: in eval mode, BatchNorm's running statistics
                # of a barely trained model can give finite but huge losses (1e11) that are no
                # divergence; such epochs are simply not the best (`is_better`)
                limit = DIVERGED * max(math.log(parts["fused"].shape[-1]), 1.0) if training \
                    else math.inf
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


def is_better(metrics: dict, best: dict | None, rule: str, num_classes: int) -> bool:
    """seed 001's rule ("both"): a new best needs a lower loss and a higher accuracy.

    Whatever the rule, an epoch whose validation loss is not below that of guessing every
    class alike (ln K) is never the best, the first epoch included: such a model learned
    nothing or diverged, and its loss falling from 3e14 to 2e14 is no improvement."""
    if not metrics["loss/fused"] < math.log(num_classes):
        return False
    if best is None:
        return True
    lower = metrics["loss/fused"] < best["loss/fused"]
    higher = metrics["acc/fused"] > best["acc/fused"]
    return {"both": lower and higher, "loss": lower, "accuracy": higher}[rule]


def run_name(config: Config) -> str:
    if config.run_name:
        return config.run_name
    what = f"{config.stream}" if config.fuse == "none" else f"{config.fuse}_{config.at}"
    return f"{what}_{time.strftime('%Y%m%d-%H%M%S')}"


def train(config: Config, *, overrides: dict | None = None) -> Path:
    """Train per `config` (or continue `config.resume`), then test the best checkpoint."""
    return fit(config, overrides=overrides)[0]


def log_step(writer: SummaryWriter, optimizer, epoch: int, steps_per_epoch: int,
             flow_bound: float, flow_format: str, step: int, batch) -> None:
    """Per training step: the LR; at the very first step a few training inputs as augmented
    (a flip shows as a hue change of the flow): the RGB frame, the first flow frame in the
    Middlebury colours, and both side by side. They are `samples/`, which sorts after `lr`:
    TensorBoard's Time Series page opens the first two tag groups only, and those are to be
    the curves (accuracy, loss)."""
    writer.add_scalar("lr", optimizer.param_groups[0]["lr"], epoch * steps_per_epoch + step)
    if epoch == 0 and step == 0:
        if batch.rgb is not None:
            writer.add_images("samples/rgb", batch.rgb[:4, 0, :3], 0)
        if batch.flow is not None:
            writer.add_images("samples/flow",
                              first_flow_picture(batch.flow[:4, 0], flow_bound, flow_format), 0)
        if batch.rgb is not None and batch.flow is not None:
            writer.add_images("samples/rgb_and_flow", rgb_beside_flow(
                batch.rgb[:4], batch.flow[:4], flow_bound, flow_format), 0)


def log_epoch(writer: SummaryWriter, epoch: int, train_metrics: dict, val_metrics: dict,
              improved: bool, fuse: str) -> None:
    """Per epoch, tagged so that TensorBoard (which sorts tag groups by name) opens on the
    curves read first: `accuracy/<split>/<output>`, `loss/<split>/<output>`, then `lr` (per
    step, `log_step`) and `speed/clips_per_s/<split>`. Only the model's own outputs
    (`shown_outputs`): a single stream has no fused curve of its own."""
    outputs = shown_outputs([key[len("acc/"):] for key in train_metrics
                             if key.startswith("acc/")], fuse)
    for split, metrics in (("train", train_metrics), ("val", val_metrics)):
        for name in outputs:
            writer.add_scalar(f"accuracy/{split}/{name}", metrics[f"acc/{name}"], epoch + 1)
            writer.add_scalar(f"loss/{split}/{name}", metrics[f"loss/{name}"], epoch + 1)
        writer.add_scalar(f"speed/clips_per_s/{split}", metrics["clips_per_s"], epoch + 1)
    print(f"epoch {epoch + 1}: train loss {train_metrics['loss/fused']:.3f} "
          f"acc {train_metrics['acc/fused']:.3f} | val loss {val_metrics['loss/fused']:.3f} "
          f"acc {val_metrics['acc/fused']:.3f}{' (best)' if improved else ''} | "
          f"{train_metrics['clips_per_s']:.1f} clips/s")
    skipped = train_metrics["skipped"] + val_metrics["skipped"]
    if skipped:
        print(f"  skipped {skipped} unreadable samples (on_bad = skip)")


# Keys that name a run's model in the HParams tab whether or not they keep their default (a
# sweep's conv1x1 run is conv1x1 like its neighbours are average), where they apply
IDENTITY = ("fuse", "stream", "at", "seed")
# Bookkeeping, not settings of the experiment
NOT_HPARAMS = ("run_name", "logdir", "resume", "workers", "device", "keep")
FUSION_KEYS = ("at", "at_flow", "keep_spatial_head", "keep_temporal_tower", "kept_average",
               "fusion_init", "fusion_bn", "fusion_weights", "diff", "diff_stack",
               "diff_weight", "init_diff", "freeze_until", "unfreeze")
RGB_KEYS = ("rgb", "rgb_stack", "init_rgb", "augment")
FLOW_KEYS = ("flow", "flow_stack", "init_flow", "augment_flow", "flow_method", "flow_bound",
             "flow_format", "flow_mean_subtraction", "raft_model", "raft_weights")
SCHEDULE_KEYS = {"step": ("step_size", "gamma"), "plateau": ("patience", "gamma"),
                 "cyclic": ("base_lr", "max_lr", "cycle_up", "cyclic_mode", "cyclic_gamma"),
                 "cosine": ("warmup_epochs",), "constant": ()}


def inapplicable(config: Config) -> set[str]:
    """The keys that do nothing in this run: fusion keys without fusion, the other stream's
    keys of a single stream, other schedules' and optimizers' keys."""
    keys = set(NOT_HPARAMS)
    if config.fuse == "none":
        keys |= set(FUSION_KEYS) | (set(RGB_KEYS) if config.stream == "flow" else set(FLOW_KEYS))
    else:
        keys.add("stream")
    for schedule, own in SCHEDULE_KEYS.items():
        if schedule != config.schedule:
            keys |= set(own) - set(SCHEDULE_KEYS[config.schedule])
    if config.optimizer != "sgd":
        keys.add("momentum")
    if not config.compile:
        keys.add("compile_mode")
    return keys


def run_hparams(config: Config) -> dict:
    """The HParams tab's settings of a run: its model's identity (fusion, tap, and its streams:
    `stream` is rgb+flow for a fused model) and every key that applies to its model and differs
    from `Config()`'s default. TensorBoard puts the ones that differ across the runs it shows
    first; keeping defaults out keeps a single run's table to what was chosen for it."""
    defaults = Config().to_dict()
    skip = inapplicable(config)
    hparams = {}
    for key, value in config.to_dict().items():
        if key in skip or (value == defaults[key] and key not in IDENTITY):
            continue
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        hparams[key] = value
    if config.fuse != "none":  # the streams the model has, beside single streams' rgb or flow
        hparams["stream"] = "rgb+flow" + ("+rgbdiff" if config.diff else "")
    return hparams


def log_test(writer: SummaryWriter, config: Config, metrics: dict) -> None:
    """The test pictures, and the run's row of the HParams tab: `run_hparams` and the test
    accuracy of each output, `accuracy/test/<output>` (one dot per run beside the train and
    val curves; the first of the tab's metric columns, which are every scalar of the run in
    tag order). The row is written in the run itself, not in a folder of its own: TensorBoard
    ticks no run at all when it finds more than 40, so a sweep of 21 runs must stay 21. No
    experiment summary is written (TensorBoard would take one run's as every run's), so
    TensorBoard compares the runs' settings itself and shows those that differ first."""
    for name, figure in metric_figures(metrics).items():
        writer.add_figure(f"test/{name}", figure, 0)
    accuracies = {f"accuracy/test/{name}": metrics["test"][name]["accuracy"]
                  for name in shown_outputs(metrics["test"], config.fuse)}
    _, session_start, session_end = hparams(run_hparams(config), accuracies)
    writer.file_writer.add_summary(session_start)
    writer.file_writer.add_summary(session_end)
    for tag, value in accuracies.items():
        writer.add_scalar(tag, value, 0)
    writer.flush()


@contextlib.contextmanager
def claimed(run_dir: Path, context: distributed.Context, *, new: bool):
    """The run folder, locked for the block by global rank 0 alone (`fusion.lock`); a new run
    also refuses a folder that holds a finished or interrupted one. When rank 0 cannot claim
    the folder, every rank stops with its error (none waits for the others)."""
    lock, error = None, None
    if context.main:
        try:
            lock = acquire(run_dir)
            if new and (run_dir / "last.pt").exists():
                raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume "
                                      f"{run_dir} or choose another --run-name")
        except FileExistsError as err:
            if lock is not None:
                release(lock)
            error = err
    message = distributed.from_main(None if error is None else str(error), context)
    if error is not None:
        raise error
    if message is not None:
        raise FileExistsError(f"rank 0: {message}")
    try:
        yield
    finally:
        if lock is not None:
            release(lock)


def keep_checkpoints(run_dir: Path, keep: str) -> None:
    """A finished run keeps best.pt, last.pt or both (`keep`); last.prev.pt, the guard against
    a crash while last.pt is written, is no longer needed."""
    (run_dir / "last.prev.pt").unlink(missing_ok=True)
    if keep == "best" and (run_dir / "best.pt").exists():
        (run_dir / "last.pt").unlink()
    elif keep == "last":
        (run_dir / "best.pt").unlink(missing_ok=True)


def fit(config: Config, *, overrides: dict | None = None):
    """`train`, returning (run folder, trained model). Under torchrun every process trains its
    share of each batch (DistributedDataParallel); only rank 0 writes."""
    checkpoint = None
    if config.resume:
        checkpoint = load_for_resume(config.resume)
        config = resume_config(checkpoint, overrides or {})
        run_dir = Path(checkpoint["path"]).parent
    else:
        run_dir = Path(config.logdir) / run_name(config)
    with distributed.session(config.device, config.dist_timeout) as (context, device), \
            claimed(run_dir, context, new=checkpoint is None), \
            cpu_threads(config.workers) as threads:
        main = context.main
        if checkpoint is None and main:
            (run_dir / "config.toml").write_text(to_toml(config))
        dtype = amp_dtype(config.amp, device)
        torch.manual_seed(config.seed)

        train_set = build_dataset(config, "train", "train", device=device)
        val_set = build_dataset(config, validation_subset(config), "val", device=device)
        if config.val_fraction == 0 and main:
            print("note: val_fraction = 0, so the best checkpoint is chosen on the test split")
        classes = train_set.classes
        model = build_model(config, len(classes), classes).to(device)  # plain: saved, evaluated
        model = to_channels_last(model, config.channels_last, device)
        runner = training_runner(model, config, context, device)  # DDP, SyncBN, compiled
        # epochs = 0 assembles and tests a model (late fusion of trained streams): no optimizer
        optimizer = build_optimizer(model.parameters(), config) if config.epochs else None
        scheduler = build_scheduler(optimizer, config) if optimizer is not None else None
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        start_epoch, best, history, train_time = 0, None, [], 0.0
        if checkpoint is not None:
            scheduler, start_epoch, best, history, train_time = restore(
                checkpoint, config, model=model, optimizer=optimizer, scheduler=scheduler,
                scaler=scaler, verbose=main)

        train_loader = make_loader(train_set, config, training=True, context=context)
        val_loader = make_loader(val_set, config, training=False, context=context)
        steps_per_epoch = len(train_loader)
        writer = SummaryWriter(log_dir=str(run_dir), purge_step=start_epoch * steps_per_epoch) \
            if main else None
        if main:
            print(f"run {run_dir}: {count_parameters(model):,} parameters, {len(train_set)} "
                  f"training and {len(val_set)} validation videos, {len(classes)} classes, "
                  f"device {device}" + (f", {context.world} processes" if context.enabled else ""))
            print(threads)
            for note in dict.fromkeys(train_set.notes + val_set.notes):
                print(f"note: {note}")

        for epoch in range(start_epoch, config.epochs):
            began = time.perf_counter()
            train_loader.sampler.set_epoch(epoch)
            if config.freeze_until or config.unfreeze:  # staged fine-tuning
                tap = config.frozen_until(epoch)
                freeze_until(model, tap)
                if main and (epoch == start_epoch or tap != config.frozen_until(epoch - 1)):
                    print(f"epoch {epoch + 1}: stream stages frozen up to {tap or 'nothing'}")
            on_step = functools.partial(log_step, writer, optimizer, epoch, steps_per_epoch,
                                        config.flow_bound, config.flow_format) if main else None
            try:
                train_metrics = run_epoch(runner, train_loader, device, optimizer=optimizer,
                                          scaler=scaler, dtype=dtype, grad_clip=config.grad_clip,
                                          desc=f"epoch {epoch + 1}/{config.epochs}",
                                          on_step=on_step, context=context)
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
            improved = is_better(val_metrics, best, config.best_rule, len(classes))
            if improved:
                best = {**val_metrics, "epoch": epoch + 1}
            history.append({"epoch": epoch + 1, "train": train_metrics, "val": val_metrics,
                            "lr": lr_used})
            if main:
                state = checkpoint_state(model=model, optimizer=optimizer, scheduler=scheduler,
                                         scaler=scaler, epoch=epoch + 1, best=best,
                                         history=history, train_time=train_time, config=config,
                                         classes=classes)
                if improved:  # best.pt first: a run stopped between the two redoes the epoch
                    save_atomic(weights_only(state), run_dir / "best.pt")
                save_atomic(state, run_dir / "last.pt", previous=run_dir / "last.prev.pt")
                log_epoch(writer, epoch, train_metrics, val_metrics, improved, config.fuse)

        if config.epochs == 0 and main:  # nothing trained: the assembled model is the checkpoint
            state = checkpoint_state(model=model, optimizer=None, scheduler=None, scaler=scaler,
                                     epoch=0, best=best, history=history, train_time=train_time,
                                     config=config, classes=classes)
            save_atomic(weights_only(state), run_dir / "best.pt")
            save_atomic(state, run_dir / "last.pt")
        distributed.barrier(context)
        if main:
            tested = run_dir / "best.pt"
            if not tested.exists():
                tested = run_dir / "last.pt"
                print(f"note: no epoch had a validation loss below that of guessing every class "
                      f"alike (ln {len(classes)} = {math.log(len(classes)):.3g}), so there is "
                      f"no best.pt; testing last.pt")
            metrics = test_checkpoint(tested, device=device, workers=config.workers,
                                      out=run_dir / "metrics.json", train_time_s=train_time)
            log_test(writer, config, metrics)
            writer.close()
            keep_checkpoints(run_dir, config.keep)
        distributed.barrier(context)
    return run_dir, model
