#!/usr/bin/env bash
# Install speech-llava and its dependencies into the current Python environment.
#
# torch is installed first and pinned (a constraints file), so no later package replaces it: an
# unpinned resolve would pull the newest CUDA build and several GB of CUDA packages.
#   EXTRAS           pip extras to install (default: dev,synth,deepspeed,wasserstein,serve)
#   TORCH_INDEX_URL  where torch comes from, e.g. https://download.pytorch.org/whl/cpu for the CPU
#                    build on a laptop without a GPU (default: the configured pip index)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${EXTRAS:-dev,synth,deepspeed,wasserstein,serve}"
PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"

if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
fi
installed_torch="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==${installed_torch}" > "$constraints"
# DeepSpeed builds no CUDA ops at install time; they are compiled on first use where needed.
DS_BUILD_OPS=0 "$PY" -m pip install -c "$constraints" -e ".[${EXTRAS}]"
