# Sourced by scripts/test.sh and scripts/demo.sh: make .venv ready, doing only the missing steps.
# A fresh machine gets a virtualenv, torch and the package; a second run installs nothing.
VENV=${FUSION_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" - 2>/dev/null <<'PY'
import torch, torchvision
assert torch.__version__.startswith("2.14.1") and torchvision.__version__.startswith("0.29.1")
PY
then
  echo "[setup] installing torch 2.14.1 and torchvision 0.29.1"
  "$VENV/bin/pip" install -q torch==2.14.1 torchvision==0.29.1
fi
# The package is reinstalled only when its metadata changes (editable: code changes need nothing).
stamp="$VENV/.fusion-installed-setup.cfg"
if ! cmp -s setup.cfg "$stamp"; then
  echo "[setup] installing fusion and its test, export and slurm requirements"
  "$VENV/bin/pip" install -q -e '.[test,export,slurm]' && cp setup.cfg "$stamp"
fi
