"""Checkpoints: everything a resume needs, written atomically, read back with the config
checked, and the RNG states that make a resumed run end with the same weights; and a trained
stream's weights taken out of a checkpoint to initialise another model (`init_rgb`, ...)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from fusion.config import RESUMABLE, Config, from_dict
from fusion.files import CorruptFile, check_state_dict, load_tensors, write_atomic
from fusion.schedules import EPOCH_SIZED, rebuilt_for_epochs
from fusion.streams import Stream


def checkpoint_state(*, model, optimizer, scheduler, scaler, epoch: int, best: dict | None,
                     history: list, train_time: float, config: Config,
                     classes: list[str]) -> dict:
    """Everything a resume needs after `epoch` epochs (no optimizer when epochs = 0)."""
    return {"model": model.state_dict(),
            "optimizer": None if optimizer is None else optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scaler": scaler.state_dict(), "epoch": epoch, "best": best,
            "history": history, "train_time": train_time, "config": config.to_dict(),
            "rng": rng_state(), "classes": classes}


# What only a resume needs; best.pt leaves it out (for a two-stream ResNet-18 under SGD, the
# momentum buffers alone are as large as the weights).
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "rng")


def weights_only(state: dict) -> dict:
    """What evaluation and fine-tuning need of a checkpoint: weights, config, classes, the
    validation metrics and history (best.pt)."""
    return {k: v for k, v in state.items() if k not in TRAINING_STATE}


def save_atomic(state: dict, path: Path, *, previous: Path | None = None) -> None:
    """A crash never leaves a half-written checkpoint (`write_atomic`); with `previous`, the
    checkpoint it replaces is kept under that name (last.prev.pt)."""
    write_atomic(path, lambda f: torch.save(state, f), previous=previous)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by training (a run folder means its last.pt). A damaged one is an
    error naming the run's other checkpoints to go on from."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    try:
        state = load_tensors(path, "checkpoint")
    except (CorruptFile, FileNotFoundError) as err:
        names = ("last.prev.pt", "best.pt", "last.pt")
        others = [path.with_name(n) for n in names if n != path.name and
                  path.with_name(n).is_file()]
        if not others:
            raise
        hint = {"last.prev.pt": "the run's previous checkpoint, to resume from: --resume {}",
                "best.pt": "its best weights, to evaluate or to initialise a new run from: {}",
                "last.pt": "its last checkpoint (a run no epoch of which did better than "
                           "guessing has no best.pt): {}"}
        raise type(err)(f"{err}; go on from " + ", or ".join(
            hint[p.name].format(p) for p in others)) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path} is not a training checkpoint of this project")
    state["path"] = str(path)
    return state


def load_for_resume(path: str | Path) -> dict:
    """A checkpoint that holds what resuming needs (last.pt, not best.pt)."""
    checkpoint = load_checkpoint(path)
    if "optimizer" not in checkpoint:
        raise ValueError(f"{checkpoint['path']} holds weights only (best.pt keeps no optimizer "
                         f"state); resume from the run's last.pt, or start a new run from these "
                         f"weights with --init-rgb / --init-flow")
    return checkpoint


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


def restore(checkpoint: dict, config: Config, *, model, optimizer, scheduler, scaler,
            verbose: bool = True):
    """Load a checkpoint's state into the run's objects and the RNG; returns (scheduler,
    epochs done, best, history, train time). A run resumed with other `epochs` rebuilds an
    epoch-sized schedule for the new length (`rebuilt_for_epochs`)."""
    model.load_state_dict(checkpoint["model"])
    if checkpoint["optimizer"] is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        planned = checkpoint["config"]["epochs"]
        if config.epochs != planned and config.schedule in EPOCH_SIZED:
            scheduler = rebuilt_for_epochs(optimizer, config, checkpoint["epoch"])
            if verbose:
                print(f"schedule {config.schedule!r} rebuilt for {config.epochs} epochs "
                      f"(was {planned}); epoch {checkpoint['epoch'] + 1} trains at lr "
                      f"{optimizer.param_groups[0]['lr']:.3g}")
    scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"])
    if verbose:
        print(f"resuming {Path(checkpoint['path']).parent} after epoch {checkpoint['epoch']}")
    return (scheduler, checkpoint["epoch"], checkpoint["best"], checkpoint["history"],
            checkpoint["train_time"])


def read_model_state(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """The model state dict in a checkpoint written by training, or a plain state dict file,
    and the class names the checkpoint records (None for a plain file)."""
    state = load_tensors(path, "checkpoint")
    classes = None
    if isinstance(state, Mapping) and "model" in state:
        classes = state.get("classes")
        state = state["model"]
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint {path} holds no model state dict")
    return dict(state), None if classes is None else list(classes)


def load_stream_checkpoint(stream: Stream, path: str | Path, role: str, *,
                           class_map: Mapping[str, str] | None = None,
                           classes: Sequence[str] | None = None) -> None:
    """Initialise `stream` from a separately trained checkpoint.

    The file may hold a single-stream model (keys `stream.*`), a two-stream model (keys
    `rgb.*` / `flow.*`, `role` picks the side) or a bare stream state dict (keys `stages.*`).
    With `class_map` (source class -> target class, seed 001: Stanford 40 -> HMDB51) the
    checkpoint may have other classes: everything but the classifier loads as is, and each
    target class's classifier row is its source class's; unmapped classes keep a fresh row.
    `classes` are the target (this model's) class names.
    """
    state, source_classes = read_model_state(path)
    for prefix in ("stream.", f"{role}.", ""):
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if sub and all(k.startswith("stages.") for k in sub):
            break
    else:
        raise ValueError(f"checkpoint {path} holds no {role} stream weights (keys start with "
                         f"{sorted({k.split('.')[0] for k in state})})")
    where = f"cannot initialise the {role} stream ({stream.name}) from {path}"
    if not class_map:
        check_state_dict(stream.state_dict(), sub, where)
        stream.load_state_dict(sub)
        return
    if source_classes is None:
        raise ValueError(f"checkpoint {path} records no class names, which class_map needs")
    head = next(name for name, m in stream.named_modules() if m is stream.classifier)
    keys = (f"{head}.weight", f"{head}.bias")
    own = stream.state_dict()
    check_state_dict({k: v for k, v in own.items() if k not in keys},
                     {k: v for k, v in sub.items() if k not in keys}, where)
    for source, target in class_map.items():
        for name, valid, what in ((source, source_classes, f"the classes of {path}"),
                                  (target, classes, "this model's classes")):
            if name not in valid:
                raise ValueError(f"class_map: {name!r} is not one of {what}: "
                                 f"{', '.join(valid)}")
    for key in keys:
        merged = own[key].clone()
        for source, target in class_map.items():
            merged[list(classes).index(target)] = sub[key][source_classes.index(source)]
        sub[key] = merged
    stream.load_state_dict(sub)
