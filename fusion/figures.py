"""Pictures a researcher reads at a glance: labelled confusion matrices, per-class accuracy, flow
in the optical-flow literature's colours, sweep summaries and LR schedules.

Figures are built on matplotlib's object API (`matplotlib.figure.Figure`, no pyplot), so they
render headless with the Agg canvas; TensorBoard takes them through `add_figure`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from fusion.data.flow import dequantize
from fusion.data.flow_colours import colour_fields
from fusion.files import write_atomic

CELL_TEXT_UP_TO = 30  # classes: beyond this the cells are too small to hold their counts


def save_png(figure: Figure, path) -> None:
    """A figure as a PNG file, written atomically."""
    write_atomic(path, lambda f: figure.savefig(f, format="png", dpi=100))


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str], *,
                     title: str = "") -> Figure:
    """Rows: true class, columns: predicted, in class-index order; colour is the row-normalised
    share (each true class sums to 1), the cells carry the counts while they fit (up to
    CELL_TEXT_UP_TO classes). The canvas grows with the classes (0.16 inch, 16 pixels a class
    at 100 dpi) and the names stay at 7 points, so that 101 classes read at full size (a
    2000-pixel picture in TensorBoard and confusion_<output>.png)."""
    counts = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = max(5.0, 0.16 * k + 2.5)
    figure = Figure(figsize=(side + 1.2, side))
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    font = 8 if k <= 12 else 7  # points: 7 fill a 0.16-inch row
    long_names = k > 8 or max(len(c) for c in classes) > 6
    axes.set_xticks(range(k), labels=list(classes), rotation=90 if long_names else 0,
                    fontsize=font)
    axes.set_yticks(range(k), labels=list(classes), fontsize=font)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if k <= CELL_TEXT_UP_TO:
        for i in range(k):
            for j in range(k):
                if counts[i, j]:
                    axes.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font,
                              color="white" if shares[i, j] > 0.5 else "black")
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    axes.set_title(f"{title} (accuracy {100 * accuracy:.1f} %)" if title else
                   f"accuracy {100 * accuracy:.1f} %")
    figure.tight_layout()
    return figure


def per_class_figure(per_class: dict[str, float | None], *, title: str = "") -> Figure:
    """Per-class accuracy as horizontal bars, worst class first (on top); classes without test
    videos are left out."""
    items = sorted(((acc, name) for name, acc in per_class.items() if acc is not None))
    figure = Figure(figsize=(7, max(3.0, 0.18 * len(items) + 1.2)))
    axes = figure.add_subplot()
    axes.barh(range(len(items)), [100 * acc for acc, _ in items], color="tab:blue")
    axes.set_yticks(range(len(items)), labels=[name for _, name in items],
                    fontsize=8 if len(items) <= 40 else 7)  # a 0.18-inch row holds 7 points
    axes.invert_yaxis()  # the worst class at the top
    axes.set_xlim(0, 100)
    axes.set_xlabel("video accuracy (%)")
    axes.set_title(title or "per-class accuracy, worst first")
    figure.tight_layout()
    return figure


def flow_colours(flow: torch.Tensor, bound: float) -> torch.Tensor:
    """Quantised flow `... x 2 x H x W` (u, v uint8, docs/design.md §5) -> `... x 3 x H x W`
    uint8 in the Middlebury colour coding, each image on its own scale (`colour_fields`)."""
    pixels = dequantize(flow.cpu(), bound)
    # flow_to_image divides by the longest vector; a pixel of exactly that length can round
    # past 1 and its uint8 colour wrap to white (floor(-1e-7) = -1 -> 255). An extra column
    # holding a slightly longer vector keeps every real pixel of a picture inside the wheel.
    longest = pixels.norm(dim=-3).amax(dim=(-2, -1))
    extra = torch.zeros(*pixels.shape[:-1], 1)
    extra[..., 0, :, 0] = (longest * 1.001 + 1e-3)[..., None]
    return colour_fields(torch.cat([pixels, extra], dim=-1))[..., :-1]


def first_flow_picture(flow: torch.Tensor, bound: float, flow_format: str = "uv") -> torch.Tensor:
    """The first flow frame of `... x C x H x W` stacked flow as a colour picture: u, v in the
    Middlebury coding (`flow_colours`), or the stored colour image itself (flow_format rgb)."""
    if flow_format == "rgb":
        return flow[..., :3, :, :]
    return flow_colours(flow[..., :2, :, :], bound)


def rgb_beside_flow(rgb: torch.Tensor, flow: torch.Tensor, bound: float,
                    flow_format: str = "uv") -> torch.Tensor:
    """First segment of a batch: the RGB frame and the colour-coded first flow frame of the
    same snippet side by side, N x 3 x H x 2W uint8, for TensorBoard's add_images."""
    frame = rgb[:, 0, :3]
    motion = first_flow_picture(flow[:, 0], bound, flow_format)
    return torch.cat([frame, motion], dim=-1)


OUTPUT_COLOURS = {"fused": "tab:blue", "rgb": "tab:orange", "flow": "tab:green"}


def _is_number(text) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


ORDERED = ("at", "at_flow", "freeze_until")  # taps: swept in tower order


def summary_figure(rows: list[dict], *, variable: str, ordered: bool | None = None) -> Figure:
    """Fused / RGB / flow test accuracy (%) of each run of a sweep, in the order of `rows`. A
    row: {"label", "fused", "rgb", "flow" (float or None), "parameters"}.

    A categorical sweep (fusion type, schedule, stream, runs by name) is grouped bars, one
    group per run named by its label and parameter count; an ordered one (taps in tower order,
    numbers: `ordered`, by default from the variable and labels) is lines, with the parameter
    count on a second axis from zero. The legend sits above the data."""
    if ordered is None:
        ordered = variable in ORDERED or all(_is_number(r["label"]) for r in rows)
    outputs = [k for k in OUTPUT_COLOURS if any(r[k] is not None for r in rows)]
    labels = [f"{r['label']}\n{r['parameters'] / 1e6:.3g} M parameters" if not ordered
              else r["label"] for r in rows]
    figure = Figure(figsize=(max(6.0, (1.3 if ordered else 1.6) * len(rows) + 2), 5.0))
    axes = figure.add_subplot()
    x = np.arange(len(rows))
    if ordered:
        for key, style in zip(outputs, ("o-", "s--", "^--")):
            points = [(i, r[key]) for i, r in enumerate(rows) if r[key] is not None]
            axes.plot(*zip(*points), style, color=OUTPUT_COLOURS[key], label=f"{key} %")
        counts = axes.twinx()
        counts.plot(x, [r["parameters"] / 1e6 for r in rows], "x:", color="grey")
        counts.set_ylim(0, 1.1 * max(r["parameters"] for r in rows) / 1e6)
        counts.set_ylabel("parameters (millions, grey)", color="grey")
    else:
        width = 0.8 / len(outputs)
        for j, key in enumerate(outputs):
            offset = (j - (len(outputs) - 1) / 2) * width
            bars = axes.bar(x + offset, [r[key] or 0.0 for r in rows], width,
                            color=OUTPUT_COLOURS[key], label=f"{key} %")
            axes.bar_label(bars, labels=[f"{r[key]:.0f}" if r[key] is not None else ""
                                         for r in rows], fontsize=7, padding=1)
    long_labels = max(len(str(r["label"])) for r in rows) > 12 and len(rows) > 3
    axes.set_xticks(x, labels=labels, rotation=30 if long_labels else 0,
                    ha="right" if long_labels else "center", fontsize=8)
    axes.set_xlabel(variable)
    axes.set_ylabel("test video accuracy (%)")
    axes.set_ylim(0, 100)
    axes.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=len(outputs), frameon=False)
    axes.set_title(f"sweep over {variable}", loc="right")
    figure.tight_layout()
    return figure


def schedule_figure(epochs: Sequence[int], lrs: Sequence[float], *, title: str) -> Figure:
    """The learning rate each epoch trains with."""
    figure = Figure(figsize=(6.5, 3.5))
    axes = figure.add_subplot()
    axes.plot(list(epochs), list(lrs), "o-", markersize=3)
    axes.set_xlabel("epoch")
    axes.set_ylabel("learning rate")
    axes.set_yscale("log")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    return figure
