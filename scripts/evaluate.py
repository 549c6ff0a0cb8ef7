"""Test a checkpoint with the standard protocol: N clips x crops per video, clip scores
aggregated to video level; overall and per-class accuracy, confusion matrix, per output.

    python scripts/evaluate.py --checkpoint runs/x/best.pt [--clips 25] [--crops ten]
        [--aggregate mean-softmax|sum-logits|vote] [--data-root DIR] [--out FILE.json]

Writes the metrics beside the checkpoint in a file of the protocol's own, e.g.
runs/x/metrics_best_25-clips_ten-crops_mean-softmax.json (with the split and data root in the
name when they differ from the run's), and the pictures under the same name; the run's
metrics.json, the test result of training, is never overwritten.
"""
import sys
from pathlib import Path

from fusion.cli import ArgumentParser
from fusion.config import AGGREGATES
from fusion.data.loader import FrameError
from fusion.data.transforms import CROP_MODES
from fusion.evaluate import print_table, test_checkpoint


def print_details(metrics: dict) -> None:
    classes = metrics["classes"]
    width = max(len(c) for c in classes)
    outputs = list(metrics["test"])
    print(f"\n{'class':<{width}} " + " ".join(f"{o:>7}" for o in outputs))
    for c in classes:
        cells = [metrics["test"][o]["per_class"][c] for o in outputs]
        print(f"{c:<{width}} " + " ".join("      -" if a is None else f"{100 * a:>6.1f}%"
                                          for a in cells))
    print("\nconfusion matrix (fused; rows: true class, columns: predicted)")
    for c, row in zip(classes, metrics["test"]["fused"]["confusion"]):
        print(f"{c:<{width}} " + " ".join(f"{n:>4}" for n in row))


def main(argv=None) -> int:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--checkpoint", required=True, help="runs/<name>/best.pt or last.pt")
    parser.add_argument("--clips", type=int, help="clips per video (default: the run's)")
    parser.add_argument("--crops", choices=CROP_MODES,
                        help="crops per clip: center, three or ten (default: the run's)")
    parser.add_argument("--aggregate", choices=AGGREGATES,
                        help="clip scores -> video score (default: the run's)")
    parser.add_argument("--data-root", help="dataset root (default: the run's)")
    parser.add_argument("--split", type=int, choices=(1, 2, 3),
                        help="official split (default: the run's)")
    parser.add_argument("--batch-size", type=int, help="clips per forward pass")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--out", help="metrics file (default: the protocol's own beside the "
                                      "checkpoint, as above)")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in [
        ("eval_clips", args.clips), ("eval_crops", args.crops), ("aggregate", args.aggregate),
        ("data_root", args.data_root), ("split", args.split), ("batch_size", args.batch_size)]
        if value is not None}
    try:
        if args.out and Path(args.out).resolve() == \
                Path(args.checkpoint).resolve().parent / "metrics.json":
            raise ValueError(f"--out {args.out} is the run's own test result, written by "
                             f"training; give another file, or leave --out out")
        metrics = test_checkpoint(args.checkpoint, device=args.device, workers=args.workers,
                                  overrides=overrides, out=args.out)
    except (FrameError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    protocol = metrics["protocol"]
    print(f"{metrics['checkpoint']} (epoch {metrics['epoch']}): {protocol['videos']} videos, "
          f"{protocol['clips']} clips x {protocol['crops']} crops, {protocol['aggregate']}; "
          f"written to {metrics['file']}")
    print_table(metrics)
    print_details(metrics)
    if metrics["skipped"]:
        print(f"\nskipped {len(metrics['skipped'])} unreadable videos: {metrics['skipped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
