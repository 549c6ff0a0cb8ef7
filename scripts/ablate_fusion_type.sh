#!/usr/bin/env bash
# Every fusion function at one tap, then one table.
#   bash scripts/ablate_fusion_type.sh [CONFIG] [EPOCHS] [TAP] [extra train_fusion.py flags...]
# Env: FUSIONS (default: all; bilinear fuses at the last tap only, so leave it out of FUSIONS for
# an inner TAP), SWEEP (default: runs/ablate_fusion_type), PYTHON (default: .venv/bin/python or
# $FUSION_VENV's when it exists, else python).
# Finished runs are kept, so an interrupted sweep picks up where it stopped (scripts/sweep.py).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/synthetic_demo.toml}; EPOCHS=${2:-5}; TAP=${3:-layer4}; shift $(( $# < 3 ? $# : 3 ))
source scripts/python.sh  # PYTHON: the project's virtualenv, else the active python
SWEEP=${SWEEP:-runs/ablate_fusion_type}
runs=()
for fuse in ${FUSIONS:-average sum max concat conv1x1 conv3d bilinear}; do
  at=$TAP; [ "$fuse" = average ] && at=scores
  runs+=(--run "$fuse" "fuse=$fuse" "at=$at")
done
"$PYTHON" scripts/sweep.py --out "$SWEEP" "${runs[@]}" --config "$CONFIG" --epochs "$EPOCHS" "$@"
