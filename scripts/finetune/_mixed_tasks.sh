# The body shared by the stage-2 fine-tuning scripts (sourced, not run): ASR + ST + SQA with the
# paper's stage-2 hyperparameters.
#   finetune_mixed_tasks SUBSET INIT [extra train.py arguments]
#     SUBSET  fraction of the task data (0.1 for the 10 % setting, 1.0 for all of it)
#     INIT    stage-1 checkpoint directory the projector starts from, or "random"
# LoRA on the LLM: add --lora_enable True (--lora_r, --lora_alpha, --lora_target_modules, ...).
source "$(dirname "${BASH_SOURCE[0]}")/../launch.sh"
DATA_CONFIG="${DATA_CONFIG:-$REPO_ROOT/scripts/data_configs/finetune_mixed_tasks.yml}"

finetune_mixed_tasks() {
  local subset="$1" init="$2"
  shift 2
  local init_args=()
  if [[ "$init" != random ]]; then init_args=(--pretrain_mm_speech_adapter "$init"); fi
  train --num_train_epochs 2 --learning_rate 1e-4 --lr_scheduler_type cosine --warmup_ratio 0.03 --weight_decay 0.0 \
    --per_device_train_batch_size 4 --gradient_accumulation_steps 5 --model_max_length 2048 --max_grad_norm 1.0 --seed 42 \
    --save_strategy steps --save_steps 1000 --save_total_limit 10 \
    --data_subset "$subset" "${init_args[@]}" "$@"
}
