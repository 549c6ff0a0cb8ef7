"""The pictures, made from fabricated metrics and checked for what they must show."""
import colorsys
import json

import numpy as np
import pytest
import torch

from fusion.data.flow import quantize
from fusion.figures import (confusion_figure, flow_colours, per_class_figure, rgb_beside_flow,
                            schedule_figure)


def texts(axes):
    return [t.get_text() for t in axes.texts]


def test_confusion_figure_names_the_classes_and_writes_the_counts():
    classes = ["ApplyEyeMakeup", "Biking", "YoYo"]
    confusion = [[5, 1, 0], [0, 3, 2], [0, 0, 4]]
    figure = confusion_figure(confusion, classes, title="run: fused")
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == classes
    assert [t.get_text() for t in axes.get_yticklabels()] == classes
    assert sorted(texts(axes)) == sorted(["5", "1", "3", "2", "4"])  # non-zero cells
    assert "accuracy 80.0 %" in axes.get_title()  # 12 of 15
    shares = axes.images[0].get_array()
    np.testing.assert_allclose(shares[1], [0, 0.6, 0.4])  # row-normalised colour


def test_confusion_figure_for_101_classes_is_large_and_leaves_out_cell_numbers():
    k = 101
    confusion = np.eye(k, dtype=int) * 3
    figure = confusion_figure(confusion.tolist(), [f"Class{i:03d}" for i in range(k)])
    axes = figure.axes[0]
    assert texts(axes) == [] and len(axes.get_xticklabels()) == k
    assert figure.get_size_inches()[1] >= 15
    assert axes.get_xticklabels()[0].get_rotation() == 90
    # class names of 7 points in 16-pixel rows of a 100-dpi picture: readable at full size
    assert min(t.get_fontsize() for t in axes.get_yticklabels()) >= 7


def test_per_class_bars_put_the_worst_class_first():
    figure = per_class_figure({"a": 0.9, "b": 0.2, "c": None, "d": 0.5})
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_yticklabels()] == ["b", "d", "a"]
    assert [round(p.get_width()) for p in axes.patches] == [20, 50, 90]


def hue(pixel):
    r, g, b = (float(c) / 255 for c in pixel)
    return 360 * colorsys.rgb_to_hsv(r, g, b)[0]


@pytest.mark.parametrize("dx, dy, low, high", [
    (3, 0, -10, 10),      # rightwards: red
    (0, 3, 20, 60),       # downwards (image y grows down): orange to yellow
    (-3, 0, 170, 200),    # leftwards: cyan
    (0, -3, 230, 290),    # upwards: blue to violet
])
def test_flow_colours_follow_the_middlebury_wheel(dx, dy, low, high):
    """Baker et al.'s colour coding: the hue of a pixel is the direction of its motion."""
    field = np.zeros((8, 8, 2), np.float32)
    field[..., 0], field[..., 1] = dx, dy
    q = torch.from_numpy(quantize(field, 20.0).transpose(2, 0, 1).copy())  # 2 x H x W
    colours = flow_colours(q[None], 20.0)[0]
    assert colours.shape == (3, 8, 8) and colours.dtype == torch.uint8
    h = hue(colours[:, 4, 4])
    h = h - 360 if h > 300 else h
    assert low <= h <= high, h


def test_rgb_beside_flow_puts_the_frame_left_and_its_motion_right():
    rgb = torch.full((2, 1, 3, 6, 8), 200, dtype=torch.uint8)
    flow = torch.full((2, 1, 4, 6, 8), 128, dtype=torch.uint8)
    flow[:, :, 0] = 160  # u > 0: red
    side = rgb_beside_flow(rgb, flow, 20.0)
    assert side.shape == (2, 3, 6, 16)
    assert (side[:, :, :, :8] == 200).all()
    assert hue(side[0, :, 3, 12]) < 10 or hue(side[0, :, 3, 12]) > 350


def test_summary_plot_has_one_point_per_run_in_tower_order(tmp_path, load_script):
    sweep = tmp_path / "sweep"
    for name, tap, acc in [("a", "layer4", 0.9), ("b", "layer1", 0.5), ("c", "layer3", 0.7)]:
        (sweep / name).mkdir(parents=True)
        metrics = {"run": name, "parameters": 1_000_000 + len(tap), "train_time_s": 60.0,
                   "test": {"fused": {"accuracy": acc}},
                   "config": {"fuse": "conv1x1", "at": tap, "at_flow": "", "stream": "rgb",
                              "rgb": "resnet18", "schedule": "step", "run_name": name}}
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))
    module = load_script("summarize")
    assert module.main([str(sweep)]) == 0
    assert (sweep / "summary.png").stat().st_size > 0
    runs = [json.loads((sweep / n / "metrics.json").read_text()) for n in "abc"]
    variable, rows = module.swept_rows(runs)
    assert variable == "at" and [r["label"] for r in rows] == ["layer1", "layer3", "layer4"]
    figure = module.summary_figure(rows, variable=variable)  # taps are ordered: lines
    fused = next(line for line in figure.axes[0].lines if line.get_label() == "fused %")
    assert list(fused.get_ydata()) == pytest.approx([50, 70, 90])
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["layer1", "layer3",
                                                                         "layer4"]
    assert figure.axes[1].get_ylim()[0] == 0  # parameters on an axis from zero


def sweep_metrics(run, *, fuse, stream="rgb", fused=None, rgb=None, flow=None, parameters):
    test = {name: {"accuracy": acc} for name, acc in
            (("fused", fused), ("rgb", rgb), ("flow", flow)) if acc is not None}
    return {"run": run, "parameters": parameters, "test": test,
            "config": {"fuse": fuse, "at": "scores" if fuse == "average" else "layer4",
                       "stream": stream, "run_name": run, "lr": 0.001}}


def test_summary_of_a_categorical_sweep_is_grouped_bars_named_by_run(load_script):
    module = load_script("summarize")
    runs = [sweep_metrics("conv3d", fuse="conv3d", fused=0.6, rgb=0.5, parameters=36_000_000),
            sweep_metrics("average", fuse="average", fused=0.7, rgb=0.5, flow=0.6,
                          parameters=22_000_000)]
    variable, rows = module.swept_rows(runs)
    assert variable == "fuse"
    figure = module.summary_figure(rows, variable=variable)
    axes = figure.axes[0]
    assert len(axes.lines) == 0 and len(figure.axes) == 1  # no lines joining fusion types
    heights = sorted(round(p.get_height()) for p in axes.patches)
    assert heights == [0, 50, 50, 60, 60, 70]  # fused / RGB / flow per run (conv3d: no flow)
    labels = [t.get_text() for t in axes.get_xticklabels()]
    assert sorted(labels) == ["average\n22 M parameters", "conv3d\n36 M parameters"]
    legend = axes.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["fused %", "rgb %", "flow %"]
    figure.canvas.draw()
    assert legend.get_window_extent().y0 >= axes.get_window_extent().y1  # above the data
    # the demo (RGB, flow, conv1x1): several keys vary, so runs are named by their names
    demo = [sweep_metrics("rgb", fuse="none", fused=0.3, rgb=0.3, parameters=11_000_000),
            sweep_metrics("flow", fuse="none", stream="flow", fused=0.4, flow=0.4,
                          parameters=11_000_000),
            sweep_metrics("conv1x1", fuse="conv1x1", fused=0.6, parameters=22_000_000)]
    variable, rows = module.swept_rows(demo)
    assert variable == "run" and [r["label"] for r in rows] == ["conv1x1", "flow", "rgb"]
    # a single stream's fused output is its own: one bar, under the stream's name
    assert [(r["fused"], r["rgb"]) for r in rows] == [(60, None), (None, None), (None, 30)]


def test_pictures_of_a_single_stream_name_its_output_not_fused():
    from fusion.evaluate import metric_figures
    confusion = [[1, 0], [1, 1]]
    result = {"confusion": confusion, "accuracy": 2 / 3, "per_class": {"a": 1.0, "b": 0.5}}
    metrics = {"run": "rgb", "classes": ["a", "b"], "config": {"fuse": "none"},
               "test": {"fused": result, "rgb": result}}
    figures = metric_figures(metrics)
    assert set(figures) == {"confusion_rgb", "per_class"}
    assert "(rgb output)" in figures["per_class"].axes[0].get_title()
    assert "rgb output" in figures["confusion_rgb"].axes[0].get_title()
    fused = metric_figures({**metrics, "config": {"fuse": "conv1x1"}})
    assert set(fused) == {"confusion_fused", "confusion_rgb", "per_class"}
    assert "(fused output)" in fused["per_class"].axes[0].get_title()


def test_plot_schedule_draws_the_lr_each_epoch_trains_with(tmp_path, capsys, load_script):
    out = tmp_path / "step.png"
    assert load_script("plot_schedule").main([
        "--schedule", "step", "--lr", "0.001", "--step-size", "5", "--gamma", "0.5",
        "--epochs", "12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    expected = [1e-3] * 5 + [5e-4] * 5 + [2.5e-4] * 2
    assert printed.strip().endswith(", ".join(f"{lr:.3g}" for lr in expected))
    assert out.stat().st_size > 0
    module = load_script("plot_schedule")
    config = module.resolve(module.build_parser().parse_args([
        "--schedule", "cyclic", "--base-lr", "1e-5", "--max-lr", "1e-4", "--cycle-up", "5",
        "--cyclic-mode", "halve-peak", "--epochs", "20"]))
    lrs = module.learning_rates(config)
    # seed 001: 1e-5 up to 1e-4 in 5 epochs, down in 5, then a peak of half
    assert lrs[0] == pytest.approx(1e-5) and lrs[5] == pytest.approx(1e-4)
    assert lrs[10] == pytest.approx(1e-5) and lrs[15] == pytest.approx(5e-5)
    figure = schedule_figure(range(1, 21), lrs, title="cyclic")
    assert list(figure.axes[0].lines[0].get_ydata()) == pytest.approx(lrs)
