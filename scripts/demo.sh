#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv when needed, then show seed report 001's
# two-stream model (GoogLeNet RGB + ResNet-18 on 12 stacked flow frames, conv1x1 fusion).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
"$VENV/bin/python" scripts/describe_model.py --rgb googlenet --flow resnet18 --fuse conv1x1 \
  --at inception5b --flow-stack 12 --keep-spatial-head --num-classes 12 --segments 3
