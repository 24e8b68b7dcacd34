#!/usr/bin/env bash
# The embedded default, end to end on a CPU with nothing downloaded:
#   synthetic corpus -> tiny base models -> stage-1 variants -> stage-2 on 10 % -> evaluation -> report
# Usage: bash scripts/demo.sh [--smoke] [--seeds N] [--out DIR] [--variants a,b,...]
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
