#!/usr/bin/env bash
# One run of a sweep: skip it if finished, resume it if interrupted, else start it.
#   bash scripts/sweep_run.sh SWEEP NAME [train_fusion.py flags...]
set -euo pipefail
SWEEP=$1; NAME=$2; shift 2
source "$(dirname "$0")/python.sh"
if [ -f "$SWEEP/$NAME/metrics.json" ]; then
  echo "[sweep] $SWEEP/$NAME is finished, skipping"
elif [ -f "$SWEEP/$NAME/last.pt" ]; then
  echo "[sweep] resuming $SWEEP/$NAME"
  "$PYTHON" scripts/train_fusion.py --resume "$SWEEP/$NAME"
else
  "$PYTHON" scripts/train_fusion.py --logdir "$SWEEP" --run-name "$NAME" "$@"
fi
