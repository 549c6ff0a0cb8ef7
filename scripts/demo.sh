#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv when needed, then show seed report 001's two
# streams (GoogLeNet RGB, ResNet-18 on 8 stacked 3-channel flow images) tap by tap.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
"$VENV/bin/python" scripts/describe_model.py --stream googlenet --num-classes 12
"$VENV/bin/python" scripts/describe_model.py --stream resnet18 --in-channels 24 --num-classes 12
