"""Plot the learning rate a config trains each epoch with, before training, so that a step or
cyclic recipe can be checked by eye (seed 001 shows its schedules this way).

    python scripts/plot_schedule.py --config configs/synthetic_demo.toml --out schedule.png
    python scripts/plot_schedule.py --schedule cyclic --cyclic-mode halve-peak --epochs 30

Every Config key is a flag, as for train_fusion.py. The plateau schedule depends on the
validation loss; it is drawn for a loss that never improves (its fastest decay).
"""
import sys

import torch

from fusion.config import build_parser, resolve
from fusion.figures import save_png, schedule_figure
from fusion.schedules import build_optimizer, build_scheduler, step_scheduler


def learning_rates(config) -> list[float]:
    """The LR of each epoch, as the training loop steps the schedule (once per epoch)."""
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    scheduler = build_scheduler(optimizer, config)
    lrs = []
    for _ in range(config.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()  # nothing to update; keeps the scheduler's order-of-calls check quiet
        step_scheduler(scheduler, val_loss=1.0)  # a plateau: the loss never improves
    return lrs


def main(argv=None) -> int:
    parser = build_parser(__doc__)
    parser.add_argument("--out", default="schedule.png", help="PNG file to write")
    args = parser.parse_args(argv)
    out = args.out
    del args.out
    try:
        config = resolve(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    lrs = learning_rates(config)
    title = f"{config.schedule} schedule, {config.optimizer}, {config.epochs} epochs"
    figure = schedule_figure(range(1, len(lrs) + 1), lrs, title=title)
    save_png(figure, out)
    print(f"{out}: " + ", ".join(f"{lr:.3g}" for lr in lrs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
