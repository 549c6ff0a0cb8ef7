#!/usr/bin/env bash
# The test command: sets up .venv when needed, then runs the whole suite on the CPU.
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k streams # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
exec "$VENV/bin/python" -m pytest -q "$@"
