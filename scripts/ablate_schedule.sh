#!/usr/bin/env bash
# Step vs cyclical learning-rate schedules (seed 001's comparison), then one table.
#   bash scripts/ablate_schedule.sh [CONFIG] [EPOCHS] [extra train_fusion.py flags...]
# Env: SWEEP (default: runs/ablate_schedule), PYTHON (default: .venv/bin/python or
# $FUSION_VENV's when it exists, else python).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/synthetic_demo.toml}; EPOCHS=${2:-10}; shift $(( $# < 2 ? $# : 2 ))
source scripts/python.sh  # PYTHON: the project's virtualenv, else the active python
SWEEP=${SWEEP:-runs/ablate_schedule}
"$PYTHON" scripts/sweep.py --out "$SWEEP" \
  --run step schedule=step step_size=5 gamma=0.5 \
  --run cyclic schedule=cyclic base_lr=1e-5 max_lr=1e-4 cycle_up=5 cyclic_mode=halve-peak \
  --config "$CONFIG" --epochs "$EPOCHS" "$@"
