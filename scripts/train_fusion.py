"""Train a two-stream model (or one stream), then test its best checkpoint.

    python scripts/train_fusion.py --fuse conv1x1 --at layer4          # synthetic demo data
    python scripts/train_fusion.py --config configs/ucf101_resnet18_conv1x1.toml --epochs 30
    python scripts/train_fusion.py --fuse none --stream flow --run-name flow   # one stream
    python scripts/train_fusion.py --resume runs/flow                  # continue a run

Every key of fusion.config.Config is a flag (--flow-stack 5 sets flow_stack); a --config TOML
file sets defaults that flags override. The run folder runs/<name>/ receives config.toml,
TensorBoard events, last.pt, best.pt and metrics.json.
"""
import sys
from pathlib import Path

from fusion.config import build_parser, resolve
from fusion.data.loader import FrameError
from fusion.distributed import RankLost
from fusion.engine import TrainingDiverged, train
from fusion.evaluate import print_table


def main(argv=None) -> int:
    parser = build_parser(__doc__)
    args = parser.parse_args(argv)
    given = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    try:
        config = resolve(args)
        run_dir = train(config, overrides=given)
    except (TrainingDiverged, FrameError, RankLost, ValueError, FileNotFoundError,
            FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    import json
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = metrics["best_epoch"]
    print(f"\n{run_dir}: tested {Path(metrics['checkpoint']).name}" +
          (f" (best epoch {best})" if best else "") + f", protocol "
          f"{metrics['protocol']['clips']} clips x {metrics['protocol']['crops']} crops")
    print_table(metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
