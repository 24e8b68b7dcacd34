#!/usr/bin/env bash
# The embedded default, end to end on a CPU with nothing downloaded:
#   synthetic corpus -> shipped tiny base models -> frozen-feature cache -> per seed and variant:
#   stage 1 -> alignment -> stage 2 on 10 % -> evaluation -> one 100 % run -> report and plots
# Usage: bash scripts/demo.sh [--smoke] [--seeds N] [--out DIR] [--variants a,b,...] [--workers N]
# A re-run with the same --out continues where an interrupted one stopped.
# Installs what it needs first (scripts/install.sh) when the package or its extras are missing.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
if ! "$PY" -c "import llava, torch, transformers, peft, espeakng_loader" 2>/dev/null; then
  echo "installing speech-llava and its dependencies ..."
  bash "$REPO_ROOT/scripts/install.sh"
fi
cd "$REPO_ROOT"
exec "$PY" -m llava.demo "$@"
