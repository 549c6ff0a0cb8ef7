"""Optimizers and learning-rate schedules, built on torch.optim (every schedule steps per epoch).

    step      StepLR: multiply by gamma every step_size epochs (seed 001: halve every 5)
    cyclic    CyclicLR between base_lr and max_lr, cycle_up epochs up and as many down;
              modes triangular, triangular2 (amplitude halves), exp_range, and halve-peak
              (seed 001: the peak itself halves each cycle: 1e-4, 5e-5, 2.5e-5, ...)
    plateau   ReduceLROnPlateau on the validation loss (seed 000)
    cosine    linear warm-up for warmup_epochs, then cosine annealing to 0
    constant  the optimizer's lr throughout
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch.optim import lr_scheduler

from fusion.config import Config


class HalvePeak:
    """CyclicLR scale for a peak that halves every cycle while the base stays put."""

    def __init__(self, base_lr: float, max_lr: float):
        self.base_lr, self.max_lr = base_lr, max_lr

    def __call__(self, cycle: float) -> float:
        peak = self.max_lr / 2 ** (cycle - 1)
        return max(peak - self.base_lr, 0.0) / (self.max_lr - self.base_lr)


def build_optimizer(params: Iterable[torch.nn.Parameter], config: Config) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (with freeze = 'streams', a "
                         "fusion without parameters at an inner tap leaves nothing to train)")
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config):
    if config.schedule == "step":
        return lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if config.schedule == "cyclic":
        if config.max_lr <= config.base_lr:
            raise ValueError(f"config keys base_lr, max_lr: cyclic needs base_lr < max_lr, got "
                             f"{config.base_lr}, {config.max_lr}")
        custom = config.cyclic_mode == "halve-peak"
        return lr_scheduler.CyclicLR(
            optimizer, base_lr=config.base_lr, max_lr=config.max_lr,
            step_size_up=config.cycle_up, mode="triangular" if custom else config.cyclic_mode,
            gamma=config.cyclic_gamma,
            scale_fn=HalvePeak(config.base_lr, config.max_lr) if custom else None,
            scale_mode="cycle", cycle_momentum=False)
    if config.schedule == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.gamma,
                                              patience=config.patience)
    if config.schedule == "cosine":
        cosine = lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(config.epochs - config.warmup_epochs, 1))
        if config.warmup_epochs == 0:
            return cosine
        warmup = lr_scheduler.LinearLR(optimizer, start_factor=1 / (config.warmup_epochs + 1),
                                       total_iters=config.warmup_epochs)
        return lr_scheduler.SequentialLR(optimizer, [warmup, cosine],
                                         milestones=[config.warmup_epochs])
    return lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


# Schedules whose shape depends on the run's length: a resumed run that changes `epochs`
# rebuilds them (`rebuilt_for_epochs`); the others carry on as they are.
EPOCH_SIZED = ("cosine",)


def rebuilt_for_epochs(optimizer: torch.optim.Optimizer, config: Config, epochs_done: int):
    """The schedule of `config` as if the run had been planned for `config.epochs` from the
    start, advanced to the restored position `epochs_done` (cosine's T_max follows the new
    length, instead of the old horizon where the LR would rise again after the old end)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"]
    scheduler = build_scheduler(optimizer, config)
    with warnings.catch_warnings():  # replaying epochs: no optimizer.step() comes between
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epochs_done):
            scheduler.step()
    return scheduler


def step_scheduler(scheduler, val_loss: float) -> None:
    """Advance one epoch; the plateau schedule watches the validation loss."""
    if isinstance(scheduler, lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    else:
        scheduler.step()
