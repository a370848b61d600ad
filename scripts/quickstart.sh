#!/usr/bin/env bash
# The README's two commands:
#   scripts/quickstart.sh        set up, then run the main job on a real offline corpus
#   scripts/quickstart.sh test   set up, then run the whole test suite
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
if [ "${1:-demo}" = "test" ]; then
  shift || true
  set +e
  python -m pytest "$@"
  rc=$?
  set -e
  # pytest's exit code 5 means no test ran: that is a failure here.
  exit $rc
fi
mkdir -p demo
packwise demo-data demo/stdlib_docstrings.jsonl
packwise pack demo/stdlib_docstrings.jsonl demo/packed --max-tokens 1024 --train-tokenizer --oversize split --overwrite
packwise report demo/stdlib_docstrings.jsonl --max-tokens 1024 --batch-size 8 --tokenizer demo/packed/tokenizer.json --oversize split \
  --json demo/report.json --plot demo/report.png
