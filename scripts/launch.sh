# Shared by scripts/pretrain/*.sh and scripts/finetune/*.sh (sourced, not run).
#
# Paths come from the environment, with defaults for the paper's setting:
#   MODEL_PATH      LLM hub id or directory          (meta-llama/Llama-3.1-8B-Instruct)
#   AUDIO_ENCODER   speech encoder hub id or dir     (facebook/hubert-large-ls960-ft)
#   DATA_CONFIG     YAML data config                 (per script)
#   OUTPUT_DIR      where checkpoints and logs go    (checkpoints/<script name>)
#
# How it launches (each choice can be overridden from the environment):
#   NUM_GPUS        GPUs on this node (default: counted with nvidia-smi)
#   LAUNCHER        torchrun | deepspeed | python. Default: torchrun with GPUs or with NNODES > 1,
#                   otherwise one plain python process.
#   DEEPSPEED_CONFIG  a DeepSpeed config, or "none". Default: none when only the projector trains
#                   (plain DDP: its optimiser state is small, sharding it buys nothing), conf/zero2.json
#                   when LoRA or unfrozen LLM/encoder weights train (--lora_enable, --lora_encoder,
#                   --freeze_backbone False, --freeze_audio_encoder False); conf/zero3.json also shards
#                   the weights for full fine-tuning. Only used with GPUs or when set explicitly.
#   GRADIENT_CHECKPOINTING=1|0  recompute the LLM's activations in backward. Off by default (on only
#                   with --freeze_backbone False): it adds about half a forward pass to every pass that
#                   carries gradient, and the paper's stage-1 batches fit an 80 GB GPU without it. Turn
#                   it on for larger batches or LLMs.
#   Multi-node (torchrun): NNODES (default 1), MASTER_ADDR and MASTER_PORT (default 29500) of the
#                   rendezvous host; with NODE_RANK set, static ranks (--node_rank), otherwise
#                   torchrun's c10d rendezvous with RDZV_ID (default: the run name), so the same
#                   command runs on every node. scripts/slurm_example.sbatch shows it under SLURM.
#   NPROC_PER_NODE  processes per node (default: NUM_GPUS, or 1 without a GPU)
#   DRY_RUN=1       print the command instead of running it.
# Extra script arguments are passed on last, so they win.
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
NNODES="${NNODES:-1}"

# flag_is FLAG VALUE ARGS...: true when ARGS set FLAG to VALUE (either spelling, --f v or --f=v; the
# last setting wins, as in the argument parser; case-insensitive).
flag_is() {
  local flag="$1" want="$2" prev="" arg value found=""
  shift 2
  for arg in "$@"; do
    value=""
    case "$arg" in
      --*=*) prev="${arg%%=*}"; value="${arg#*=}" ;;
      --*) prev="$arg"; continue ;;
      *) value="$arg" ;;
    esac
    if [[ "$prev" == "$flag" ]]; then found="$(printf '%s' "$value" | tr '[:upper:]' '[:lower:]')"; fi
    prev=""
  done
  [[ "$found" == "$want" ]]
}

# True when the arguments make more than the projector train (LoRA, or unfrozen LLM / encoder).
trains_base_weights() {
  flag_is --lora_enable true "$@" || flag_is --lora_encoder true "$@" ||
    flag_is --freeze_backbone false "$@" || flag_is --freeze_audio_encoder false "$@"
}

train() {
  local args=(--model_name_or_path "$MODEL_PATH" --audio_encoder "$AUDIO_ENCODER"
    --data_config_path "$DATA_CONFIG" --output_dir "$OUTPUT_DIR" --run_name "$RUN_NAME")
  local launcher="${LAUNCHER:-$( ((NUM_GPUS > 0 || NNODES > 1)) && echo torchrun || echo python)}"
  local ds_config="${DEEPSPEED_CONFIG:-}"
  if [[ -z "$ds_config" ]]; then
    ds_config=none
    if ((NUM_GPUS > 0)) && trains_base_weights "$@"; then ds_config="$REPO_ROOT/conf/zero2.json"; fi
  fi
  if [[ "$ds_config" != none ]]; then args+=(--deepspeed "$ds_config"); fi
  if ((NUM_GPUS > 0)); then args+=(--bf16 True); fi
  # Full LLM fine-tuning holds gradients and optimiser state of every weight: checkpoint by default.
  local checkpointing="${GRADIENT_CHECKPOINTING:-$(flag_is --freeze_backbone false "$@" && echo 1 || echo 0)}"
  if [[ "$checkpointing" == 1 ]]; then args+=(--gradient_checkpointing True); fi
  local nproc="${NPROC_PER_NODE:-$( ((NUM_GPUS > 0)) && echo "$NUM_GPUS" || echo 1)}"
  local port="${MASTER_PORT:-29500}"
  local cmd
  case "$launcher" in
    torchrun)
      cmd=(torchrun --nnodes "$NNODES" --nproc_per_node "$nproc")
      if ((NNODES > 1)); then
        if [[ -n "${NODE_RANK:-}" ]]; then
          cmd+=(--node_rank "$NODE_RANK" --master_addr "${MASTER_ADDR:?set MASTER_ADDR}" --master_port "$port")
        else
          cmd+=(--rdzv_backend c10d --rdzv_endpoint "${MASTER_ADDR:?set MASTER_ADDR}:$port" --rdzv_id "${RDZV_ID:-$RUN_NAME}")
        fi
      else
        cmd+=(--master_port "$port")
      fi
      cmd+=(-m llava.train.train) ;;
    deepspeed)
      cmd=(deepspeed --num_gpus "$nproc" --master_port "$port" --module llava.train.train) ;;
    python)
      cmd=(python -m llava.train.train) ;;
    *)
      echo "unknown LAUNCHER=$launcher (torchrun | deepspeed | python)" >&2; exit 2 ;;
  esac
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}" "${args[@]}" "$@"; echo
    return 0
  fi
  "${cmd[@]}" "${args[@]}" "$@"
}
