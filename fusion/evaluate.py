"""The test protocol: every clip x crop view of every video, aggregated per video, and the
metrics, confusion matrices, per-class chart and tables made of it.

    metrics = test_checkpoint("runs/x/best.pt")
    # also written to runs/x/metrics_best_25-clips_center-crops_mean-softmax.json; training
    # writes its own test result to runs/x/metrics.json, which no later protocol overwrites
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch.utils.data import DataLoader
from tqdm import tqdm

from fusion import distributed
from fusion.build import build_dataset, model_from_checkpoint
from fusion.checkpoint import load_checkpoint
from fusion.config import Config, from_dict
from fusion.data.device_decode import DecodeAhead
from fusion.data.loader import collate_clips
from fusion.device import amp_dtype, autocast, cpu_threads, move
from fusion.figures import confusion_figure, per_class_figure, save_png
from fusion.files import write_json_atomic
from fusion.streams import count_parameters


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
    # decode = device: batches of JPEG bytes, decoded here one batch ahead
    for batch in tqdm(DecodeAhead(loader, device), desc="test", leave=False, dynamic_ncols=True,
                      disable=None):
        skipped += [s.video_id for s in batch.skipped]
        rgb, flow = move(batch.rgb, device), move(batch.flow, device)
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


def shown_outputs(names, fuse: str) -> list[str]:
    """The outputs a run's curves and pictures show: a single stream's "fused" output is the
    stream's own, shown under the stream's name alone."""
    return [n for n in names if not (fuse == "none" and n == "fused")]


def metric_figures(metrics: dict) -> dict[str, Figure]:
    """The test split's pictures: a labelled confusion matrix per output the model has (fused,
    RGB, flow, kept heads; a single stream's alone) and the per-class accuracy, worst first, of
    its final output (fused, or the single stream's), each titled by the output it shows."""
    classes = metrics["classes"]
    outputs = shown_outputs(metrics["test"], metrics["config"]["fuse"])
    figures = {f"confusion_{name}": confusion_figure(metrics["test"][name]["confusion"], classes,
                                                     title=f"{metrics['run']}: {name} output")
               for name in outputs}
    final = "fused" if "fused" in outputs else outputs[0]
    figures["per_class"] = per_class_figure(metrics["test"][final]["per_class"],
                                            title=f"{metrics['run']}: per-class accuracy "
                                                  f"({final} output), worst first")
    return figures


def save_figures(figures: dict[str, Figure], folder: Path, prefix: str = "") -> list[Path]:
    """Each figure as `<folder>/<prefix><name>.png`, written atomically."""
    paths = []
    for name, figure in figures.items():
        path = folder / f"{prefix}{name}.png"
        save_png(figure, path)
        paths.append(path)
    return paths


def print_table(metrics: dict) -> None:
    print(f"{'output':<8} {'video accuracy':>15}")
    for name, m in metrics["test"].items():
        print(f"{name:<8} {100 * m['accuracy']:>14.1f}%")


def protocol_file(checkpoint_path: Path, config: Config, trained: Config) -> Path:
    """Where a test of `checkpoint_path` under `config` writes its metrics: beside the
    checkpoint, named by the checkpoint and the protocol, and by the split and data root where
    they differ from the run's (`trained`), so that no protocol overwrites another's result."""
    name = (f"metrics_{checkpoint_path.stem}_{config.eval_clips}-clips_{config.eval_crops}-crops_"
            f"{config.aggregate}")
    if config.split != trained.split:
        name += f"_split{config.split}"
    if Path(config.data_root) != Path(trained.data_root):
        name += f"_{Path(config.data_root).resolve().name}"
    return checkpoint_path.with_name(name + ".json")


def test_checkpoint(path: str | Path, *, device: torch.device | str = "auto", workers: int = 0,
                    overrides: dict | None = None, out: str | Path | None = None,
                    train_time_s: float | None = None) -> dict:
    """The standard test protocol on a checkpoint; writes its metrics to `out` (default: the
    protocol's own file beside the checkpoint, `protocol_file`), the pictures beside them, and
    returns them with the file's path under "file".
    `train_time_s`: the whole run's training time (default: the time up to this checkpoint)."""
    checkpoint = load_checkpoint(path)
    trained = from_dict(checkpoint["config"])
    config = from_dict({**checkpoint["config"], **(overrides or {})})
    out = Path(out) if out else protocol_file(Path(checkpoint["path"]), config, trained)
    device = distributed.device_for(device) if isinstance(device, str) else device
    dataset = build_dataset(config, "test", "test", device=device)
    if dataset.classes != checkpoint["classes"]:
        raise ValueError(f"the test set's classes {dataset.classes} differ from the "
                         f"checkpoint's {checkpoint['classes']}")
    model = model_from_checkpoint(checkpoint).to(device)
    with cpu_threads(workers):
        result = predict_videos(model, dataset, device, dtype=amp_dtype(config.amp, device),
                                batch_size=max(1, config.batch_size // dataset.views_per_video),
                                workers=workers, mode=config.aggregate)
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
    write_json_atomic(out, metrics)
    metrics["file"] = str(out)  # for the caller to report; not part of the file
    # beside metrics.json: confusion_<output>.png, per_class.png; beside another --out file,
    # under its name, so that two protocols of one run keep their own pictures
    save_figures(metric_figures(metrics), out.parent,
                 "" if out.name == "metrics.json" else f"{out.stem}_")
    return metrics
