# The body shared by the curriculum scripts (sourced, not run): a three-stage curriculum in the manner
# of LTU-AS, each stage continuing from the previous one's checkpoint (projector and LoRA adapters,
# through --init_from) with a fresh optimiser and schedule:
#   stage1_projector_cls.sh       the projector alone, on closed-ended classification data
#   stage2_projector_lora_cls.sh  projector + LoRA on the LLM, on the same data
#   stage3_all_tasks.sh           projector + LoRA, on every task
#
# Environment (besides MODEL_PATH, AUDIO_ENCODER, NUM_GPUS ... of scripts/launch.sh):
#   CURRICULUM_DIR  where the stages write, each in CURRICULUM_DIR/<script name> (checkpoints/curriculum)
#   DATA_CONFIG     the stage's data config (stages 1-2: classification tasks; stage 3: every task)
#   INIT_FROM       the checkpoint a stage starts from (default: the previous stage's directory)
#   FEATURE_CACHE   the frozen-encoder feature cache all three stages share
#                   (default CURRICULUM_DIR/feature_cache; "none" turns it off)
#   OUTPUT_DIR      overrides CURRICULUM_DIR/<script name> for one stage
# LoRA settings (--lora_r, --lora_alpha, --lora_target_modules ...) given to stage 2 must be given to
# stage 3 too: --init_from refuses adapters of another rank or on other modules.
# Learning rates are ours (1e-3 for the projector alone, 1e-4 once LoRA trains); pass --learning_rate
# to change them. Extra arguments go to llava.train.train and win.
CURRICULUM_DIR="${CURRICULUM_DIR:-checkpoints/curriculum}"
OUTPUT_DIR="${OUTPUT_DIR:-$CURRICULUM_DIR/$(basename "$0" .sh)}"
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"
FEATURE_CACHE="${FEATURE_CACHE:-$CURRICULUM_DIR/feature_cache}"

# curriculum_stage LEARNING_RATE INIT [extra train.py arguments]; INIT is a checkpoint directory or "none"
curriculum_stage() {
  local lr="$1" init="$2"
  shift 2
  local extra=()
  if [[ "$FEATURE_CACHE" != none ]]; then extra+=(--audio_feature_cache "$FEATURE_CACHE"); fi
  if [[ "$init" != none ]]; then extra+=(--init_from "$init"); fi
  train --num_train_epochs 2 --learning_rate "$lr" --lr_scheduler_type cosine --warmup_ratio 0.03 --weight_decay 0.0 \
    --per_device_train_batch_size 8 --gradient_accumulation_steps 2 --model_max_length 2048 --max_grad_norm 1.0 \
    --seed 42 --save_strategy steps --save_steps 1000 --save_total_limit 3 "${extra[@]}" "$@"
}
