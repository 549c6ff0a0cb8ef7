#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv if needed, generate the synthetic dataset, train
# the RGB stream, the flow stream, and their conv1x1 fusion at layer4 (initialised from both) on
# the CPU, test each with the standard protocol, and print one table. A few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
PY="$VENV/bin/python"
CONFIG=configs/synthetic_demo.toml
SWEEP=runs/demo
rm -rf "$SWEEP"  # the demo starts over; your other runs are left alone
[ -d data/synthetic ] || "$PY" scripts/make_synthetic.py --out data/synthetic
start=$SECONDS
train() { "$PY" scripts/train_fusion.py --config "$CONFIG" --logdir "$SWEEP" "$@"; }
train --fuse none --stream rgb --run-name rgb
train --fuse none --stream flow --run-name flow
train --fuse conv1x1 --at layer4 --init-rgb "$SWEEP/rgb/best.pt" \
  --init-flow "$SWEEP/flow/best.pt" --run-name conv1x1_layer4
echo
echo "demo finished in $((SECONDS - start)) s"
"$PY" scripts/summarize.py "$SWEEP"
echo
echo "next: source $VENV/bin/activate, then tensorboard --logdir runs (README: the design card's three uses)"
