#!/usr/bin/env bash
# One fusion function at every tap of the RGB backbone, then one table.
#   bash scripts/ablate_fusion_layer.sh [CONFIG] [EPOCHS] [FUSION] [extra train_fusion.py flags...]
# Env: TAPS (default: every feature tap of the config's RGB backbone), SWEEP, PYTHON (default:
# .venv/bin/python or $FUSION_VENV's when it exists, else python).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/synthetic_demo.toml}; EPOCHS=${2:-5}; FUSE=${3:-conv1x1}; shift $(( $# < 3 ? $# : 3 ))
source scripts/python.sh  # PYTHON: the project's virtualenv, else the active python
SWEEP=${SWEEP:-runs/ablate_fusion_layer}
if [ -z "${TAPS:-}" ]; then
  TAPS=$("$PYTHON" - "$CONFIG" "$@" <<'PY'
import sys
from fusion.config import build_parser, resolve
from fusion.streams import build_stream
config = resolve(build_parser().parse_args(["--config", sys.argv[1], *sys.argv[2:]]))
print(" ".join(i["name"] for i in build_stream(config.rgb).feature_info))
PY
)
fi
runs=()
for tap in $TAPS; do
  runs+=(--run "${FUSE}_$tap" "at=$tap")
done
"$PYTHON" scripts/sweep.py --out "$SWEEP" "${runs[@]}" --config "$CONFIG" --epochs "$EPOCHS" \
  --fuse "$FUSE" "$@"
