"""Each learning-rate schedule against its expected per-epoch sequence, computed by hand."""
import pytest
import torch

from fusion.config import Config
from fusion.schedules import build_optimizer, build_scheduler, step_scheduler


def lrs(n, val_losses=None, **keys):
    """The learning rate of each of the first n epochs."""
    config = Config(**keys).validate()
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    scheduler = build_scheduler(optimizer, config)
    seen = []
    for epoch in range(n):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        step_scheduler(scheduler, val_losses[epoch] if val_losses else 0.0)
    return seen


def test_step_halves_every_five_epochs():  # seed 001
    assert lrs(12, schedule="step", lr=1e-4, step_size=5, gamma=0.5) == pytest.approx(
        [1e-4] * 5 + [5e-5] * 5 + [2.5e-5] * 2)


def test_cyclic_seed_001_peak_halves_each_cycle():
    # base 1e-5, first peak 1e-4, 5 epochs up and 5 down; the peak halves: 1e-4, 5e-5, 2.5e-5.
    up1 = [1e-5 + k * 1.8e-5 for k in range(6)]  # 1e-5 .. 1e-4 in 5 steps of 1.8e-5
    down1 = up1[4::-1][:4]  # 8.2e-5 .. 2.8e-5
    up2 = [1e-5 + k * 0.8e-5 for k in range(6)]  # 1e-5 .. 5e-5
    down2 = up2[4::-1][:4]
    up3 = [1e-5 + k * 0.3e-5 for k in range(6)]  # 1e-5 .. 2.5e-5
    expected = up1 + down1 + up2 + down2 + up3
    got = lrs(len(expected), schedule="cyclic", optimizer="adam", base_lr=1e-5, max_lr=1e-4,
              cycle_up=5, cyclic_mode="halve-peak")
    assert got == pytest.approx(expected, rel=1e-6)
    assert max(got[:10]) == pytest.approx(1e-4) and max(got[10:20]) == pytest.approx(5e-5)


def test_cyclic_triangular2_halves_the_amplitude():
    got = lrs(16, schedule="cyclic", base_lr=1e-5, max_lr=1e-4, cycle_up=5,
              cyclic_mode="triangular2")
    assert got[5] == pytest.approx(1e-4) and got[15] == pytest.approx(1e-5 + 9e-5 / 2)


def test_plateau_cuts_after_patience():  # seed 000
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95]
    got = lrs(7, val_losses=losses, schedule="plateau", lr=0.1, gamma=0.1, patience=2)
    # epochs 3 and 4 do not improve on 0.9; the third without improvement (epoch 5) cuts.
    assert got == pytest.approx([0.1] * 5 + [0.01] * 2)


def test_cosine_with_warmup():
    got = lrs(6, schedule="cosine", lr=1.0, epochs=6, warmup_epochs=2)
    # warm-up 1/3, 2/3, then cosine over the remaining 4 epochs from 1.0
    assert got == pytest.approx([1 / 3, 2 / 3, 1.0, 0.853553, 0.5, 0.146447], abs=1e-5)


def test_constant_and_optimizers():
    assert lrs(3, schedule="constant", lr=0.3) == pytest.approx([0.3] * 3)
    for name, cls in [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                      ("adamw", torch.optim.AdamW)]:
        optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))],
                                    Config(optimizer=name, momentum=0.8))
        assert isinstance(optimizer, cls)
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    assert build_optimizer([frozen, torch.nn.Parameter(torch.zeros(1))],
                           Config()).param_groups[0]["params"].__len__() == 1
    with pytest.raises(ValueError, match="cyclic needs base_lr < max_lr"):
        lrs(1, schedule="cyclic", base_lr=1e-3, max_lr=1e-4)
