# Sourced by the sweep scripts: the interpreter that has the project installed, so that they
# work right after the set-up commands, with or without an activated virtualenv.
#   PYTHON=...            used as given
#   $FUSION_VENV or .venv the project's virtualenv, when it exists (as scripts/setup_env.sh made it)
#   python                the active environment's, otherwise
# Says which one it took, once per sweep (a script sourcing it again stays quiet).
if [ -z "${PYTHON:-}" ]; then
  _root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  _venv=${FUSION_VENV:-.venv}
  [[ $_venv == /* ]] || _venv=$_root/$_venv
  if [ -x "$_venv/bin/python" ]; then PYTHON=$_venv/bin/python; else PYTHON=python; fi
  unset _root _venv
fi
if [ -z "${FUSION_SWEEP_PYTHON_SAID:-}" ]; then
  echo "[sweep] python: $PYTHON"
  export FUSION_SWEEP_PYTHON_SAID=1
fi
export PYTHON
