# Shared by scripts/pretrain/*.sh and scripts/finetune/*.sh (sourced, not run).
#
# Paths come from the environment, with defaults for the paper's setting:
#   MODEL_PATH      LLM hub id or directory          (meta-llama/Llama-3.1-8B-Instruct)
#   AUDIO_ENCODER   speech encoder hub id or dir     (facebook/hubert-large-ls960-ft)
#   DATA_CONFIG     YAML data config                 (per script)
#   OUTPUT_DIR      where checkpoints and logs go    (checkpoints/<script name>)
# Launch: all visible GPUs through the DeepSpeed launcher (ZeRO-2, bf16, gradient checkpointing);
# one plain process on a machine without a GPU. Override with NUM_GPUS, DEEPSPEED_CONFIG, or
# LAUNCHER=torchrun (DDP without DeepSpeed). Extra script arguments are passed on last, so they win.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"

MODEL_PATH="${MODEL_PATH:-meta-llama/Llama-3.1-8B-Instruct}"
AUDIO_ENCODER="${AUDIO_ENCODER:-facebook/hubert-large-ls960-ft}"
RUN_NAME="$(basename "$0" .sh)"
OUTPUT_DIR="${OUTPUT_DIR:-checkpoints/$RUN_NAME}"
if [[ -z "${NUM_GPUS:-}" ]]; then
  NUM_GPUS=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU' || true)
fi
LAUNCHER="${LAUNCHER:-$( ((NUM_GPUS > 0)) && echo deepspeed || echo python)}"

train() {
  local common=(--model_name_or_path "$MODEL_PATH" --audio_encoder "$AUDIO_ENCODER"
    --data_config_path "$DATA_CONFIG" --output_dir "$OUTPUT_DIR" --run_name "$RUN_NAME")
  case "$LAUNCHER" in
    deepspeed)
      deepspeed --num_gpus "$NUM_GPUS" "$REPO_ROOT/llava/train/train.py" --deepspeed "${DEEPSPEED_CONFIG:-$REPO_ROOT/conf/zero2.json}" \
        --bf16 True --gradient_checkpointing True "${common[@]}" "$@" ;;
    torchrun)
      torchrun --nproc_per_node "$((NUM_GPUS > 0 ? NUM_GPUS : 1))" "$REPO_ROOT/llava/train/train.py" \
        $( ((NUM_GPUS > 0)) && echo --bf16 True --gradient_checkpointing True) "${common[@]}" "$@" ;;
    python)
      python -m llava.train.train "${common[@]}" "$@" ;;
    *)
      echo "unknown LAUNCHER=$LAUNCHER (deepspeed | torchrun | python)" >&2; exit 2 ;;
  esac
}
