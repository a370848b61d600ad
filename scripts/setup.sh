#!/usr/bin/env bash
# Create (or reuse) .venv and install packwise with its test extras.
# torch: an existing torch in the environment is kept; otherwise a CPU build is installed
# (PACKWISE_TORCH overrides the requirement, e.g. PACKWISE_TORCH="torch==2.13.0").
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  # A pinned CPU build: an unpinned `torch` would pull several GB of CUDA packages.
  "$VPY" -m pip install -q "${PACKWISE_TORCH:-torch==2.13.0}" 2>&1 | grep -v "^WARNING: Location" || true
  "$VPY" -c "import torch" || { echo "setup: torch failed to install" >&2; exit 1; }
fi
"$VPY" -m pip install -q -e ".[${PACKWISE_EXTRAS:-dev}]" 2>&1 | grep -v "^WARNING: Location" || true
"$VPY" -c "import packwise, numba, pyarrow, faiss" || { echo "setup: packwise failed to install" >&2; exit 1; }
