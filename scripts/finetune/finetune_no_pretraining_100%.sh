#!/usr/bin/env bash
# Stage 2: ASR + ST + SQA fine-tuning on all task data with a randomly initialised projector (no stage 1).
# Usage: PRETRAINED_PROJECTOR=checkpoints/<stage-1 run> bash scripts/finetune/finetune_no_pretraining_100%.sh [extra train.py arguments]
# LoRA on the LLM: add --lora_enable True (--lora_r, --lora_alpha, --lora_target_modules).
source "$(dirname "$0")/../launch.sh"
DATA_CONFIG="${DATA_CONFIG:-$REPO_ROOT/scripts/data_configs/finetune_mixed_tasks.yml}"
init=()  # the projector starts from random weights
train --num_train_epochs 2 --learning_rate 1e-4 --lr_scheduler_type cosine --warmup_ratio 0.03 --weight_decay 0.0 \
  --per_device_train_batch_size 4 --gradient_accumulation_steps 5 --model_max_length 2048 --max_grad_norm 1.0 --seed 42 \
  --save_strategy steps --save_steps 1000 --save_total_limit 10 \
  --data_subset 1.0 "${init[@]}" "$@"
