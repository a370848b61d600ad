#!/usr/bin/env bash
# Create (or reuse) .venv and install packwise with its test extras.
# torch: a torch already importable by $PYTHON is kept (the venv then sees it through
# --system-site-packages); otherwise a pinned CPU build is installed, because an unpinned `torch`
# pulls several GB of CUDA packages. PACKWISE_TORCH overrides the pin, PACKWISE_EXTRAS the extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
has_torch() { "$1" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"; }
quiet_pip() {  # pip's output only when it fails
  local log
  log=$(mktemp)
  if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2
    rm -f "$log"
    echo "setup: pip install $* failed" >&2
    exit 1
  fi
  rm -f "$log"
}
if [ ! -x .venv/bin/python ]; then
  if has_torch "$PY"; then
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi
if ! has_torch .venv/bin/python; then
  quiet_pip "${PACKWISE_TORCH:-torch==2.13.0}"
fi
quiet_pip -e ".[${PACKWISE_EXTRAS:-dev}]"
.venv/bin/python -c "import packwise, numba, pyarrow, faiss, torch" \
  || { echo "setup: packwise failed to import after install" >&2; exit 1; }
